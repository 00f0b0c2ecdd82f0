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

Driver memory. The driver's JVM logs its collections; "heap after GC" is the most heap any
collection during the day's ingest left in use: an upper bound of what the driver had to hold
(in local mode the driver is also the executor, so cached data counts too). `--stored-users`
answers how many users the default driver memory holds: for each count, a fresh process stores
that many users in the users table, then ingests one tiny day against it with the configured
`spark.driver_memory`, and the table says whether it got through and at what heap:

    .venv/bin/python bench/ingest.py --scales --stored-users 1000000 10000000 40000000
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from osmf_lib import tables
from osmf_lib.config import Config, load_config
from osmf_lib.ingest.dimensions import DIMENSIONS, Dimension
from osmf_lib.ingest.read import FILE, source_location
from osmf_lib.ingest.stages import ingest_day
from osmf_lib.ingest.validate import EVENT_FIELDS
from osmf_lib.spark import get_spark
from osmf_lib.synth import write_landing

START = date(2026, 11, 1)
# A G1 pause line of -Xlog:gc ends "<before>M-><after>M(<committed>M) <time>ms".
GC_PAUSE = re.compile(r"Pause.* (\d+)M->(\d+)M\(\d+M\)")


class GcLog:
    """The driver JVM's collections, read from the log its -Xlog:gc option writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def option(self) -> str:
        return f'spark.conf={{"spark.driver.extraJavaOptions": "-Xlog:gc:file={self.path}"}}'

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def peak_after_gc_mb(self) -> int:
        """The most heap a collection since `mark` left in use (0 if none ran)."""
        with self.path.open() as log:
            log.seek(self.offset)
            return max((int(m.group(2)) for m in map(GC_PAUSE.search, log) if m), default=0)


def bench_scale(scale: str, days: int, workdir: Path, gc: GcLog) -> list[tuple]:
    root = workdir / scale
    shutil.rmtree(root, ignore_errors=True)
    common = [f"lakehouse.landing={root}/landing", "spark.show_progress=false", gc.option()]
    cfg = load_config(overrides=[f"lakehouse.root={root}/lakehouse", *common])
    floor_cfg = load_config(overrides=[f"lakehouse.root={root}/floor", *common])
    print(f"[{scale}] writing {days} day(s) of landing files ...", flush=True)
    write_landing(cfg, scale=scale, start=START, days=days)
    spark = get_spark(cfg, app_name="osmf-bench-ingest")
    rows = []
    for offset in range(days):
        ds = START + timedelta(days=offset)
        events = source_location(cfg, ds, cfg.ingest.events)
        plain = _copy(spark, events, f"{root}/plain/{ds}", "parquet")
        delta = _copy(spark, events, f"{root}/delta/{ds}", "delta")
        floor = _floor(spark, floor_cfg, ds)
        gc.mark()
        began = time.perf_counter()
        counts = ingest_day(spark, cfg, ds)
        ingested = time.perf_counter() - began
        heap = gc.peak_after_gc_mb()
        rows.append((scale, ds.isoformat(), counts.read, plain, delta, floor, ingested, heap))
        print(
            f"[{scale}] {ds}: plain {plain:.1f}s, delta copy {delta:.1f}s, floor {floor:.1f}s, ingest {ingested:.1f}s, "
            f"heap after GC {heap} MB",
            flush=True,
        )
    return rows


def stored_users_run(users: int, workdir: Path) -> dict:
    """Store `users` users, then ingest one tiny day against them (run in a process of its own)."""
    root = workdir / f"users-{users}"
    shutil.rmtree(root, ignore_errors=True)
    gc = GcLog(root / "gc.log")
    root.mkdir(parents=True)
    cfg = load_config(
        overrides=[
            f"lakehouse.root={root}/lakehouse",
            f"lakehouse.landing={root}/landing",
            "spark.show_progress=false",
            gc.option(),
        ]
    )
    write_landing(cfg, scale="tiny", start=START, days=1)
    spark = get_spark(cfg, app_name="osmf-bench-stored-users")
    tables.ensure(spark, tables.USERS, cfg)
    attributes = [c for c in tables.USERS.columns if c.name not in ("user_id", "interests", "updated_ds")]
    stored = spark.range(users).select(
        F.format_string("stored-%010d", "id").alias("user_id"),
        *[F.concat(F.lit(f"{c.name}-"), (F.col("id") % 5).cast("string")).alias(c.name) for c in attributes],
        F.array(F.lit("stored")).alias("interests"),
        F.lit(START - timedelta(days=1)).alias("updated_ds"),
    )
    stored.write.format("delta").mode("append").save(tables.USERS.location(cfg))
    gc.mark()
    began = time.perf_counter()
    counts = ingest_day(spark, cfg, START)
    return {"events": counts.read, "seconds": time.perf_counter() - began, "heap": gc.peak_after_gc_mb()}


def stored_users_table(counts: list[int], workdir: Path) -> None:
    memory = load_config().spark.driver_memory
    print("\n| stored users | driver memory | ingested | ingest s | heap after GC MB |\n|---|---|---|---|---|")
    for users in counts:
        command = [sys.executable, __file__, "--stored-users-run", str(users), "--workdir", str(workdir)]
        done = subprocess.run(command, capture_output=True, text=True)
        result = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else ""
        if result.startswith("{"):
            r = json.loads(result)
            print(f"| {users:,} | {memory} | {r['events']:,} events | {r['seconds']:.1f} | {r['heap']} |", flush=True)
        else:
            # The cause, not the last frame of its stack trace: the first line naming an error.
            named = [line for line in done.stderr.splitlines() if re.search(r"(Error|Exception)\b", line)]
            failure = (named or done.stderr.strip().splitlines() or ["no output"])[0].strip()[:160]
            print(f"| {users:,} | {memory} | failed: {failure} | | |", flush=True)


def _copy(spark: SparkSession, events: str, target: str, fmt: str) -> float:
    """Seconds to read the JSON lines as Spark's JSON source does and write them in `fmt`."""
    began = time.perf_counter()
    spark.read.json(events).write.format(fmt).mode("overwrite").save(target)
    return time.perf_counter() - began


def _floor(spark: SparkSession, cfg: Config, ds: date) -> float:
    """Seconds for the commits any conforming ingest makes, with no checks (see the docstring)."""
    began = time.perf_counter()

    def upsert(dim: Dimension) -> None:
        fields = [f for f in dim.table.schema().fields if f.name != "updated_ds"]
        rows = spark.read.schema(StructType(fields)).json(
            source_location(cfg, ds, getattr(cfg.ingest, dim.source_attr))
        )
        tables.merge(spark, rows.withColumn("updated_ds", F.lit(ds)), dim.table, cfg, unless_newer="updated_ds")

    with ThreadPoolExecutor(len(DIMENSIONS)) as pool:
        list(pool.map(upsert, DIMENSIONS))
    fields = [f for f in tables.IMPRESSIONS.schema().fields if f.name in EVENT_FIELDS]
    events = spark.read.schema(StructType(fields)).json(source_location(cfg, ds, cfg.ingest.events))
    day_rows = events.select("*", F.col("_metadata.file_path").alias(FILE), F.lit(ds).alias(tables.DS))
    tables.overwrite_partition(spark, day_rows, tables.IMPRESSIONS, cfg, ds)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", nargs="*", default=["demo", "bench"])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "osmf-bench-ingest")
    parser.add_argument("--stored-users", type=int, nargs="*", default=[])
    parser.add_argument("--stored-users-run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stored_users_run is not None:
        print(json.dumps(stored_users_run(args.stored_users_run, args.workdir)))
        return
    if args.scales:
        scale_table(args.scales, args.days, args.workdir)
    if args.stored_users:
        stored_users_table(args.stored_users, args.workdir)


def scale_table(scales: list[str], days: int, workdir: Path) -> None:
    gc = GcLog(workdir / "gc.log")
    workdir.mkdir(parents=True, exist_ok=True)
    bench_scale("tiny", 1, workdir, gc)  # JVM and Delta warm-up; not reported
    # A warm tiny day (60k events) shows the fixed cost of a night: three dimension MERGEs and
    # two partition commits that do not shrink with the day's volume.
    rows = [row for scale in ["tiny", *scales] for row in bench_scale(scale, days, workdir, gc)]

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
        "heap after GC MB",
    )
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    # Events per second compare as the inverse of the times: ingest/plain = plain s / ingest s.
    for scale, ds, events, plain, delta, floor, ingested, heap in rows:
        print(
            f"| {scale} | {ds} | {events:,} | {plain:.1f} | {delta:.1f} | {floor:.1f} | {ingested:.1f} "
            f"| {events / ingested:,.0f} | {plain / ingested:.2f}x | {delta / ingested:.2f}x | {plain / floor:.2f}x "
            f"| {heap:,} |"
        )


if __name__ == "__main__":
    main()
