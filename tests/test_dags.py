"""DAG integrity, and one real run of the nightly DAG through Airflow and spark-submit."""

import json
import os
import subprocess
import sys
from datetime import timedelta

import mlflow
import pytest
from mlflow import MlflowClient

from osmf_lib.config import PROJECT_ROOT

DAG_FILE = PROJECT_ROOT / "dags" / "osmf_nightly.py"
EXPECTED_TASKS = {"preflight", "ingest_events"}


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("osmf_nightly")


def test_dag_has_the_expected_tasks(dag):
    assert set(dag.task_ids) == EXPECTED_TASKS


def test_dag_level_settings(dag):
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.start_date.isoformat() == "2026-11-01T00:00:00+00:00"
    assert dag.doc_md and "preflight" in dag.doc_md


def test_every_task_retries_and_times_out(dag):
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.execution_timeout is not None and task.execution_timeout <= timedelta(hours=6), task.task_id


def test_spark_tasks_get_ds_and_run_id_and_delta(dag):
    for task in dag.tasks:
        assert task.application.startswith(str(PROJECT_ROOT / "jobs"))
        assert task.application_args == ["--ds", "{{ ds }}", "--dag-run-id", "{{ run_id }}"]
        assert "delta-spark" in task.jars
        assert task.conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"


def test_stages_run_in_order_and_declare_the_tables_they_write(dag):
    assert dag.get_task("ingest_events").upstream_task_ids == {"preflight"}
    outlets = {a.name for a in dag.get_task("ingest_events").outlets}
    assert outlets == {f"osmf.{t}" for t in ("impressions", "rejected_events", "users", "products", "creatives")}


def test_dag_file_imports_nothing_heavy():
    heavy = ["pyspark", "torch", "mlflow", "transformers", "diffusers", "trl", "delta"]
    probe = (
        "import runpy, sys, json; runpy.run_path(sys.argv[1]); "
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(DAG_FILE)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.e2e
def test_nightly_dag_runs_end_to_end(tmp_path, make_cfg):
    """`airflow dags test` on a fresh SQLite home: the same path `make demo` takes."""
    cfg = make_cfg(root=tmp_path / "lakehouse")
    airflow = str(PROJECT_ROOT / ".venv" / "bin" / "airflow") if (PROJECT_ROOT / ".venv").exists() else "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "OSMF_LAKEHOUSE__ROOT": cfg.lakehouse.root,
        "OSMF_MLFLOW__TRACKING_URI": cfg.mlflow.tracking_uri,
        "OSMF_MLFLOW__ARTIFACT_ROOT": cfg.mlflow.artifact_root,
        "OSMF_SPARK__SHOW_PROGRESS": "false",
        "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    run = subprocess.run(
        [airflow, "dags", "test", "osmf_nightly", "2026-11-01"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "preflight ok  spark + delta" in run.stdout + run.stderr

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    stages = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
        filter_string="tags.`osmf.stage` = 'preflight' and tags.`osmf.ds` = '2026-11-01'",
    )
    assert stages, cfg.mlflow.tracking_uri
    assert any(
        r.data.tags["osmf.dag_run_id"].startswith("manual__") and "mlflow.parentRunId" in r.data.tags for r in stages
    )
