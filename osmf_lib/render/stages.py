"""generate_creatives (docs/design.md#rendering): finished images for every target (product, group) of the night.

For every group of every product with a picture: up to `render.candidates` background
descriptions from osmf-gmllm (the version pinned for the ds), its greedy one first and samples
after (`candidates_for`), one rendered image per description around the untouched product, the
GRM's score of each, the best one selected. Images go to `{render.artifacts}/{ds}/{product_id}/{group_id}/{k}.png`
with a contact sheet per product beside them (`render.product_folder`: groups as rows,
candidates as columns, the selected one framed); `generated_creatives` gets a row per candidate.

A product is the unit of work: its groups' descriptions are written together (seeded by the
product); the products of a chunk are rendered in shared batches and committed together, so a
killed run loses at most a chunk and a rerun of the ds renders only the products without rows,
to the same pixels (every seed is fixed per night, product, group and candidate, and an image
does not depend on what shares its batch). `--shard i/n` takes the products whose stable hash falls
in shard i, so n workers cover every target exactly once.
"""

from __future__ import annotations

import io
import logging
import time
import zlib
from datetime import date

import mlflow
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from osmf_lib import artifacts, promotion, tables
from osmf_lib.config import Config
from osmf_lib.device import resolve_device
from osmf_lib.gmllm.generator import Gmllm
from osmf_lib.gmllm.registry import load_gmllm
from osmf_lib.images import ImageError, ImageLimits, read_image
from osmf_lib.inputs import check_groups, dimension_versions, night_grm, writer_data
from osmf_lib.job import JobContext, Shard, StageError, StageResult
from osmf_lib.night import GMLLM, GRM
from osmf_lib.paag.features import image_path
from osmf_lib.render import CONTACT_SHEET, product_folder
from osmf_lib.render.pipeline import Renderer, load_pipeline, renderer_folders
from osmf_lib.render.tiny import library_of
from osmf_lib.tables import GENERATED_CREATIVES

log = logging.getLogger(__name__)

STAGE = "generate_creatives"
# Products rendered in shared batches and committed together to generated_creatives: what a
# killed run loses at most (about half a minute of tiny rendering here), against a commit's cost.
CHUNK_PRODUCTS = 32
KEY = ["product_id", "group_id"]
# Samples drawn per candidate wanted: room to skip unusable and repeated ones.
SPARE_SAMPLES = 2


def in_shard(products: list[str], shard: Shard) -> list[str]:
    """The products whose stable hash falls in the shard: a product's groups, its descriptions and
    its contact sheet stay with one worker."""
    return [p for p in products if zlib.crc32(p.encode()) % shard.count == shard.index]


def seed_of(ds: date, product_id: str, group_id: int = -1, candidate: int = -1) -> int:
    """Fixed per night, product, group and candidate, so a re-rendered target gives the same pixels."""
    return zlib.crc32(f"{ds.isoformat()}/{product_id}/{group_id}/{candidate}".encode())


def candidates_for(
    writer: Gmllm, groups: pd.DataFrame, data: dict[str, pd.DataFrame], cfg: Config, seed: int
) -> tuple[pd.DataFrame, int]:
    """One product's candidates -> (rows: product_id, group_id, candidate, prompt; the unusable
    descriptions written, none of them rendered). Per group, up to `render.candidates`: the
    generator's greedy description first, then samples at `render.temperature` (seeded by the
    product, so a resumed run writes the same), an unusable or repeated one skipped for the next.
    Why (bench/last_mile.py, docs/stages/last_mile.md): the GRM's best of samples at temperature 1 kept
    30% of the greedy description's lift on the demo night; its best of greedy plus samples at 0.5
    kept all of it."""
    spare = SPARE_SAMPLES * (cfg.render.candidates - 1)
    profiles, products = data["profiles"], data["products"]
    greedy = writer.write(groups, profiles, products).assign(sample=-1)
    drawn = writer.write(groups, profiles, products, samples=spare, seed=seed, temperature=cfg.render.temperature)
    written = pd.concat([greedy, drawn], ignore_index=True).sort_values([*KEY, "sample"], kind="stable")
    usable = written[written["usable"]].drop_duplicates([*KEY, "prompt"])
    rows = usable.groupby(KEY).head(cfg.render.candidates)
    rows = rows.assign(candidate=rows.groupby(KEY).cumcount())
    return rows[[*KEY, "candidate", "prompt"]].reset_index(drop=True), int((~written["usable"]).sum())


def select_best(candidates: pd.DataFrame) -> pd.Series:
    """True for the best-scored rendered candidate of each target (ties: the lowest candidate);
    a target whose candidates have no score takes its first rendered one."""
    rendered = candidates[candidates["image_uri"].notna()]
    ranked = rendered.assign(_score=rendered["grm_score"].fillna(-np.inf)).sort_values(
        [*KEY, "_score", "candidate"], ascending=[True, True, False, True]
    )
    best = ranked.drop_duplicates(KEY).index
    return pd.Series(candidates.index.isin(best), index=candidates.index)


def contact_sheet(rows: pd.DataFrame, images: dict[tuple[int, int], Image.Image | None], size: int) -> Image.Image:
    """Groups as rows, candidates as columns, the selected image framed; a failed one stays grey."""
    groups, columns = sorted(rows["group_id"].unique()), int(rows["candidate"].max()) + 1
    pad = max(2, size // 32)
    sheet = Image.new("RGB", (columns * (size + pad) + pad, len(groups) * (size + pad) + pad), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    for _, row in rows.iterrows():
        x = pad + int(row["candidate"]) * (size + pad)
        y = pad + groups.index(row["group_id"]) * (size + pad)
        image = images.get((row["group_id"], row["candidate"]))
        if image is None:
            draw.rectangle([x, y, x + size - 1, y + size - 1], fill=(200, 200, 200))
        else:
            sheet.paste(image.resize((size, size)), (x, y))
        if row["selected"]:
            draw.rectangle(
                [x - pad // 2, y - pad // 2, x + size + pad // 2 - 1, y + size + pad // 2 - 1],
                outline=(220, 30, 30),
                width=max(1, pad // 2),
            )
    return sheet


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rendered_products(ctx: JobContext) -> list[str]:
    """Products with rows in generated_creatives for the ds (a chunk commits whole products)."""
    if not tables.exists(ctx.spark, GENERATED_CREATIVES, ctx.cfg):
        return []
    rows = tables.read(ctx.spark, GENERATED_CREATIVES, ctx.cfg, ds=ctx.ds).select("product_id").distinct()
    return [row["product_id"] for row in rows.collect()]


def _cut_out(product_id: str, path: str, limits: ImageLimits) -> Image.Image:
    try:
        return read_image(path, limits).convert("RGBA")
    except ImageError as err:
        raise StageError(f"product {product_id}: cannot read its image {path}: {err}") from err


ALL = Shard(0, 1)


def generate_creatives(ctx: JobContext, shard: Shard = ALL) -> StageResult:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    check_groups(spark, cfg, ds)
    dimensions = dimension_versions(ctx)
    data = writer_data(ctx, dimensions)
    gmllm_version = promotion.version_for_ds(GMLLM.name, ds)
    if gmllm_version is None:
        # A first night whose train_group_dpo found no training pairs has nothing to write with.
        return StageResult(skipped=f"no {GMLLM.name} for ds={ds} (train_group_dpo registered none yet)")
    # The table exists once the stage has run, even on a night whose every description was unusable.
    tables.ensure(spark, GENERATED_CREATIVES, cfg)
    # Every group of every product: rendering all 500 demo products' 1,113 groups costs minutes.
    targets = data["groups"][KEY]
    pictures = {row.product_id: image_path(row.image_uri) for row in data["products"].itertuples()}
    products = in_shard(sorted(targets["product_id"].unique()), shard)
    # A creative is the product on a background: a product without a picture gets none (counted).
    no_image = [p for p in products if pictures.get(p) is None]
    done = set(rendered_products(ctx))
    todo = [p for p in products if p not in done and pictures.get(p) is not None]
    log.info(
        f"{STAGE}: shard {shard}: {len(products)} products, {len(done & set(products))} already rendered for "
        f"ds={ds}, {len(no_image)} without an image left out"
    )
    mlflow.log_params({"products": len(products), "shard": str(shard), "already_rendered": len(done & set(products))})
    mlflow.log_metric("products_without_image", len(no_image))
    shard_counts = {"products": len(products), "already_rendered": len(done & set(products)), "no_image": len(no_image)}
    if not todo:
        return StageResult(metrics=shard_counts)
    judged = night_grm(cfg, ds)
    if judged is None:
        log.info(f"{STAGE}: no osmf-grm for ds={ds}: candidates stay unscored, the first rendered one is selected")
    device = resolve_device(cfg.gpu.device)
    writer = load_gmllm(f"models:/{GMLLM.name}/{gmllm_version}", str(device), cfg.models.unreadable_image)
    renderer = Renderer.from_config(load_pipeline(*renderer_folders(cfg, library_of(cfg)), device), cfg)
    versions = {
        "gmllm_version": f"{GMLLM.name}/{gmllm_version}",
        "grm_version": f"{GRM.name}/{judged[0]}" if judged else None,
    }
    unusable = rendered = 0
    groups = targets[targets["product_id"].isin(todo)]
    progress = tqdm(total=len(groups) * cfg.render.candidates, unit="img", desc=STAGE, mininterval=10)
    started = time.monotonic()
    for first in range(0, len(todo), CHUNK_PRODUCTS):
        written = []
        for product_id in todo[first : first + CHUNK_PRODUCTS]:
            rows, skipped = candidates_for(
                writer, groups[groups["product_id"] == product_id], data, cfg, seed_of(ds, product_id)
            )
            unusable += skipped
            progress.update(len(groups[groups["product_id"] == product_id]) * cfg.render.candidates - len(rows))
            if len(rows):
                written.append((rows, _cut_out(product_id, pictures[product_id], ImageLimits.of(cfg))))
        chunk = _render_chunk(ctx, renderer, judged, written, versions, data["profiles"], progress)
        rendered += sum(len(rows) for rows, _ in written)
        if chunk:
            frame = pd.concat(chunk, ignore_index=True).assign(ds=ds)[GENERATED_CREATIVES.column_names]
            tables.merge(
                spark, spark.createDataFrame(frame, GENERATED_CREATIVES.schema()), GENERATED_CREATIVES, cfg, ds=ds
            )
    progress.close()
    elapsed = time.monotonic() - started
    metrics = {
        "images": rendered,
        "images_per_s": rendered / elapsed if elapsed else 0.0,
        "unusable_prompts": unusable,
        "rejected_blank": renderer.rejected,
    }
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    log.info(
        f"{STAGE}: {rendered} images for {len(groups)} targets of {len(todo)} products in {elapsed:.0f} s "
        f"({metrics['images_per_s']:.2f}/s); {unusable} unusable descriptions not rendered, "
        f"{renderer.rejected} blank images re-seeded"
    )
    return StageResult(written={GENERATED_CREATIVES.name: rendered}, metrics={**shard_counts, **metrics})


def _render_chunk(
    ctx: JobContext,
    renderer: Renderer,
    judged: tuple[str, object] | None,
    written: list[tuple[pd.DataFrame, Image.Image]],
    versions: dict[str, str | None],
    profiles: pd.DataFrame,
    progress: tqdm,
) -> list[pd.DataFrame]:
    """Render a chunk's products together (rows: product_id, group_id, candidate, prompt, and the
    product's cut-out), then score, select and store each; their generated_creatives rows."""
    seeds = [[seed_of(ctx.ds, r.product_id, r.group_id, r.candidate) for r in rows.itertuples()] for rows, _ in written]
    cut_outs = [cut_out for rows, cut_out in written for _ in range(len(rows))]
    prompts = [prompt for rows, _ in written for prompt in rows["prompt"]]
    images = renderer.render(cut_outs, prompts, [seed for product in seeds for seed in product])
    progress.update(len(images))
    out, at = [], 0
    for (rows, _), product_seeds in zip(written, seeds, strict=True):
        out.append(
            _store_product(
                ctx, judged, rows, product_seeds, images[at : at + len(rows)], versions, profiles, renderer.size
            )
        )
        at += len(rows)
    return out


def _store_product(
    ctx: JobContext,
    judged: tuple[str, object] | None,
    rows: pd.DataFrame,
    seeds: list[int],
    images: list[Image.Image | None],
    versions: dict[str, str | None],
    profiles: pd.DataFrame,
    size: int,
) -> pd.DataFrame:
    """Write one product's images, score and select its candidates, draw its contact sheet."""
    product_id = rows["product_id"].iat[0]
    keys = list(zip(rows["group_id"].astype(int), rows["candidate"].astype(int), strict=True))
    folder = product_folder(ctx.cfg, ctx.ds, product_id)
    uris = []
    for (group_id, candidate), image in zip(keys, images, strict=True):
        uri = None if image is None else artifacts.join(folder, str(group_id), f"{candidate}.png")
        if image is not None:
            artifacts.write_atomically(uri, _png(image))
        uris.append(uri)
    out = rows[["product_id", "group_id", "candidate", "prompt"]].assign(seed=seeds, image_uri=uris, **versions)
    out["grm_score"] = judged[1].score(out, profiles).astype(float) if judged is not None else np.nan
    out["selected"] = select_best(out)
    sheet = contact_sheet(out, dict(zip(keys, images, strict=True)), size)
    artifacts.write_atomically(artifacts.join(folder, CONTACT_SHEET), _png(sheet))
    return out
