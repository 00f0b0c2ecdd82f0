"""Benchmark: what a night costs before it reads a row, against the demo targets.

    .venv/bin/python bench/night.py                  # best of 3; the tiny renderer built once
    .venv/bin/python bench/night.py --repeats 1 --demo-days 3

Every task of the nightly DAG is a process of its own: spark-submit starts a JVM with the Delta
jars, Python imports the stage's libraries, the job opens a Spark session and an MLflow run, and
only then does the stage read its first row. `preflight` does nothing else (its Delta probe
writes and reads two rows); here it runs the way the DAG submits it, with the same session
settings and jars, on a fresh lakehouse. The torch stages start the same way and also import
torch, transformers, diffusers and trl. `generate_creatives` first builds the tiny renderer
(trained on the landing's painted backgrounds: the same work at every world scale).

The sum over the DAG's tasks, plus the ingests `make demo` runs besides the night (the earlier
days and the closed loop's next day), is the least a demo can take on this machine whatever the
world's size: the floor under `make demo DEMO_SCALE=tiny`. Setup (a virtualenv from the lock,
the jars, an Airflow home) comes on top.

The baseline, in the same run: each process again with an empty bytecode cache it may not write
to (PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE), as every process ran before `make setup`
compiled the environment once: what that compilation saves a night.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pyspark

from osmf_lib.config import PROJECT_ROOT, load_config
from osmf_lib.render.tiny import build_tiny_renderer, library_of
from osmf_lib.synth import write_landing

DS = date(2026, 11, 1)
TARGETS_MIN = {"make demo": 20, "make demo DEMO_SCALE=tiny": 6}


def best_of(repeats: int, command: list[str], env: dict[str, str]) -> float:
    """The fastest of `repeats` runs of `command`, in seconds; a failed run stops the bench."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - began)
        if done.returncode != 0:
            sys.exit(f"{' '.join(command[:3])} ... failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return min(times)


def nightly_dag():
    """dags/osmf_nightly.py as Airflow parses it: its DAG and the spark-submit settings it uses."""
    os.environ.setdefault("AIRFLOW_HOME", str(PROJECT_ROOT / "var" / "airflow"))
    spec = importlib.util.spec_from_file_location("osmf_nightly", PROJECT_ROOT / "dags" / "osmf_nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_processes(nightly) -> tuple[int, int]:
    """(Spark tasks, torch task processes) in one night of the DAG."""
    tasks = nightly.dag.tasks
    spark = sum(task.task_type == "SparkSubmitOperator" for task in tasks)
    # generate_creatives is one process per shard.
    return spark, len(tasks) - 1 + nightly.CFG.render.shards - spark


def measure(work: Path, repeats: int, demo_days: int) -> None:
    overrides = [
        f"lakehouse.root={work}/lakehouse",
        f"lakehouse.landing={work}/landing",
        f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db",
        f"mlflow.artifact_root={work}/artifacts",
        f"models.dir={work}/models",
    ]
    cfg = load_config(overrides=overrides)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}

    nightly = nightly_dag()
    spark_submit = [str(Path(pyspark.__file__).parent / "bin" / "spark-submit"), "--master", cfg.spark.master]
    for key, value in nightly.SPARK_CONF.items():
        spark_submit += ["--conf", f"{key}={value}"]
    spark_submit += ["--jars", nightly.SPARK_JARS]
    preflight = [*spark_submit, str(nightly.JOBS / "preflight.py"), "--ds", DS.isoformat()]
    preflight += [arg for override in overrides for arg in ("--set", override)]
    processes = {
        "python": [sys.executable, "-c", "pass"],
        "spark": preflight,
        "torch imports": [sys.executable, "-c", "import torch, transformers, diffusers, trl"],
    }
    uncompiled = {**env, "PYTHONPYCACHEPREFIX": str(work / "empty-pycache"), "PYTHONDONTWRITEBYTECODE": "1"}
    print(f"[night] {repeats} runs each of: python, preflight via spark-submit, the torch imports;", flush=True)
    print("[night] each with the environment's compiled bytecode, then without it", flush=True)
    compiled = {name: best_of(repeats, command, env) for name, command in processes.items()}
    bare = {name: best_of(repeats, command, uncompiled) for name, command in processes.items()}
    print("[night] building the tiny renderer on a tiny world's backgrounds ...", flush=True)
    write_landing(cfg, scale="tiny", start=DS, days=1)
    began = time.perf_counter()
    build_tiny_renderer(library_of(cfg), cfg)
    renderer = time.perf_counter() - began

    spark_tasks, torch_tasks = task_processes(nightly)
    ingests = demo_days  # the days before the night, and the closed loop's next day
    parts = [
        ("python start", "python", 0),
        ("Spark task: spark-submit, imports, session, MLflow run", "spark", spark_tasks + ingests),
        ("torch task: the same plus torch, transformers, diffusers, trl", "torch", torch_tasks),
        ("tiny renderer build (default settings)", "renderer", 1),
    ]

    def seconds(timed: dict[str, float], part: str) -> float:
        return {**timed, "torch": timed["spark"] + timed["torch imports"], "renderer": renderer}[part]

    floor = sum(seconds(compiled, part) * count for _, part, count in parts)
    bare_floor = sum(seconds(bare, part) * count for _, part, count in parts)
    print(f"\n| part | s (best of {repeats}) | x python start | s uncompiled | saved | in a demo | s in a demo |")
    print("|---|---|---|---|---|---|---|")
    for name, part, count in parts:
        now, before = seconds(compiled, part), seconds(bare, part)
        print(
            f"| {name} | {now:.2f} | {now / compiled['python']:,.0f}x | {before:.2f} | {1 - now / before:.0%} "
            f"| {count} | {now * count:.0f} |"
        )
    print(
        f"| **floor of a demo's tasks** | | | {bare_floor:.0f} | {1 - floor / bare_floor:.0%} "
        f"| | **{floor:.0f} ({floor / 60:.1f} min)** |"
    )
    print(f"\nThe night: {spark_tasks} Spark tasks, {torch_tasks} torch tasks; make demo adds {ingests} ingests.")
    for target, minutes in TARGETS_MIN.items():
        print(f"{target}: target {minutes} min; this floor alone is {floor / 60 / minutes:.2f}x it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-days", type=int, default=3, help="make demo's DEMO_DAYS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="osmf-bench-night-") as scratch:
        measure(Path(scratch), args.repeats, args.demo_days)


if __name__ == "__main__":
    main()
