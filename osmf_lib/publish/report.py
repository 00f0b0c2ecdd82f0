"""The night's report: one self-contained HTML page a person opens to see what OSMF did.

What a person wants first comes first: the headline numbers, then a picture grid (product x
group: the creative each group is served, with its group's description), then the click-through
rate by day (overall and, after nights that served generated creatives, of the served and the
control arm), the nights up to this one (what each served, against the best logged and the
ceiling) and who is served. Then a compact summary of the night's metrics, one small table
per stage, and the detail per product (the first `publish.report_products`, those with generated
creatives first): its groups with their sizes, the prompt served, the candidates' GRM scores (the
selected one marked) and the contact sheet. The full metric table closes the page, folded.
Images are embedded as thumbnails, so the page reads the same from the artifacts root, MLflow or
a mail attachment.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from datetime import date, timedelta

import mlflow
import pandas as pd
from PIL import Image
from pyspark.sql import functions as F

from osmf_lib import artifacts, browser, tables, tracking
from osmf_lib.config import Config
from osmf_lib.evaluation.nights import DPO_VARIANTS, night_table
from osmf_lib.evaluation.nights import MODELS as NIGHT_MODELS
from osmf_lib.images import ImageError, ImageLimits, read_image
from osmf_lib.job import JobContext, StageError
from osmf_lib.night import GMLLM, GRM, PAAG, SERVING
from osmf_lib.render import CONTACT_SHEET, product_folder
from osmf_lib.tables import (
    EVAL_METRICS,
    GENERATED,
    GENERATED_CREATIVES,
    GROUP_PROFILES,
    IMPRESSIONS,
    PRODUCTS,
    SERVING_CREATIVES,
)

log = logging.getLogger(__name__)

MODELS = tuple(model.name for model in (PAAG, GRM, GMLLM, SERVING))
ONE_DAY = timedelta(days=1)
# The oracle's grade of the next day's audience (evaluate_publish): (metric, slice, format) per column.
GRADE_COLUMNS = (
    ("impressions", "test", ",.0f"),
    ("oracle_ctr", "served", ".4f"),
    ("oracle_ctr", "best_logged", ".4f"),
    ("lift_vs_best_logged", "served", "+.1%"),
)
AUDIENCES = (("everyone", ""), ("members", ".members"), ("newcomers", ".newcomers"))
# The headline numbers: (stage, metric, slice) -> how the page names them.
HEADLINE = {
    ("publish", "generated_share", "all"): "targets with a generated creative",
    ("publish_oracle", "lift_vs_best_logged", "served"): "oracle CTR lift of the served creatives over the best logged",
    ("publish_oracle", "lift_vs_best_logged", "served.members"): "the same for the night's group members",
    ("publish_oracle", "lift_vs_best_logged", "served.newcomers"): "the same for newcomers placed by osmf-serving",
    ("publish_oracle", "greedy_lift_kept", "served.generated"): "the share of the greedy descriptions' lift they keep",
    ("gmllm_oracle", "lift_vs_onesize", "group_dpo"): "oracle CTR lift of Group-DPO over one-size-fits-all DPO",
    ("gmllm_oracle", "lift_vs_onesize", "prefix_dpo"): "oracle CTR lift of DPO with prefix over one-size-fits-all",
    ("gmllm_oracle", "headroom_captured", "group_dpo"): "share of the oracle's headroom Group-DPO captures",
}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 72rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.selected { font-weight: bold; color: #b01c1c; }
.muted { color: #777; }
section.product { border-top: 2px solid #eee; padding-top: 0.5rem; }
td img { min-width: 96px; image-rendering: pixelated; }
.headline { display: flex; flex-wrap: wrap; gap: 0.75rem; padding: 0; list-style: none; }
.headline li { border: 1px solid #ddd; border-radius: 6px; padding: 0.5rem 0.75rem; width: 13rem; }
.headline b { display: block; font-size: 1.6rem; }
table.grid td { width: 9rem; text-align: center; }
table.grid th { width: 12rem; }
table.grid .caption { font-size: 0.8rem; color: #444; }
"""


def report_uri(cfg: Config, ds: date) -> str:
    return artifacts.join(cfg.render.artifacts, ds.isoformat(), "report.html")


def _thumbnail(uri: str, side: int, limits: ImageLimits) -> str:
    """The image at `uri` as a data URI no larger than side x side."""
    try:
        image = read_image(uri, limits).convert("RGB")
        image.thumbnail((side, side))
    except ImageError as err:
        raise StageError(f"report: cannot read image {uri}: {err}") from err
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _img(uri: str | None, side: int, alt: str, limits: ImageLimits) -> str:
    if not uri:
        return '<span class="muted">no image</span>'
    return f'<img src="{_thumbnail(uri, side, limits)}" alt="{html.escape(alt)}">'


def _e(value: object) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value))


def line_chart(series: dict[str, pd.Series], width: int = 640, height: int = 220) -> str:
    """An inline SVG line chart of a few series sharing a date index (values as fractions)."""
    days = sorted({d for s in series.values() for d in s.index})
    values = [v for s in series.values() for v in s.dropna()]
    if not days or not values:
        return '<p class="muted">no impressions yet</p>'
    pad, top = 48, max(values) * 1.1 or 1.0
    x = {d: pad + (width - 2 * pad) * (i / max(len(days) - 1, 1)) for i, d in enumerate(days)}

    def y(v: float) -> float:
        return height - pad + (v / top) * (2 * pad - height)

    colours = ["#1f5fa8", "#b01c1c", "#2a8a3e", "#8a5a2a"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>',
        f'<text x="4" y="{pad + 4}" font-size="11">{top:.1%}</text>',
        f'<text x="4" y="{height - pad + 4}" font-size="11">0%</text>',
        f'<text x="{pad}" y="{height - pad + 16}" font-size="11">{days[0]}</text>',
        f'<text x="{width - pad}" y="{height - pad + 16}" font-size="11" text-anchor="end">{days[-1]}</text>',
    ]
    drawn = {name: s.dropna().sort_index() for name, s in series.items() if s.notna().any()}
    for i, (name, s) in enumerate(drawn.items()):
        colour = colours[i % len(colours)]
        points = " ".join(f"{x[d]:.1f},{y(v):.1f}" for d, v in s.items())
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        parts += [f'<circle cx="{x[d]:.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>' for d, v in s.items()]
        # In the top margin: right of the plot a long name would run off the picture.
        parts.append(f'<text x="{pad + 8}" y="{12 + 13 * i}" font-size="11" fill="{colour}">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def ctr_by_day(ctx: JobContext) -> dict[str, pd.Series]:
    """Observed CTR per day up to the day after ds: every impression, and the two arms of the closed loop
    (the `closed_loop_ab` view, registered with the others) after nights that served generated
    creatives."""
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    # Up to the day the night served: written again after it (`osmf report --rebuild`), the page
    # shows that day's closed loop too.
    shown = ds + ONE_DAY
    impressions = tables.read(spark, IMPRESSIONS, cfg).where(F.col("ds") <= F.lit(shown))
    daily = impressions.groupBy("ds").agg(F.avg(F.col("clicked").cast("double")).alias("ctr")).toPandas()
    series = {"all impressions": daily.set_index("ds")["ctr"]}
    if spark.catalog.tableExists("closed_loop_ab"):  # registered by publish when its tables exist
        arms = spark.table("closed_loop_ab").where((F.col("ds") <= F.lit(shown)) & (F.col("audience") == "all"))
        arms = arms.toPandas()
        for arm, name in (("served", "served creatives"), ("control", "their control")):
            series[name] = arms[arms["arm"] == arm].set_index("ds")["ctr"].astype(float)
    return series


# The night-over-night tables' columns as shown (per audience: `osmf nights`): fractions as
# percentages, then counts and models; Group-DPO's variants get a table of their own.
NIGHT_FRACTIONS = (
    "served",
    "best original",
    "best logged",
    "ceiling",
    "headroom",
    "best-only",
    "candidates",
    "over best logged",
    "generated",
    "explored",
)
NIGHT_OTHERS = ("generated pairs", *NIGHT_MODELS)


def _percent(value: float) -> str:
    return "" if pd.isna(value) else format(value, ".2%")


def nights_section(ctx: JobContext) -> str:
    """Night over night up to this one (osmf_lib/evaluation/nights.py): the oracle CTR of what each
    night served against the best logged and the ceiling, what it explored and learnt from, and
    which Group-DPO variant it picked against what each variant captured on the oracle."""
    table = night_table(ctx.spark, ctx.cfg)
    table = table[table["night"] <= ctx.ds.isoformat()].set_index("night")
    if table.empty:
        return '<p class="muted">no night has published yet</p>'
    chart = line_chart({name: table[name] for name in ("served", "best original", "best logged", "ceiling")})
    head = "".join(f"<th>{_e(c)}</th>" for c in ("night", *NIGHT_FRACTIONS, *NIGHT_OTHERS))
    rows = "".join(
        f"<tr><td>{_e(night)}</td>"
        + "".join(f"<td>{_percent(row[c])}</td>" for c in NIGHT_FRACTIONS)
        + f"<td>{'' if pd.isna(row['generated pairs']) else int(row['generated pairs'])}</td>"
        + "".join(f"<td>{_e(row[c])}</td>" for c in NIGHT_OTHERS[1:])
        + "</tr>"
        for night, row in table.iterrows()
    )
    variants_head = "".join(f"<th>{_e(c)}</th>" for c in ("night", "picked", *DPO_VARIANTS))
    variants = "".join(
        f"<tr><td>{_e(night)}</td><td>{_e(row['variant'])}</td>"
        + "".join(f"<td>{_percent(row[c])}</td>" for c in DPO_VARIANTS)
        + "</tr>"
        for night, row in table.iterrows()
    )
    return (
        f"{chart}<table><tr>{head}</tr>{rows}</table>"
        "<p>Group-DPO per night: the variant the validation picked, and the oracle CTR of each "
        "variant's greedy descriptions on the test products.</p>"
        f"<table><tr>{variants_head}</tr>{variants}</table>"
    )


def serving_section(ctx: JobContext) -> str:
    """What the night's osmf-serving reaches: members placed by attributes alone, the oracle grade
    per audience, and once the next day was served and ingested, its coverage and closed loop."""
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    metrics = tables.read_or_empty(spark, EVAL_METRICS, cfg).where(F.col("ds").between(F.lit(ds), F.lit(ds + ONE_DAY)))
    values = metrics.toPandas().set_index(["ds", "stage", "metric", "slice"])["value"]

    def value(day: date, stage: str, metric: str, slice_: str, fmt: str) -> str:
        key = (day, stage, metric, slice_)
        return format(values[key], fmt) if key in values.index else '<span class="muted">n/a</span>'

    rows = "".join(
        f"<tr><td>{name}</td>"
        + "".join(f'<td class="num">{value(ds, "publish_oracle", m, s + suffix, f)}</td>' for m, s, f in GRADE_COLUMNS)
        + "</tr>"
        for name, suffix in AUDIENCES
    )
    agreement = value(ds, "serving", "member_agreement", "sample", ".2%")
    served = ds + ONE_DAY
    coverage = (
        f"<p>{served}'s traffic, answered by this night's osmf-serving: of the impressions on products it "
        f"published, {value(served, 'serving_coverage', 'coverage', 'creative', '.1%')} got a creative and "
        f"{value(served, 'serving_coverage', 'coverage', 'generated', '.1%')} a generated one; "
        f"{value(served, 'serving_coverage', 'generated_share', 'all', '.1%')} of all its impressions got a "
        "generated creative.</p>"
        if (served, "serving_coverage", "coverage", "creative") in values.index
        else f'<p class="muted">{served} has not been served and ingested yet: no coverage to show.</p>'
    )
    return (
        f"<p>Members placed again by their attributes alone get their own group: {agreement}.</p>"
        "<table><tr><th>next day's audience (held-out products)</th><th>impressions</th><th>served, oracle CTR</th>"
        f"<th>best logged, oracle CTR</th><th>lift</th></tr>{rows}</table>{coverage}"
    )


def _version(version: str | None) -> str:
    return "none yet" if version is None else f"v{version}"


def _metrics_table(metrics: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><td>{_e(r.stage)}</td><td>{_e(r.metric)}</td><td>{_e(r.slice)}</td>"
        f'<td class="num">{r.value:.4g}</td></tr>'
        for r in metrics.sort_values(["stage", "metric", "slice"]).itertuples()
    )
    return f"<table><tr><th>stage</th><th>metric</th><th>slice</th><th>value</th></tr>{rows}</table>"


def _stage_summaries(metrics: pd.DataFrame) -> str:
    """Per stage, its metrics as rows and its slices as columns; slices per category (named
    `<slice>/<category>`) only in the full table."""
    parts = []
    overall = metrics[~metrics["slice"].fillna("").str.contains("/")].fillna({"slice": ""})
    for stage, rows in overall.groupby("stage", sort=True):
        grid = rows.pivot_table(index="metric", columns="slice", values="value", aggfunc="first")
        header = "".join(f"<th>{_e(column)}</th>" for column in grid.columns)
        body = "".join(
            f"<tr><td>{_e(metric)}</td>"
            + "".join(f'<td class="num">{"" if pd.isna(v) else f"{v:.4g}"}</td>' for v in values)
            + "</tr>"
            for metric, values in grid.iterrows()
        )
        parts.append(f"<h3>{_e(stage)}</h3><table><tr><th>metric</th>{header}</tr>{body}</table>")
    return "".join(parts) or '<p class="muted">no metrics for this night</p>'


def _headline(metrics: pd.DataFrame) -> str:
    values = metrics.set_index(["stage", "metric", "slice"])["value"]
    items = [
        f"<li><b>{values[key]:{'+.1%' if key[1].startswith('lift') else '.0%'}}</b>{text}</li>"
        for key, text in HEADLINE.items()
        if key in values.index
    ]
    return f'<ul class="headline">{"".join(items)}</ul>' if items else ""


def _served_image(served: pd.DataFrame, group_id: int) -> str | None:
    mine = served[served["group_id"] == group_id]
    return mine["image_uri"].iat[0] if len(mine) else None


def _grid(
    chosen: list[str],
    products: pd.DataFrame,
    groups: pd.DataFrame,
    served: pd.DataFrame,
    side: int,
    limits: ImageLimits,
) -> str:
    """Product x group: the creative each group is served, its group's description under it."""
    rows = []
    for p in chosen:
        mine = served[served["product_id"] == p]
        cells = "".join(
            f"<td>{_img(_served_image(mine, g.group_id), side, f'{p} group {g.group_id}', limits)}"
            f'<div class="caption">{_e(g.description)}</div></td>'
            for g in groups[groups["product_id"] == p].sort_values("group_id").itertuples()
        )
        title = products.loc[p]
        rows.append(f'<tr><th>{_e(title["title"])}<div class="muted">{_e(title["category"])}</div></th>{cells}</tr>')
    return f'<table class="grid">{"".join(rows)}</table>'


def _product_section(
    product: pd.Series,
    groups: pd.DataFrame,
    served: pd.DataFrame,
    candidates: pd.DataFrame,
    sheet_uri: str | None,
    side: int,
    limits: ImageLimits,
) -> str:
    rows = []
    for group in groups.itertuples():
        mine = served[served["group_id"] == group.group_id]
        creative = mine.iloc[0] if len(mine) else pd.Series({"origin": None, "prompt": None})
        scores = candidates[candidates["group_id"] == group.group_id].sort_values("candidate")
        listed = ", ".join(
            f'<span class="selected">{c.grm_score:.2f}</span>' if c.selected else f"{c.grm_score:.2f}"
            for c in scores.itertuples()
            if pd.notna(c.grm_score)
        )
        rows.append(
            f'<tr><td class="num">{group.group_id}</td><td class="num">{group.size}</td>'
            f"<td>{_e(group.description)}</td><td>{_e(creative['origin'])}</td>"
            f"<td>{_e(creative['prompt'])}</td><td>{listed}</td></tr>"
        )
    sheet = (
        "<p>Contact sheet: groups as rows, candidates as columns, the selected one framed.<br>"
        f"{_img(sheet_uri, side * 4, 'contact sheet', limits)}</p>"
        if sheet_uri
        else ""
    )
    return (
        f'<section class="product"><h3>{_e(product["title"])} <span class="muted">{_e(product.name)} · '
        f"{_e(product['category'])}</span></h3>"
        "<table><tr><th>group</th><th>users</th><th>description</th><th>origin</th>"
        f"<th>prompt served</th><th>candidates' GRM logits</th></tr>{''.join(rows)}</table>{sheet}</section>"
    )


def build(ctx: JobContext, served: pd.DataFrame) -> str:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    side = cfg.publish.thumbnail
    generated = served.assign(_generated=served["origin"] == GENERATED)
    ranked = generated.groupby("product_id")["_generated"].any().reset_index()
    chosen = ranked.sort_values(["_generated", "product_id"], ascending=[False, True])["product_id"]
    chosen = chosen.head(cfg.publish.report_products).tolist()
    products = tables.read(spark, PRODUCTS, cfg, as_of=ds).where(F.col("product_id").isin(chosen)).toPandas()
    groups = tables.read(spark, GROUP_PROFILES, cfg, ds=ds).where(F.col("product_id").isin(chosen))
    groups = groups.select("product_id", "group_id", "size", "description").toPandas()
    candidates = (
        tables.read_or_empty(spark, GENERATED_CREATIVES, cfg)
        .where((F.col("ds") == F.lit(ds)) & F.col("product_id").isin(chosen))
        .toPandas()
    )
    metrics = tables.read_or_empty(spark, EVAL_METRICS, cfg).where(F.col("ds") == F.lit(ds)).toPandas()
    champions = "".join(f"<li>{name}@champion: {_e(_version(tracking.alias_version(name)))}</li>" for name in MODELS)
    lineage = served[["gmllm_version", "grm_version"]].drop_duplicates().dropna(how="all")
    used = "".join(
        f"<li>written by {_e(r.gmllm_version)}, selected by {_e(r.grm_version)}</li>" for r in lineage.itertuples()
    )
    products = products.set_index("product_id")
    chosen = [p for p in chosen if p in products.index]
    limits = ImageLimits.of(cfg)
    rendered = set(candidates.loc[candidates["image_uri"].notna(), "product_id"])
    sections = "".join(
        _product_section(
            products.loc[p],
            groups[groups["product_id"] == p].sort_values("group_id"),
            served[served["product_id"] == p],
            candidates[candidates["product_id"] == p],
            artifacts.join(product_folder(cfg, ds, p), CONTACT_SHEET) if p in rendered else None,
            side,
            limits,
        )
        for p in chosen
    )
    shown = f"{len(chosen)} of {served['product_id'].nunique()} products, those with generated creatives first"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>OSMF night {ds}</title><style>{STYLE}</style></head>
<body>
<h1>OSMF night {ds}</h1>
<p>{len(served)} (product, group) targets served, {int(generated["_generated"].sum())} with a generated
creative; the other groups get their best logged creative.</p>
{_headline(metrics)}
<h2>Creatives</h2>
<p class="muted">What each group is shown, with its group's description: {shown}.</p>
{_grid(chosen, products, groups, served, side, limits)}
<h2>Click-through rate by day</h2>
{line_chart(ctr_by_day(ctx))}
<h2>Night over night</h2>
<p class="muted">Oracle CTR of what each night served its next day's held-out traffic, against the best
logged creative and the ceiling (the oracle's best prompt per group); headroom captured between them.</p>
{nights_section(ctx)}
<h2>Who is served</h2>
{serving_section(ctx)}
<h2>Models</h2><ul>{used}{champions}</ul>
<h2>Metrics by stage</h2>
{_stage_summaries(metrics)}
<h2>Products</h2>
{sections}
<details><summary><h2 style="display: inline">All metrics</h2></summary>
{_metrics_table(metrics)}
</details>
</body></html>
"""


def rebuild(ctx: JobContext) -> str:
    """Write the night's report again from the lakehouse as it is now (after the next day was
    served and ingested, it shows that day's coverage and closed loop); returns where it is."""
    tracking.configure(ctx.cfg)
    served = tables.read(ctx.spark, SERVING_CREATIVES, ctx.cfg, ds=ctx.ds).where("selected").toPandas()
    tables.register_views(ctx.spark, ctx.cfg)
    uri = report_uri(ctx.cfg, ctx.ds)
    artifacts.write_atomically(uri, build(ctx, served).encode())
    return uri


def write(ctx: JobContext, served: pd.DataFrame) -> str:
    """Build the night's report, write it under the artifacts root and log it to the stage's run,
    with a screenshot beside it when a headless browser is installed."""
    page = build(ctx, served)
    uri = report_uri(ctx.cfg, ctx.ds)
    artifacts.write_atomically(uri, page.encode())
    mlflow.log_text(page, "report/report.html")
    try:
        seen = browser.render(page)
    except browser.BrowserMissing as missing:
        log.info(f"{ctx.stage}: no screenshot of the report: {missing}")
        return uri
    screenshot = uri.removesuffix(".html") + ".png"
    artifacts.write_atomically(screenshot, seen.png)
    with Image.open(io.BytesIO(seen.png)) as image:
        mlflow.log_image(image, artifact_file="report/report.png")
    mlflow.log_metrics({"report.broken_images": len(seen.broken_images), "report.script_errors": len(seen.errors)})
    problems = [*(f"broken image {src}" for src in seen.broken_images), *seen.errors]
    saw = f"; the browser saw: {'; '.join(problems)}" if problems else ""
    log.info(f"{ctx.stage}: report screenshot {screenshot}{saw}")
    return uri
