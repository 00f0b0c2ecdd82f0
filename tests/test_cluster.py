"""A real Spark cluster, not only local[*]: a standalone master and one worker on this machine run
ingest_events and group_users as the nightly DAG submits them, and write the rows local mode writes."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyspark
import pytest

from osmf_lib import tables, tracking
from osmf_lib.config import PROJECT_ROOT, Config
from osmf_lib.grouping.stages import group_users
from osmf_lib.ingest.stages import ingest_events
from osmf_lib.tables import GROUP_PROFILES, IMPRESSIONS, PAAG_EMBEDDINGS, USER_GROUPS, USERS

pytestmark = pytest.mark.slow

DS = dt.date(2026, 11, 1)
PRODUCTS = ("p1", "p2")
USERS_N = 90  # per product's audience: above grouping.min_audience, two groups above min_group_size
BIN = PROJECT_ROOT / ".venv" / "bin"


@contextmanager
def standalone(work: Path, daemons, free_port) -> Iterator[str]:
    """A Spark standalone master and one worker (pyspark's own spark-class); yields the master's
    URL and stops both, failing if either outlives its stop."""
    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(home / "bin" / "spark-class")
    commands = {
        "master": [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
        ],
        "worker": [
            spark_class,
            "org.apache.spark.deploy.worker.Worker",
            url,
            "--cores",
            "2",
            "--memory",
            "3g",
            "--work-dir",
            str(work / "worker"),
            "--webui-port",
            str(free_port()),
        ],
    }
    with daemons(commands, env, work):
        deadline = time.monotonic() + 120
        while _alive_workers(ui) < 1:
            assert time.monotonic() < deadline, (work / "worker.log").read_text()[-3000:]
            time.sleep(1)
        yield url


def _alive_workers(ui: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5) as answer:
            return json.load(answer).get("aliveworkers", 0)
    # ValueError: just after it binds, the UI answers every path with its HTML page, /json/ too.
    except (OSError, ValueError):
        return 0


def _ship(landing: Path) -> None:
    """One day of a small log: every user sees both products; women click p1, men p2."""
    day = landing / DS.isoformat()
    (day / "events").mkdir(parents=True)
    (day / "dims").mkdir()
    rng = np.random.default_rng(5)
    users = [
        {
            "user_id": f"u{i:03d}",
            "age_band": "25-34",
            "gender": "female" if i % 2 else "male",
            "city_tier": "tier-1",
            "purchase_power": "medium",
            "occupation": "engineer",
            "device": "ios",
            "interests": ["home"],
        }
        for i in range(USERS_N)
    ]
    events = [
        {
            "event_id": f"e{n}",
            "ts": f"{DS}T{n % 24:02d}:00:00Z",
            "user_id": user["user_id"],
            "product_id": product,
            "creative_id": f"{product}-c1",
            "position": 1,
            "clicked": bool(rng.random() < (0.3 if (product == "p1") == (user["gender"] == "female") else 0.05)),
        }
        for n, (user, product) in enumerate((u, p) for u in users for p in PRODUCTS for _ in range(3))
    ]
    products = [{"product_id": p, "title": f"Lamp {p}", "category": "home"} for p in PRODUCTS]
    creatives = [{"creative_id": f"{p}-c1", "product_id": p, "prompt": "on an oak desk"} for p in PRODUCTS]
    files = {
        "events/part-00000.jsonl": events,
        "dims/users.jsonl": users,
        "dims/products.jsonl": products,
        "dims/creatives.jsonl": creatives,
    }
    for name, lines in files.items():
        (day / name).write_text("".join(json.dumps(line) + "\n" for line in lines))


def _embeddings(spark, cfg: Config) -> None:
    """PAAG embeddings in two clear clusters per product, as build_paag_embeddings would leave them."""
    rng = np.random.default_rng(9)
    rows = [
        (product, f"u{i:03d}", [float(x) for x in rng.normal(3.0 if i % 2 else -3.0, 0.5, 8)], "osmf-paag/1", DS)
        for product in PRODUCTS
        for i in range(USERS_N)
    ]
    frame = spark.createDataFrame(rows, PAAG_EMBEDDINGS.schema())
    tables.overwrite_partition(spark, frame, PAAG_EMBEDDINGS, cfg, DS)


def _rows(spark, cfg: Config, table: tables.Table) -> list[dict]:
    return sorted((row.asDict(recursive=True) for row in tables.read(spark, table, cfg).collect()), key=str)


def test_a_standalone_cluster_runs_the_dags_spark_tasks_with_local_modes_rows(
    tmp_path, make_cfg, spark, run_stage, daemons, free_port
):
    landing = tmp_path / "landing"
    _ship(landing)
    local, cluster = (make_cfg(f"lakehouse.landing={landing}", root=tmp_path / name) for name in ("local", "cluster"))
    tracking.configure(local)
    run_stage(ingest_events, local, DS)
    for cfg in (local, cluster):
        _embeddings(spark, cfg)
    run_stage(group_users, local, DS)

    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "OSMF_LAKEHOUSE__ROOT": cluster.lakehouse.root,
        "OSMF_LAKEHOUSE__LANDING": cluster.lakehouse.landing,
        "OSMF_MLFLOW__TRACKING_URI": cluster.mlflow.tracking_uri,
        "OSMF_MLFLOW__ARTIFACT_ROOT": cluster.mlflow.artifact_root,
        "OSMF_SPARK__SHOW_PROGRESS": "false",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    airflow = str(BIN / "airflow") if BIN.exists() else "airflow"
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    with standalone(tmp_path, daemons, free_port) as master:
        env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({"conn_type": "spark", "host": master})
        for task in ("ingest_events", "group_users"):
            command = [airflow, "tasks", "test", "osmf_nightly", task, DS.isoformat()]
            run = subprocess.run(command, env=env, capture_output=True, text=True)
            log = run.stdout + run.stderr
            assert run.returncode == 0, log[-4000:]
            assert f"--master {master}" in log, log[-4000:]
    # Each task was an application on the cluster whose executor ran on the worker.
    assert len(list((tmp_path / "worker").glob("app-*"))) == 2
    for table in (IMPRESSIONS, USERS, USER_GROUPS, GROUP_PROFILES):
        assert _rows(spark, cluster, table) == _rows(spark, local, table), table.name
    assert len({row["group_id"] for row in _rows(spark, local, USER_GROUPS)}) == 2
