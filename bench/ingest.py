"""Benchmark: `ingest_events` against a plain Spark read-JSON-write-Parquet of the same files.

    .venv/bin/python bench/ingest.py                       # tiny (fixed cost), demo and bench scale, one day each
    .venv/bin/python bench/ingest.py --scales demo --days 2

Both sides run in the same Spark session on the same landing files, after a tiny warm-up, so
the ratio says what validation, deduplication, reconciliation and the Delta commits cost over
the cheapest possible copy. Target: ingest at >= 0.5x the plain write's events per second.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from osmf_lib import ingest
from osmf_lib.config import load_config
from osmf_lib.spark import get_spark
from osmf_lib.synth import write_landing

START = date(2026, 11, 1)


def bench_scale(scale: str, days: int, workdir: Path) -> list[tuple]:
    root = workdir / scale
    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(
        overrides=[f"lakehouse.root={root}/lakehouse", f"lakehouse.landing={root}/landing", "spark.show_progress=false"]
    )
    print(f"[{scale}] writing {days} day(s) of landing files ...", flush=True)
    write_landing(cfg, scale=scale, start=START, days=days)
    spark = get_spark(cfg, app_name="osmf-bench-ingest")
    rows = []
    for offset in range(days):
        ds = START + timedelta(days=offset)
        events = f"{cfg.lakehouse.landing}/{ds.isoformat()}/events"
        began = time.perf_counter()
        spark.read.json(events).write.mode("overwrite").parquet(f"{root}/plain/{ds}")
        plain = time.perf_counter() - began
        began = time.perf_counter()
        counts = ingest.ingest_day(spark, cfg, ds)
        ingested = time.perf_counter() - began
        rows.append((scale, ds.isoformat(), counts.read, plain, counts.read / plain, ingested, counts.read / ingested))
        print(f"[{scale}] {ds}: plain {plain:.1f}s, ingest {ingested:.1f}s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", nargs="+", default=["demo", "bench"])
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "osmf-bench-ingest")
    args = parser.parse_args()

    bench_scale("tiny", 1, args.workdir)  # JVM and Delta warm-up; not reported
    # A warm tiny day (60k events) shows the fixed cost of a night: three dimension MERGEs and
    # two partition commits that do not shrink with the day's volume.
    scales = ["tiny", *args.scales]
    rows = [row for scale in scales for row in bench_scale(scale, args.days, args.workdir)]

    header = ("scale", "ds", "events", "plain s", "plain ev/s", "ingest s", "ingest ev/s", "ingest/plain")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for scale, ds, events, plain, plain_rate, ingested, rate in rows:
        print(
            f"| {scale} | {ds} | {events:,} | {plain:.1f} | {plain_rate:,.0f} | {ingested:.1f} | {rate:,.0f} "
            f"| {rate / plain_rate:.2f}x |"
        )


if __name__ == "__main__":
    main()
