"""The ingest_events task: stage a day's landing files, check they add up and pass the gate, then
publish them; the only place that reads landing files and writes tables."""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from osmf_lib import images, quality, tables
from osmf_lib.config import Config, Source
from osmf_lib.ingest.dedup import (
    Reconciliation,
    classify_events,
    event_times,
    first_copies,
    impressions_of,
    reconcile,
    rejects_of,
    repeatable,
    repeated_ids,
    survey_events,
)
from osmf_lib.ingest.dimensions import DIMENSIONS, Dimension, original_creatives, validate_dimension
from osmf_lib.ingest.read import (
    ACCEPTED,
    FILE,
    POSITION,
    RAW,
    REASON,
    REJECTED,
    SPLIT,
    STATUS,
    LineNumbers,
    read_source,
    source_columns,
    source_location,
    split_extent,
)
from osmf_lib.ingest.validate import EVENT_FIELDS, type_events, validate_events
from osmf_lib.job import JobContext, StageError, StageResult
from osmf_lib.quality import Check
from osmf_lib.serving import coverage
from osmf_lib.spark import path_exists
from osmf_lib.tables import (
    CREATIVES,
    DS,
    IMPRESSIONS,
    LANDING_MANIFESTS,
    PRODUCTS,
    REJECTED_EVENTS,
    USER_ATTRIBUTES,
    USERS,
    Table,
)

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)


# The manifest the simulated world writes beside a day's landing files (osmf_lib.synth.landing).
# Named here rather than imported, so that ingesting real logs never loads the simulator.
MANIFEST_FILE = "synth-manifest.json"


@dataclass(frozen=True)
class StagedDimension:
    """A dimension's accepted rows of the day, not merged yet."""

    table: Table
    accepted: DataFrame  # the table's columns
    rows: int  # a file with none makes the table and merges nothing


def _stage_dimension(
    spark: SparkSession, cfg: Config, ds: date, dim: Dimension
) -> tuple[StagedDimension, DataFrame] | None:
    """Read, validate and reconcile one dimension file if the day has it -> (its accepted rows,
    its rejected lines as rejected_events rows)."""
    source: Source = getattr(cfg.ingest, dim.source_attr)
    location = source_location(cfg, ds, source)
    if not path_exists(spark, location):
        log.info(f"ingest {dim.table.name}: no file at {location}, nothing to upsert")
        return None
    columns = [c for c in dim.table.column_names if c != "updated_ds"]
    landed = read_source(spark, location, source, columns)
    rows = validate_dimension(landed.rows, dim, source, ds, images.roots(cfg)).cache()
    try:
        tally = rows.groupBy(FILE, SPLIT, STATUS).agg(*split_extent(), F.count("*").alias("n")).collect()
        numbers = LineNumbers.of(tally, landed.header_lines)
        fates = Counter()
        for group in tally:
            fates[group[STATUS]] += group["n"]
        counts = Reconciliation.of(numbers.lines, fates).checked(f"ingest {dim.table.name} {ds} from {location}")
        # Checkpointed and the cache let go: a cached plan is matched by its text, so a rerun in the
        # same session would read the file as it was before it was shipped again.
        accepted = rows.where(F.col(STATUS) == ACCEPTED).select(*dim.table.column_names).localCheckpoint()
        rejected = rows.where(F.col(STATUS) == REJECTED).select(*POSITION, RAW, REASON, F.lit(ds).alias(DS))
        return StagedDimension(dim.table, accepted, counts.accepted), numbers.apply(spark, rejected).localCheckpoint()
    finally:
        rows.unpersist()


def _as_merged(stored: DataFrame | None, staged: DataFrame | None, key: str) -> DataFrame:
    """The dimension as it will be once `staged` is merged: a staged row replaces its key's."""
    if staged is None or stored is None:
        return stored if staged is None else staged
    return staged.unionByName(stored.join(staged.select(key), key, "left_anti"))


def parse_manifest(text: str, location: str) -> tuple[int, str]:
    """(seed, scale) from a simulator manifest's text; a clear failure naming the file otherwise."""
    malformed = f'{location}: malformed simulator manifest, expected {{"seed": <int>, "scale": "<name>"}}'
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise StageError(f"{malformed}; it is not JSON ({err})") from None
    seed, scale = (manifest.get("seed"), manifest.get("scale")) if isinstance(manifest, dict) else (None, None)
    # bool is an int to Python; the seed column is a 32-bit INT.
    if type(seed) is not int or not 0 <= seed < 2**31 or not isinstance(scale, str) or not scale:
        raise StageError(f"{malformed}, got {text.strip()[:200]!r}")
    return seed, scale


def manifest_of(spark: SparkSession, day: str, ds: date) -> DataFrame:
    """The day's `landing_manifests` rows: one when the simulated world wrote the day, else none."""
    location = f"{day}/{MANIFEST_FILE}"
    rows = []
    if path_exists(spark, location):
        # Read through Spark, which reaches object stores as well as local files.
        landed = spark.read.text(location, wholetext=True).select("value", F.col("_metadata.file_path")).first()
        text, file = (landed["value"], landed["file_path"]) if landed else ("", location)
        rows.append((file, *parse_manifest(text, location), ds))
    return spark.createDataFrame(rows, LANDING_MANIFESTS.schema())


@dataclass(frozen=True)
class StagedDay:
    """A landing day read, validated, deduplicated and reconciled, nothing of it written yet: what
    `publish_day` will write, materialised apart from the tables it was checked against, so
    writing one of them recomputes nothing."""

    ds: date
    counts: Reconciliation
    dimensions: tuple[StagedDimension, ...]  # in DIMENSIONS order
    impressions: DataFrame
    rejects: DataFrame
    manifest: DataFrame
    stored: int  # impressions a stored run of the ds holds (0 on a first run)
    lost: int  # of those, events the staged day neither accepts nor counts as duplicates


def stage_day(spark: SparkSession, cfg: Config, ds: date) -> StagedDay:
    """Read and check `{landing}/{ds}` without writing: dimensions first (a new user's first
    events land the same day, so events are checked against the dimensions as they will be)."""
    day = f"{cfg.lakehouse.landing.rstrip('/')}/{ds.isoformat()}"
    if not path_exists(spark, day):
        raise StageError(f"no landing folder for ds={ds}: {day} does not exist (has the log shipper run?)")
    events_location = source_location(cfg, ds, cfg.ingest.events)
    if not path_exists(spark, events_location):
        raise StageError(f"no events for ds={ds}: {events_location} does not exist")
    manifest = manifest_of(spark, day, ds)

    # The dimension files are independent, so they are read and reconciled side by side: each is
    # mostly small jobs, which overlap well (bench/ingest.py has the figures).
    with ThreadPoolExecutor(len(DIMENSIONS)) as pool:
        staged = [s for s in pool.map(lambda dim: _stage_dimension(spark, cfg, ds, dim), DIMENSIONS) if s]
    upserts = {upsert.table.name: upsert for upsert, _ in staged}

    def as_merged(table: Table) -> DataFrame:
        upsert = upserts.get(table.name)
        return _as_merged(tables.read_or_empty(spark, table, cfg), upsert and upsert.accepted, table.keys[0])

    landed = read_source(spark, events_location, cfg.ingest.events, EVENT_FIELDS)
    if cfg.ingest.events.columns.get("creative_id", "creative_id") is None:
        known = as_merged(PRODUCTS).select("product_id")
        originals = original_creatives(type_events(landed.rows, cfg.ingest).join(known, "product_id", "left_semi"), ds)
        shipped = upserts.get(CREATIVES.name)
        # Checkpointed, as everything staged that reads a table: publishing writes that table.
        rows = _as_merged(originals, shipped and shipped.accepted, "creative_id").localCheckpoint()
        upserts[CREATIVES.name] = StagedDimension(CREATIVES, rows, rows.count())
    # The day is read and validated once, into memory; everything after reads the cache.
    dims = [as_merged(table) for table in (USERS, PRODUCTS, CREATIVES)]
    validated = validate_events(landed.rows, *dims, ds, cfg.ingest).cache()
    try:
        counts, impressions, rejects, (stored, lost) = _stage_events(spark, cfg, ds, validated, landed.header_lines)
    finally:
        validated.unpersist()
    rejects = reduce(DataFrame.unionByName, [rejects, *(rejected for _, rejected in staged)])
    return StagedDay(ds, counts, tuple(upserts.values()), impressions, rejects, manifest, stored, lost)


def _stage_events(
    spark: SparkSession, cfg: Config, ds: date, validated: DataFrame, header_lines: int
) -> tuple[Reconciliation, DataFrame, DataFrame, tuple[int, int]]:
    """Deduplicate and reconcile the validated day -> (counts, impressions, rejects, (impressions
    stored for the ds, how many of them the day would lose)), both frames checkpointed.

    An empty day goes the same way: nothing to publish in place of what is stored, and every
    stored event counted lost.
    """
    survey = survey_events(validated).collect()
    numbers = LineNumbers.of(survey, header_lines)
    every = tables.read_or_empty(spark, IMPRESSIONS, cfg)
    stored = every.where(F.col(DS) != F.lit(ds))
    repeated = repeated_ids(validated, repeatable(stored, event_times(survey))).cache()
    repeated.count()  # materialised: first_copies broadcasts it
    copies = first_copies(validated, repeated).cache()
    classified = classify_events(validated, copies)
    try:
        counts = reconcile(classified, numbers.lines).checked(f"ingest events {ds}")
        impressions = impressions_of(classified, ds).localCheckpoint()
        rejects = numbers.apply(spark, rejects_of(classified, ds)).localCheckpoint()
        kept = classified.where(F.col(STATUS) != REJECTED).select("event_id")
        before = every.where(F.col(DS) == F.lit(ds)).select("event_id")
        lost = before.join(kept, "event_id", "left_anti").count()
        return counts, impressions, rejects, (before.count(), lost)
    finally:
        copies.unpersist()
        repeated.unpersist()


def refuse_loss(cfg: Config, staged: StagedDay) -> None:
    """A rerun of a ds that would drop more of its stored events than quality.max_shrink (as when
    the landing day lost files) fails naming both counts, unless ingest.allow_shrink says the
    loss is meant."""
    share = staged.lost / staged.stored if staged.stored else 0.0
    if share <= cfg.quality.max_shrink or cfg.ingest.allow_shrink:
        return
    raise StageError(
        f"ingest {staged.ds}: the landing day holds {staged.counts.accepted:,} impressions where the stored "
        f"run of the ds holds {staged.stored:,}, and {staged.lost:,} of those events would be lost "
        f"({share:.1%} > quality.max_shrink {cfg.quality.max_shrink:g}); nothing was written. If the loss "
        "is meant (a source withdrew events), rerun with --set ingest.allow_shrink=true"
    )


def publish_day(spark: SparkSession, cfg: Config, staged: StagedDay) -> None:
    """Write an audited day: the dimensions, then its rejects, impressions and manifest. A run
    killed in between leaves each table whole, and a rerun of the ds completes it."""
    for upsert in staged.dimensions:
        if upsert.rows:
            tables.merge(spark, upsert.accepted, upsert.table, cfg, unless_newer="updated_ds", ds=staged.ds)
        else:
            # A MERGE of no rows commits nothing yet costs about what a real one does (the table's
            # log replay and scan), and a file with nothing new is common once a catalogue is stable.
            tables.ensure(spark, upsert.table, cfg)
    tables.overwrite_partition(spark, staged.rejects, REJECTED_EVENTS, cfg, staged.ds)
    tables.overwrite_partition(spark, staged.impressions, IMPRESSIONS, cfg, staged.ds)
    tables.overwrite_partition(spark, staged.manifest, LANDING_MANIFESTS, cfg, staged.ds)


def ingest_day(
    spark: SparkSession, cfg: Config, ds: date, gate: Callable[[list[Check]], None] | None = None
) -> Reconciliation:
    """Ingest `{landing}/{ds}` by write-audit-publish: stage the day (`stage_day`), refuse a rerun
    that loses stored events (`refuse_loss`), hand the quality checks of the staged day to `gate`
    (which fails the stage), and only then write (`publish_day`). A failed audit leaves every
    table at its previous version."""
    staged = stage_day(spark, cfg, ds)
    refuse_loss(cfg, staged)
    if gate is not None:
        gate(quality_checks(spark, cfg, staged))
    publish_day(spark, cfg, staged)
    return staged.counts


def reject_reasons(spark: SparkSession, cfg: Config, ds: date) -> dict[str, int]:
    """Rejected lines of the day per kind of reason (the text before the first colon)."""
    rows = (
        tables.read(spark, REJECTED_EVENTS, cfg, ds=ds).groupBy(F.substring_index(REASON, ":", 1).alias("kind")).count()
    )
    return {r["kind"]: r["count"] for r in rows.collect()}


def quality_checks(spark: SparkSession, cfg: Config, staged: StagedDay) -> list[Check]:
    """The day's gate, on the staged day: refused lines, impressions per event day against the
    previous night, and the share of the day's users missing the most-missed attribute the users
    file carries."""
    counts = staged.counts
    refused = Check(
        "rejected_share",
        counts.rejected / counts.read if counts.read else 0.0,
        high=cfg.quality.max_rejected_share,
        setting="quality.max_rejected_share",
        measured=f"{counts.rejected:,} of {counts.read:,} event lines",
    )
    # Per event day, so a night that ingested a history is compared by its daily rate.
    daily = F.count("*") / F.countDistinct(F.to_date("ts"))
    others = tables.read_or_empty(spark, IMPRESSIONS, cfg).where(F.col(DS) != F.lit(staged.ds))
    with_day = others.unionByName(staged.impressions)
    change = quality.versus_previous(cfg, "impressions_per_day", with_day, staged.ds, "impressions a day", daily)
    return [refused, *change, *_missing_attributes(spark, cfg, staged)]


def _missing_attributes(spark: SparkSession, cfg: Config, staged: StagedDay) -> list[Check]:
    """The attribute the most of the day's users lack, among those the users file carries. A user
    with impressions but no row in users lacks them all; a log that never shipped a users file
    has no attributes to check."""
    carried = list(source_columns(cfg.ingest.users, USER_ATTRIBUTES))
    seen = staged.impressions.select("user_id").distinct()
    arriving = next((upsert.accepted for upsert in staged.dimensions if upsert.table is USERS), None)
    stored = tables.read(spark, USERS, cfg, as_of=staged.ds) if tables.exists(spark, USERS, cfg) else None
    if not carried or (stored is None and arriving is None) or seen.first() is None:
        return []
    users = _as_merged(stored, arriving, "user_id").select("user_id", *carried)
    row = (
        seen.join(users, "user_id", "left")
        .agg(F.count("*").alias("users"), *(F.count(F.when(F.col(a).isNull(), 1)).alias(a) for a in carried))
        .first()
    )
    worst = max(carried, key=lambda attribute: row[attribute])
    return [
        Check(
            "attribute_null_share",
            row[worst] / row["users"],
            high=cfg.quality.max_null_share,
            setting="quality.max_null_share",
            measured=f"{worst}: {row[worst]:,} of the day's {row['users']:,} users",
        )
    ]


def ingest_events(ctx: JobContext) -> StageResult:
    import mlflow

    counts = ingest_day(ctx.spark, ctx.cfg, ctx.ds, gate=lambda checks: quality.gate(ctx, checks, published=False))
    mlflow.log_metrics(
        {
            "events_read": counts.read,
            "events_accepted": counts.accepted,
            "events_rejected": counts.rejected,
            "events_duplicates": counts.duplicates,
        }
    )
    mlflow.set_tag("osmf.reconciliation", counts.line("events"))
    reasons = reject_reasons(ctx.spark, ctx.cfg, ctx.ds)
    mlflow.log_metrics({f"rejected.{kind.replace(' ', '_')}": n for kind, n in reasons.items()})
    for table in (IMPRESSIONS, REJECTED_EVENTS, LANDING_MANIFESTS, USERS, PRODUCTS, CREATIVES):
        if tables.exists(ctx.spark, table, ctx.cfg):
            mlflow.log_param(f"output.{table.name}.version", tables.latest_version(ctx.spark, table, ctx.cfg))
    # Always written, so a rerun after the day's assignments were dropped leaves none behind.
    reached = coverage.coverage(ctx.spark, ctx.cfg, ctx.ds)
    tables.write_metrics(ctx.spark, ctx.cfg, ctx.ds, coverage.STAGE, reached, mlflow.active_run().info.run_id)
    if reached:
        mlflow.log_metrics({f"{coverage.STAGE}.{m.metric}.{m.slice.replace(' ', '_')}": m.value for m in reached})
        for m in reached:
            log.info(f"{ctx.stage}: {coverage.STAGE} {m.metric} {m.slice}: {m.value:.4f}")
    return StageResult(
        written={IMPRESSIONS.name: counts.accepted, REJECTED_EVENTS.name: counts.rejected},
        metrics={"events_read": counts.read, "events_duplicates": counts.duplicates},
    )
