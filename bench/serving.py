"""Benchmark: osmf-serving in process and over MLflow's scoring server, against a member-only lookup.

    make demo && OSMF_CONFIG=conf/demo.yaml .venv/bin/python bench/serving.py
    .venv/bin/python bench/serving.py --ds 2026-11-03 --rows 10000 --single 1000

Reads the lakehouse and registry of a finished night (the demo's by default): the requests are
the next day's traffic of its simulated world (`synth.day_requests`: users seen by the night and
users it never saw, with their attributes), a stable sample of `--rows` of them. Every path
answers the same requests:

- baseline: a pandas lookup by (user_id, product_id) in the materialised `serving_lookup` view,
  what a member-only ad server costs (it answers members only);
- osmf-serving in process: `mlflow.pyfunc.load_model(...).predict` on all rows at once (MLflow's
  input checks included), and `ServingNight.assign` without them;
- over HTTP: `mlflow models serve --env-manager local` (one worker, OMP_NUM_THREADS=1) on a free
  local port: p50 and p99 latency of one-row requests sent one after another, and rows/s of
  1,000-row batches.

Targets (issue 30, this 2-core machine): in process >= 20,000 rows/s on 10,000 requests; p99 <= 25
ms for one row over HTTP. Timings are wall-clock, best of `--repeat` for the bulk paths.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from osmf_lib import tables, tracking
from osmf_lib.config import load_config
from osmf_lib.inputs import first_day_of, world_of
from osmf_lib.serving.registry import CHAMPION_URI, REQUEST_COLUMNS, load_serving, start_scoring_server
from osmf_lib.spark import get_spark
from osmf_lib.synth import build_world, day_requests
from osmf_lib.tables import GROUP_PROFILES, MEMBER


def requests_of(spark, cfg, night: date, rows: int) -> pd.DataFrame:
    """A stable sample of the next day's requests of the night's simulated world, as JSON has them."""
    world = world_of(spark, cfg, night)
    if world is None:
        sys.exit(f"ds={night} was not simulated: the benchmark replays the next day of a simulated world")
    asked = day_requests(build_world(*world), first_day_of(spark, cfg, world), night + timedelta(days=1))
    sample = asked.sample(n=min(rows, len(asked)), random_state=0).reset_index(drop=True)
    sample = sample.reindex(columns=list(REQUEST_COLUMNS)).astype(object)
    return sample.where(sample.notna(), None)


def best_rate(answer, rows: pd.DataFrame, repeat: int) -> tuple[float, pd.DataFrame]:
    """Rows per second of `answer(rows)` (best of `repeat`) and its last answer."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        answered = answer(rows)
        seconds.append(time.perf_counter() - started)
    return len(rows) / min(seconds), answered


def baseline(spark, cfg, rows: pd.DataFrame, repeat: int) -> tuple[float, float, float]:
    """The member-only lookup: (rows/s, share answered, seconds to materialise the view)."""
    started = time.perf_counter()
    tables.register_views(spark, cfg)
    lookup = spark.table("serving_lookup").select("user_id", "product_id", "group_id", "creative_id").toPandas()
    indexed = lookup.set_index(["user_id", "product_id"])
    materialised = time.perf_counter() - started

    def answer(requests: pd.DataFrame) -> pd.DataFrame:
        at = indexed.index.get_indexer(pd.MultiIndex.from_arrays([requests["user_id"], requests["product_id"]]))
        found = indexed.iloc[np.where(at >= 0, at, 0)].reset_index(drop=True)
        return found.where(pd.Series(at >= 0), None)

    rate, answered = best_rate(answer, rows, repeat)
    return rate, float(answered["creative_id"].notna().mean()), materialised


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, frame: pd.DataFrame) -> dict:
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def over_http(cfg, rows: pd.DataFrame, single: int, batch: int) -> dict[str, float]:
    """p50/p99 of one-row requests and rows/s of `batch`-row requests against the scoring server."""
    port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="osmf-bench-serve-")) / "serve.log"
    server = start_scoring_server(cfg.mlflow.tracking_uri, port, log, CHAMPION_URI)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while True:
            if server.poll() is not None:
                sys.exit(f"the scoring server exited; its log: {log}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        ready = time.perf_counter() - started
        for i in range(20):  # warm-up: first requests pay for lazy imports
            _post(f"{url}/invocations", rows.iloc[[i]])
        latencies = []
        for i in range(single):
            one = rows.iloc[[i % len(rows)]]
            sent = time.perf_counter()
            _post(f"{url}/invocations", one)
            latencies.append(time.perf_counter() - sent)
        chunks = [rows.iloc[i : i + batch] for i in range(0, len(rows), batch)]
        sent = time.perf_counter()
        for chunk in chunks:
            _post(f"{url}/invocations", chunk)
        batched = sum(map(len, chunks)) / (time.perf_counter() - sent)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return {"ready_s": ready, "p50_ms": float(p50), "p99_ms": float(p99), "batch_rows_per_s": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ds", type=date.fromisoformat, help="the served night (default: the newest grouped)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=1000, help="one-row HTTP requests timed")
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    cfg = load_config()
    tracking.configure(cfg)
    spark = get_spark(cfg, app_name="osmf-bench-serving")
    night = args.ds or tables.read(spark, GROUP_PROFILES, cfg).agg({"ds": "max"}).first()[0]
    rows = requests_of(spark, cfg, night, args.rows)
    base_rate, base_share, materialised = baseline(spark, cfg, rows, args.repeat)
    spark.stop()

    loaded = time.perf_counter()
    pyfunc = mlflow.pyfunc.load_model(CHAMPION_URI)
    load_seconds = time.perf_counter() - loaded
    model = load_serving(CHAMPION_URI)
    pyfunc_rate, answered = best_rate(pyfunc.predict, rows, args.repeat)
    assign_rate, _ = best_rate(model.assign, rows, args.repeat)
    members = float((answered["reason"] == MEMBER).mean())
    http = over_http(cfg, rows, args.single, args.batch)

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        f"\nosmf-serving of night {night}: {len(rows):,} requests of {night + timedelta(days=1)} "
        f"({members:.1%} members of the night's groups); OMP_NUM_THREADS={threads}\n"
    )
    table = [
        ("baseline: pandas lookup in serving_lookup", f"{base_rate:,.0f}", "1.00", f"{base_share:.1%}"),
        (
            "osmf-serving pyfunc.predict, in process",
            f"{pyfunc_rate:,.0f}",
            f"{pyfunc_rate / base_rate:.2f}",
            f"{answered['creative_id'].notna().mean():.1%}",
        ),
        ("ServingNight.assign, in process", f"{assign_rate:,.0f}", f"{assign_rate / base_rate:.2f}", ""),
        (
            f"HTTP, {args.batch:,}-row batches",
            f"{http['batch_rows_per_s']:,.0f}",
            f"{http['batch_rows_per_s'] / base_rate:.2f}",
            "",
        ),
    ]
    print(f"| {'path':<44} | {'rows/s':>10} | {'x baseline':>10} | {'answered':>8} |")
    print(f"|{'-' * 46}|{'-' * 12}:|{'-' * 12}:|{'-' * 10}:|")
    for path, rate, ratio, share in table:
        print(f"| {path:<44} | {rate:>10} | {ratio:>10} | {share:>8} |")
    print(
        f"\nHTTP one-row requests ({args.single}, one at a time): p50 {http['p50_ms']:.1f} ms, "
        f"p99 {http['p99_ms']:.1f} ms (target p99 <= 25 ms)"
    )
    print(
        f"set-up: serving_lookup materialised in {materialised:.1f} s; pyfunc loaded in {load_seconds:.1f} s; "
        f"scoring server answered /ping after {http['ready_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
