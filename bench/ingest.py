"""Benchmark: `ingest_events` against a plain Spark read-JSON-write-Parquet of the same files.

    .venv/bin/python bench/ingest.py                       # tiny (fixed cost), demo and bench scale, two days each
    .venv/bin/python bench/ingest.py --scales demo --days 1

All sides run in the same Spark session on the same landing files, after a tiny warm-up, so
the ratio says what validation, deduplication, reconciliation and the Delta commits cost over
the cheapest possible copy. Target: ingest at >= 0.5x the plain write's events per second.
A second baseline, the same copy written as a Delta table, shows which part of the gap is
Delta's own (file statistics, the commit) rather than ingestion's. The third, the floor, makes
only the Delta commits every conforming ingest must make (the day's `impressions` partition
replaced, each dimension file MERGEd on its key), fed by Spark's JSON reader with no
validation, deduplication, rejects or reconciliation: plain s / floor s is the best ratio any
ingestion that keeps the tables' contracts could reach. The second day is a night in steady
state: the tables exist and the day's event ids are checked against the stored ones.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from osmf_lib import ingest, tables
from osmf_lib.config import Config, load_config
from osmf_lib.spark import get_spark
from osmf_lib.synth import write_landing

START = date(2026, 11, 1)


def bench_scale(scale: str, days: int, workdir: Path) -> list[tuple]:
    root = workdir / scale
    shutil.rmtree(root, ignore_errors=True)
    common = [f"lakehouse.landing={root}/landing", "spark.show_progress=false"]
    cfg = load_config(overrides=[f"lakehouse.root={root}/lakehouse", *common])
    floor_cfg = load_config(overrides=[f"lakehouse.root={root}/floor", *common])
    print(f"[{scale}] writing {days} day(s) of landing files ...", flush=True)
    write_landing(cfg, scale=scale, start=START, days=days)
    spark = get_spark(cfg, app_name="osmf-bench-ingest")
    rows = []
    for offset in range(days):
        ds = START + timedelta(days=offset)
        events = ingest.source_location(cfg, ds, cfg.ingest.events)
        plain = _copy(spark, events, f"{root}/plain/{ds}", "parquet")
        delta = _copy(spark, events, f"{root}/delta/{ds}", "delta")
        floor = _floor(spark, floor_cfg, ds)
        began = time.perf_counter()
        counts = ingest.ingest_day(spark, cfg, ds)
        ingested = time.perf_counter() - began
        rows.append((scale, ds.isoformat(), counts.read, plain, delta, floor, ingested))
        print(
            f"[{scale}] {ds}: plain {plain:.1f}s, delta copy {delta:.1f}s, floor {floor:.1f}s, ingest {ingested:.1f}s",
            flush=True,
        )
    return rows


def _copy(spark: SparkSession, events: str, target: str, fmt: str) -> float:
    """Seconds to read the JSON lines as Spark's JSON source does and write them in `fmt`."""
    began = time.perf_counter()
    spark.read.json(events).write.format(fmt).mode("overwrite").save(target)
    return time.perf_counter() - began


def _floor(spark: SparkSession, cfg: Config, ds: date) -> float:
    """Seconds for the commits any conforming ingest makes, with no checks (see the docstring)."""
    began = time.perf_counter()

    def upsert(dim: ingest.Dimension) -> None:
        fields = [f for f in dim.table.schema().fields if f.name != "updated_ds"]
        rows = spark.read.schema(StructType(fields)).json(
            ingest.source_location(cfg, ds, getattr(cfg.ingest, dim.source_attr))
        )
        tables.merge(spark, rows.withColumn("updated_ds", F.lit(ds)), dim.table, cfg, unless_newer="updated_ds")

    with ThreadPoolExecutor(len(ingest.DIMENSIONS)) as pool:
        list(pool.map(upsert, ingest.DIMENSIONS))
    fields = [f for f in tables.IMPRESSIONS.schema().fields if f.name in ingest.EVENT_FIELDS]
    events = spark.read.schema(StructType(fields)).json(ingest.source_location(cfg, ds, cfg.ingest.events))
    day_rows = events.select("*", F.col("_metadata.file_path").alias(ingest.FILE), F.lit(ds).alias(tables.DS))
    tables.overwrite_partition(spark, day_rows, tables.IMPRESSIONS, cfg, ds)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", nargs="+", default=["demo", "bench"])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "osmf-bench-ingest")
    args = parser.parse_args()

    bench_scale("tiny", 1, args.workdir)  # JVM and Delta warm-up; not reported
    # A warm tiny day (60k events) shows the fixed cost of a night: three dimension MERGEs and
    # two partition commits that do not shrink with the day's volume.
    scales = ["tiny", *args.scales]
    rows = [row for scale in scales for row in bench_scale(scale, args.days, args.workdir)]

    header = (
        "scale",
        "ds",
        "events",
        "plain s",
        "delta copy s",
        "floor s",
        "ingest s",
        "ingest ev/s",
        "vs plain",
        "vs delta",
        "floor vs plain",
    )
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    # Events per second compare as the inverse of the times: ingest/plain = plain s / ingest s.
    for scale, ds, events, plain, delta, floor, ingested in rows:
        print(
            f"| {scale} | {ds} | {events:,} | {plain:.1f} | {delta:.1f} | {floor:.1f} | {ingested:.1f} "
            f"| {events / ingested:,.0f} | {plain / ingested:.2f}x | {delta / ingested:.2f}x | {plain / floor:.2f}x |"
        )


if __name__ == "__main__":
    main()
