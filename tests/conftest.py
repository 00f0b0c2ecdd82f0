"""Shared fixtures: one Spark session for the whole run, and Configs pointing at temp folders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from osmf_lib.config import PROJECT_ROOT, Config, load_config

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


@pytest.fixture(scope="session")
def spark(make_cfg: Callable[..., Config]):
    from osmf_lib.spark import get_spark

    session = get_spark(make_cfg(), app_name="osmf-tests")
    yield session
    session.stop()
