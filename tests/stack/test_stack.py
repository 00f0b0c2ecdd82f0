"""`make test-stack`: the compose deployment's profile against real services, without Docker.

PostgreSQL, an S3 server in MinIO's place, the MLflow server with basic auth, a Spark standalone
master and worker, and Airflow's scheduler, DAG processor and API server run as processes on this
machine, configured as docker-compose.yml configures them. The simulator lands one tiny day in the
landing bucket, the nightly DAG runs it through the scheduler under OSMF_CONFIG=conf/profiles/compose.yaml
(overridden: the endpoints, the jars' and models' folders, the tiny night's sizes), and what it
wrote is checked where the deployment keeps it. Left out of `make test` (marker `stack`): it takes
about as long as the whole suite."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import mlflow
import pytest
import requests
from cryptography.fernet import Fernet
from mlflow import MlflowClient
from services import BIN, LOCAL, PIPELINE_USER, Mlflow, answers, mlflow_server, postgres, s3, wait_for
from test_cluster import standalone
from test_dags import NIGHT, TINY_NIGHT, Night, _succeeded, _task_logs, _the_night_is_whole, scheduler

from osmf_lib import artifacts, tables
from osmf_lib.config import PROJECT_ROOT, Config, load_config
from osmf_lib.publish.report import report_uri

pytestmark = pytest.mark.stack

DAG = "osmf_nightly"


@dataclass(frozen=True)
class Stack:
    # Airflow's home as its services run it; its env is the deployment's, as every task has it.
    airflow: Night
    # Airflow's API server (its root URL) and the password of its user admin.
    api: str
    api_password: str
    cfg: Config
    mlflow: Mlflow
    s3: str
    logs: Path


def _bucket(location: str) -> str:
    return location.split("/")[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, daemons, free_port) -> Iterator[Stack]:
    """Every service up, in the order compose starts them; all of them stopped on the way out."""
    logs = tmp_path_factory.mktemp("stack")
    # The deployment's environment (docker-compose.yml's x-pipeline-env and x-airflow-env), set in
    # this process, so that the services, the tasks they start and the checks here read one.
    with pytest.MonkeyPatch.context() as env, contextlib.ExitStack() as running:
        deployment = {
            "OSMF_CONFIG": "conf/profiles/compose.yaml",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "osmf-pipeline",
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
            # docker/Dockerfile resolves this profile's jars (Delta and S3A) into the image's .jars;
            # the checkout's .jars holds the embedded default's.
            "OSMF_SPARK__JARS_DIR": str(PROJECT_ROOT / ".jars-s3a"),
            # What the deployment keeps on its osmf-files volume: here not in the checkout's var/.
            "OSMF_MODELS__DIR": str(logs / "models"),
            # The stack is this machine's alone: every Spark process listens on it only.
            "SPARK_LOCAL_IP": LOCAL,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            # The tiny night's sizes, but the generator pre-trained as configured: after one epoch
            # it wrote no description fit to render (504 of 504 refused), so no image reached S3.
            **{name: value for name, value in TINY_NIGHT.items() if name != "OSMF_GMLLM__EPOCHS"},
        }
        for name, value in deployment.items():
            env.setenv(name, value)
        jars = subprocess.run([str(BIN / "osmf"), "spark", "resolve-jars"], capture_output=True, text=True)
        assert jars.returncode == 0, jars.stdout[-3000:] + jars.stderr[-3000:]

        cfg = load_config()
        buckets = {_bucket(cfg.lakehouse.root), _bucket(cfg.lakehouse.landing), _bucket(cfg.render.artifacts), "mlflow"}
        endpoint = running.enter_context(s3(logs, daemons, free_port(), buckets))
        env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        env.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
        s3a = {"endpoint": endpoint, "endpoint.region": "us-east-1", "path.style.access": "true"}
        env.setenv("SPARK_SUBMIT_OPTS", " ".join(f"-Dspark.hadoop.fs.s3a.{k}={v}" for k, v in s3a.items()))

        database = running.enter_context(postgres(logs, daemons, free_port()))
        tracking = running.enter_context(mlflow_server(logs, daemons, free_port(), database))
        env.setenv("OSMF_MLFLOW__TRACKING_URI", tracking.url)
        env.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE_USER)
        env.setenv("MLFLOW_TRACKING_PASSWORD", tracking.passwords[PIPELINE_USER])

        master = running.enter_context(standalone(logs, daemons, free_port))
        env.setenv("OSMF_SPARK__MASTER", master)
        env.setenv("AIRFLOW_CONN_SPARK_DEFAULT", master)

        home = logs / "airflow"
        home.mkdir()
        api_password = secrets.token_hex(16)
        (home / "passwords.json").write_text(json.dumps({"admin": api_password}))
        airflow = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database("airflow"),
        }
        for name, value in airflow.items():
            env.setenv(name, value)
        night = Night(load_config(), dict(os.environ), str(BIN / "airflow"))
        # What compose's airflow-init does.
        night.airflow_cli("db", "migrate")
        night.airflow_cli("pools", "set", "gpu", "1", "GPU slots")
        served = running.enter_context(scheduler(night, logs, daemons, free_port))
        api = served.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].removesuffix("/execution/")
        wait_for("Airflow's API server", lambda: answers(f"{api}/api/v2/monitor/health"), logs / "api-server.log")
        yield Stack(served, api, api_password, night.cfg, tracking, endpoint, logs)


def _airflow_token(stack: Stack) -> dict[str, str]:
    issued = requests.post(
        f"{stack.api}/auth/token", json={"username": "admin", "password": stack.api_password}, timeout=120
    )
    assert issued.ok, issued.text
    return {"Authorization": f"Bearer {issued.json()['access_token']}"}


@pytest.fixture(scope="module")
def night(stack: Stack) -> Night:
    """One tiny day landed by the simulator, then its night triggered through Airflow's API as an
    operator's client would, and run by the scheduler; the night with what its tasks logged."""
    # compose's synth service: the landing writer's own S3 user, and no MLflow identity.
    shipper = {k: v for k, v in stack.airflow.env.items() if not k.startswith("MLFLOW_TRACKING_")}
    synth = [str(BIN / "osmf"), "synth", "--scale", "tiny", "--start", NIGHT.isoformat(), "--days", "1"]
    landed = subprocess.run(synth, env={**shipper, "AWS_ACCESS_KEY_ID": "osmf-shipper"}, capture_output=True, text=True)
    assert landed.returncode == 0, landed.stdout[-3000:] + landed.stderr[-3000:]

    token = _airflow_token(stack)
    dag = f"{stack.api}/api/v2/dags/{DAG}"
    # The DAG processor stores the DAG after its first parse; until then the API does not know it.
    wait_for("the DAG", lambda: requests.get(dag, headers=token, timeout=60).ok, stack.logs / "dag-processor.log", 10)
    # The scheduler starts runs only while the DAG is unpaused.
    unpaused = requests.patch(dag, json={"is_paused": False}, headers=token, timeout=60)
    assert unpaused.ok, unpaused.text
    logical_date = f"{NIGHT.isoformat()}T00:00:00+00:00"
    triggered = requests.post(f"{dag}/dagRuns", json={"logical_date": logical_date}, headers=token, timeout=60)
    assert triggered.ok, triggered.text
    # Far more than the idle night (docs/development.md#what-the-tests-cost): a busy 2-core machine
    # has taken twice as long and more.
    run = _succeeded(stack.airflow, NIGHT, stack.logs, minutes=120)
    return _task_logs(stack.airflow, run["run_id"])


@pytest.fixture(scope="module")
def lakehouse(stack: Stack):
    """A Spark session of the deployment's Config, on the stack's cluster, reading the lakehouse on S3."""
    from osmf_lib.spark import get_spark

    session = get_spark(stack.cfg, app_name="osmf-stack-checks")
    yield session
    session.stop()


def test_mlflow_answers_only_its_users(stack: Stack):
    search = f"{stack.mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1"
    pipeline = (PIPELINE_USER, stack.mlflow.passwords[PIPELINE_USER])
    assert requests.get(search, timeout=60).status_code == 401
    assert requests.get(search, auth=(PIPELINE_USER, "not-its-password"), timeout=60).status_code == 401
    assert requests.get(search, auth=pipeline, timeout=60).status_code == 200
    # The pipeline owns what it creates, and administers nobody.
    create = f"{stack.mlflow.url}/api/2.0/mlflow/users/create"
    refused = requests.post(create, json={"username": "intruder", "password": "x" * 16}, auth=pipeline, timeout=60)
    assert refused.status_code == 403


def test_airflow_answers_only_with_a_token(stack: Stack):
    assert requests.get(f"{stack.api}/api/v2/dags", timeout=60).status_code == 401
    assert requests.get(f"{stack.api}/api/v2/dags", headers=_airflow_token(stack), timeout=60).ok


def test_the_scheduler_runs_the_night_on_the_stack(night: Night, lakehouse, stack: Stack):
    # A retry hides a failure the run must not have (tests/test_dags.py has the story).
    assert not night.retried, f"tasks that failed a first try: {night.retried}; logs under {stack.logs}"
    assert f"--master {stack.cfg.spark.master}" in night.log
    assert "preflight ok  spark + delta" in night.log
    assert "ingest events 2026-11-01: read 60000 = accepted 60000" in night.log
    assert "evaluate_and_publish: serving_creatives v" in night.log
    # The embedded night's checks, here on the lakehouse on S3 and the MLflow server, the models'
    # champions looked up as the pipeline (MLFLOW_TRACKING_USERNAME).
    _the_night_is_whole(lakehouse, stack.cfg, NIGHT)


def _keys(stack: Stack, location: str) -> list[str]:
    bucket, _, prefix = location.removeprefix("s3a://").removeprefix("s3://").partition("/")
    pages = (
        boto3.client("s3", endpoint_url=stack.s3)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_the_night_left_its_tables_creatives_and_models_in_the_buckets(night: Night, lakehouse, stack: Stack, tmp_path):
    cfg = stack.cfg
    for table in tables.TABLES.values():
        if tables.exists(lakehouse, table, cfg):
            assert table.location(cfg).startswith(cfg.lakehouse.root + "/"), table.name
            assert any("/_delta_log/" in key for key in _keys(stack, table.location(cfg))), table.name
    assert artifacts.exists(report_uri(cfg, NIGHT))
    renders = [row["image_uri"] for row in tables.read(lakehouse, tables.GENERATED_CREATIVES, cfg, ds=NIGHT).collect()]
    assert renders and all(uri.startswith(f"{cfg.render.artifacts}/{NIGHT}/") for uri in renders), renders[:5]
    assert all(artifacts.exists(uri) for uri in renders)

    # The models' files went through the server (--serve-artifacts) into the mlflow bucket, and a
    # consumer with only the server's default READ, the serving endpoint's user, loads the champion.
    experiment = MlflowClient(stack.mlflow.url).get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment.artifact_location == f"mlflow-artifacts:/{experiment.experiment_id}"
    stored = _keys(stack, f"s3://mlflow/{experiment.experiment_id}/")
    assert any(key.endswith("/MLmodel") for key in stored), stored[:20]
    # Configured as compose's serving service is: the registry's `models:/` lookup reads only these.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", stack.mlflow.url)
        env.setenv("MLFLOW_TRACKING_USERNAME", "osmf-serving")
        env.setenv("MLFLOW_TRACKING_PASSWORD", stack.mlflow.passwords["osmf-serving"])
        model = mlflow.artifacts.download_artifacts("models:/osmf-serving@champion", dst_path=str(tmp_path))
    assert (Path(model) / "MLmodel").exists()
