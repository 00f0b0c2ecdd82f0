"""Shared fixtures: one Spark session for the whole run, Configs pointing at temp folders, a local
S3 server, long-running daemons (a Spark master, an Airflow scheduler) for a test's length, and a
clean Python to load registered models in, as a consumer without this checkout would."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from osmf_lib.config import PROJECT_ROOT, Config, load_config
from osmf_lib.job import StageResult
from osmf_lib.pairs.stages import build_preference_pairs

# Tiny models and Spark share two cores in CI; oversubscribed BLAS threads slow both down.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Airflow reads its home when first imported; keep it in the checkout, never in ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", str(PROJECT_ROOT / "var" / "airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# Airflow gives a DAG file 30 s to import; two busy cores can take longer, and an import
# timeout is not what the DAG tests are about.
os.environ.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "300")
# py4j says goodbye at interpreter exit, after pytest closed the streams it would log to.
logging.getLogger("py4j").setLevel(logging.WARNING)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The end-to-end DAG runs are a third of the suite's time and mostly one core busy at a time:
    # started first, they overlap the rest of the suite on the other worker.
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(scope="session")
def make_cfg(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Config]:
    """Build a Config over a fresh lakehouse folder; extra `key=value` overrides layer on top.

    MLflow shares one store per test session: creating a SQLite store runs migrations (seconds).
    """
    mlflow_dir = tmp_path_factory.mktemp("mlflow")

    def build(*overrides: str, root: Path | None = None) -> Config:
        root = root or tmp_path_factory.mktemp("lakehouse")
        return load_config(
            overrides=[
                f"lakehouse.root={root}",
                f"lakehouse.landing={root}/landing",
                f"models.dir={root}/models",
                "spark.master=local[2]",
                "spark.shuffle_partitions=2",
                "spark.show_progress=false",
                f"mlflow.tracking_uri=sqlite:///{mlflow_dir}/mlflow.db",
                f"mlflow.artifact_root={mlflow_dir}/artifacts",
                *overrides,
            ],
            environ={},
        )

    return build


@pytest.fixture
def cfg(make_cfg: Callable[..., Config]) -> Config:
    return make_cfg()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Gives a port on 127.0.0.1 that nothing listens on yet."""
    return _free_port


@contextlib.contextmanager
def _daemons(commands: dict[str, list[str]], env: dict[str, str], logs: Path) -> Iterator[None]:
    """Each named command in a process group of its own, logging to logs/<name>.log. On the way out
    every group gets SIGTERM, so whatever a daemon started stops with it; one still running a
    minute later is killed, and the test fails naming it."""
    started: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            with (logs / f"{name}.log").open("w") as log:
                started[name] = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
        yield
    finally:
        for process in started.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        stuck = []
        for name, process in started.items():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stuck.append(name)
        assert not stuck, f"still running a minute after SIGTERM: {stuck} (logs in {logs})"


@pytest.fixture(scope="session")
def daemons() -> Callable[[dict[str, list[str]], dict[str, str], Path], contextlib.AbstractContextManager[None]]:
    """Runs long-lived processes (a Spark master, an Airflow scheduler) for the length of a with-block."""
    return _daemons


@pytest.fixture(scope="session")
def object_store() -> Iterator[str]:
    """An S3 bucket on a local S3 server (moto's), as s3a:// like the compose deployment's MinIO:
    the files the stages share outside the lakehouse go through `osmf_lib.artifacts` to either."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "osmf-test",
        "AWS_SECRET_ACCESS_KEY": "osmf-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as env:
        for key, value in settings.items():
            env.setenv(key, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket="osmf-test")
        yield "s3a://osmf-test"
    server.stop()


@pytest.fixture(scope="session")
def spark(make_cfg: Callable[..., Config]):
    from osmf_lib.spark import get_spark

    session = get_spark(make_cfg(), app_name="osmf-tests")
    yield session
    session.stop()


@pytest.fixture
def failing_writes(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """`failing_writes(table, message)`: from now on, every partition overwrite of `table` raises
    RuntimeError(message), as a lost executor or a dead driver would; other tables write as
    usual. `monkeypatch.undo()` mends it."""
    from osmf_lib import tables

    write = tables.overwrite_partition

    def arm(table: tables.Table, message: str) -> None:
        def overwrite_partition(spark, df, target, *args, **kwargs):
            if target is table:
                raise RuntimeError(message)
            return write(spark, df, target, *args, **kwargs)

        monkeypatch.setattr(tables, "overwrite_partition", overwrite_partition)

    return arm


# A clean Python: the checkout is neither on sys.path (the virtualenv inside it stays) nor reachable
# through the editable install's import hook, and every installed package that neither the model's
# requirements.txt nor their dependencies name cannot be imported, as if it were not installed.
CLEAN_PYTHON = """
import json, sys
from importlib.machinery import PathFinder
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

checkout, model, rows, out = sys.argv[1:]
sys.path[:] = [p for p in sys.path if not p.startswith(checkout) or p.startswith(sys.prefix)]
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]


def with_dependencies(names):
    todo, seen = list(names), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = [Requirement(r) for r in requires(name) or []]
        except PackageNotFoundError:
            continue
        todo += [r.name for r in needs if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


allowed = with_dependencies(line.split("==")[0] for line in (Path(model) / "requirements.txt").read_text().split())
absent = {
    top for top, dists in packages_distributions().items() if not {canonicalize_name(d) for d in dists} & allowed
} - {"osmf_lib"}


class RequirementsOnly(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in absent else super().find_spec(name, path, target)


sys.meta_path[:] = [RequirementsOnly if finder is PathFinder else finder for finder in sys.meta_path]
import importlib.util
assert importlib.util.find_spec("osmf_lib") is None, "osmf_lib is importable before loading the model"
assert {"pyspark", "airflow"} <= absent

import mlflow
import numpy as np
import pandas as pd

mlflow.pyfunc.load_model(model).predict(pd.read_pickle(rows)).to_pickle(out)
print(json.dumps([m.__file__ for name, m in sys.modules.items() if name.split(".")[0] == "osmf_lib"]))
"""


@pytest.fixture(scope="session")
def predict_in_clean_python() -> Callable[[Path, pd.DataFrame, Path], tuple[pd.DataFrame, list[str]]]:
    """(downloaded pyfunc folder, rows, work folder) -> its predictions and the osmf_lib files it imported."""

    def predict(model: Path, rows: pd.DataFrame, work: Path) -> tuple[pd.DataFrame, list[str]]:
        rows.to_pickle(work / "rows.pkl")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        args = [str(PROJECT_ROOT), str(model), str(work / "rows.pkl"), str(work / "out.pkl")]
        done = subprocess.run(
            [sys.executable, "-c", CLEAN_PYTHON, *args], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return pd.read_pickle(work / "out.pkl"), json.loads(done.stdout.strip().splitlines()[-1])

    return predict


# --- a lakehouse whose groups want opposite backgrounds (GRM and G-MLLM stages) ---

DS = dt.date(2026, 11, 3)
VERSION = "osmf-paag/1"
PRODUCTS_N = 12
MEMBERS = 20
SHOWN = 25
# Per group, a click rate per prompt: the groups rank the four backgrounds in opposite orders.
PROMPTS = (
    "a sunlit beach scene, warm tones",
    "a rustic kitchen scene, cool tones",
    "a forest, soft light",
    "a city at night",
)
RATES = {0: (0.12, 0.04, 0.08, 0.06), 1: (0.04, 0.12, 0.06, 0.08)}
SETTINGS = (
    "pairs.min_impressions=100",
    "pairs.ratio_max=1000",
    "pairs.validation_fraction=0.25",
    "pairs.test_fraction=0.25",
    "grm.epochs=20",
    "grm.batch_size=16",
    "gpu.device=cpu",
)


def _world() -> dict[str, pd.DataFrame]:
    from osmf_lib.tables import SINGLE_VALUED_ATTRIBUTES

    users, members, impressions = [], [], []
    for group, gender in ((0, "female"), (1, "male")):
        for i in range(MEMBERS):
            uid = f"u{group}{i:02d}"
            users.append({"user_id": uid, **{a: "x" for a in SINGLE_VALUED_ATTRIBUTES}, "gender": gender})
            users[-1]["interests"] = [[], ["home"], ["home", "books"], None][i % 4]
    product_ids = [f"p{i:02d}" for i in range(PRODUCTS_N)]
    creatives = []
    for pid, (k, prompt) in itertools.product(product_ids, enumerate(PROMPTS)):
        creatives.append((f"{pid}-c{k}", pid, prompt))
    for pid, group in itertools.product(product_ids, (0, 1)):
        for user in (u for u in users if u["user_id"].startswith(f"u{group}")):
            members.append((pid, user["user_id"], group))
            for k, rate in enumerate(RATES[group]):
                clicks = round(rate * SHOWN)
                impressions += [(pid, user["user_id"], f"{pid}-c{k}", n < clicks) for n in range(SHOWN)]
    frame = pd.DataFrame(impressions, columns=["product_id", "user_id", "creative_id", "clicked"])
    frame = frame.assign(
        event_id=[f"e{i}" for i in range(len(frame))], ts=pd.Timestamp(DS), position=1, source_file="t", ds=DS
    )
    groups = pd.DataFrame(members, columns=["product_id", "user_id", "group_id"])
    groups = groups.assign(distance=0.0, paag_version=VERSION, ds=DS)
    sizes = groups.groupby(["product_id", "group_id"]).size().rename("size").reset_index()
    profiles = sizes.assign(
        k=2,
        silhouette=None,
        centroid=[[0.0]] * len(sizes),
        anchors=None,
        attribute_summary=None,
        description="a group",
        paag_version=VERSION,
        ds=DS,
    )
    return {
        "impressions": frame,
        "user_groups": groups,
        "group_profiles": profiles,
        "users": pd.DataFrame(users).assign(updated_ds=DS),
        "products": pd.DataFrame(
            {"product_id": product_ids, "title": [f"Mug {p}" for p in product_ids], "category": "home"}
        ).assign(price_band=None, image_uri=None, updated_ds=DS),
        "creatives": pd.DataFrame(creatives, columns=["creative_id", "product_id", "prompt"]).assign(
            image_uri=None, origin="logged", updated_ds=DS
        ),
    }


@pytest.fixture(scope="session")
def make_group_lakehouse(spark, make_cfg, tmp_path_factory) -> Callable[..., Config]:
    """A lakehouse of one night (DS) whose two groups per product rank four backgrounds in
    opposite orders, with its preference pairs built; its own MLflow store per call."""

    def make(name: str, *settings: str) -> Config:
        return _group_lakehouse(spark, make_cfg, tmp_path_factory.mktemp(f"{name}-mlflow"), settings)

    return make


def _group_lakehouse(spark, make_cfg, store: Path, settings: tuple[str, ...]) -> Config:
    # Imported here, not at the top: they import torch, which must first see OMP_NUM_THREADS
    # (set above), or its thread pool makes same-seed trainings differ in the last bits.
    from osmf_lib import tables, tracking
    from osmf_lib.tables import CREATIVES, GROUP_PROFILES, IMPRESSIONS, PRODUCTS, USER_GROUPS, USERS

    cfg = make_cfg(
        *SETTINGS, *settings, f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"mlflow.artifact_root={store}/a"
    )
    world = _world()
    for table in (IMPRESSIONS, USER_GROUPS, GROUP_PROFILES):
        frame = spark.createDataFrame(world[table.name][table.column_names], table.schema())
        tables.overwrite_partition(spark, frame, table, cfg, DS)
    for table in (USERS, PRODUCTS, CREATIVES):
        tables.merge(
            spark, spark.createDataFrame(world[table.name][table.column_names], table.schema()), table, cfg, ds=DS
        )
    tracking.configure(cfg)
    _run_stage(build_preference_pairs, cfg)
    return cfg


@pytest.fixture(scope="session")
def recorded_result() -> Callable[[Config, str, dt.date], StageResult]:
    """The StageResult a job recorded on its latest MLflow run of `stage` for `ds`."""
    return _recorded_result


def _recorded_result(cfg: Config, stage: str, ds: dt.date) -> StageResult:
    from mlflow import MlflowClient

    from osmf_lib.tracking import TAG_DS, TAG_STAGE

    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    query = f"tags.`{TAG_STAGE}` = '{stage}' AND tags.`{TAG_DS}` = '{ds.isoformat()}'"
    (latest, *_) = client.search_runs([experiment.experiment_id], query, order_by=["attributes.start_time DESC"])
    return StageResult(**json.loads(latest.data.tags["osmf.result"]))


@pytest.fixture(scope="session")
def run_stage() -> Callable[..., StageResult]:
    """Run a stage function as its job does (in an MLflow run, the night DS by default); returns
    its result, recorded on the run as the job records it."""
    return _run_stage


def _run_stage(body, cfg: Config, ds: dt.date = DS) -> StageResult:
    import mlflow

    from osmf_lib.job import JobContext, record

    with mlflow.start_run():
        result = body(JobContext("stage", cfg, ds, "test"))
        record("stage", result)
    return result
