"""The parts of docker-compose.yml that have no stand-in elsewhere in the tests, as processes on
this machine: PostgreSQL (Debian's), an S3 server (moto's, in MinIO's place) and the MLflow server
with basic auth and its users. Each is a context manager that yields what the services after it need and stops
what it started on the way out, also when a step inside fails. (The Spark cluster and Airflow's
services are the ones tests/test_cluster.py and tests/test_dags.py start.)"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import psycopg2
import requests

from osmf_lib.config import PROJECT_ROOT

BIN = PROJECT_ROOT / ".venv" / "bin"
DOCKER = PROJECT_ROOT / "docker"
LOCAL = "127.0.0.1"
# docker/postgres-init.sql creates the first two; MLflow's users and permissions get their own.
DATABASES = ("airflow", "mlflow", "mlflow_auth")
PIPELINE_USER = "osmf-pipeline"

Daemons = Callable[[dict[str, list[str]], dict[str, str], Path], contextlib.AbstractContextManager[None]]


def wait_for(what: str, ready: Callable[[], bool], log: Path, minutes: float = 3) -> None:
    deadline = time.monotonic() + minutes * 60
    while not ready():
        tail = log.read_text()[-3000:] if log.exists() else "(no log)"
        assert time.monotonic() < deadline, f"{what} is not up after {minutes} minutes; {log} ends:\n{tail}"
        time.sleep(1)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code < 500
    except requests.ConnectionError:
        return False


def postgres_programs() -> Path:
    """The folder with PostgreSQL's initdb and postgres: on PATH, else the newest Debian installed."""
    on_path = shutil.which("initdb")
    folders = [Path(on_path).resolve().parent] if on_path else []
    folders += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda f: int(f.parent.name), reverse=True)
    for folder in folders:
        if (folder / "initdb").exists() and (folder / "postgres").exists():
            return folder
    raise AssertionError("PostgreSQL is not installed: `make postgres` installs Debian's (as root)")


def _as_owner_of(folder: Path) -> list[str]:
    """The prefix that runs a PostgreSQL program as the owner of its data: PostgreSQL refuses to
    run as root, so as root the folder goes to the `postgres` user (Debian's package creates it)."""
    if os.geteuid() != 0:
        return []
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise AssertionError("running as root needs a `postgres` user to run PostgreSQL as") from None
    shutil.chown(folder, user.pw_uid, user.pw_gid)
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


@contextlib.contextmanager
def postgres(logs: Path, daemons: Daemons, port: int) -> Iterator[Callable[[str], str]]:
    """PostgreSQL on 127.0.0.1:port over a fresh data folder, holding DATABASES; yields a database's
    name -> its SQLAlchemy URL. A fresh folder, port and socket folder each time, so what a killed
    run left behind never blocks the next one."""
    programs = postgres_programs()
    # In /tmp, not under pytest's temp folder: only root may enter that, and the server runs as postgres.
    home = Path(tempfile.mkdtemp(prefix="osmf-stack-postgres-"))
    try:
        as_owner = _as_owner_of(home)
        password = secrets.token_hex(16)
        (home / "password").write_text(password)
        data, pwfile = str(home / "data"), str(home / "password")
        initdb = [*as_owner, str(programs / "initdb"), "--pgdata", data, "--username", "osmf"]
        initdb += ["--auth", "scram-sha-256", "--pwfile", pwfile, "--encoding", "UTF8"]
        done = subprocess.run(initdb, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (home / "password").unlink()
        # A database thrown away after one night: fsync buys nothing.
        server = [*as_owner, str(programs / "postgres"), "-D", data, "-h", LOCAL, "-p", str(port)]
        server += ["-k", str(home), "-c", "fsync=off"]
        with daemons({"postgres": server}, dict(os.environ), logs):
            login = {"host": LOCAL, "port": port, "user": "osmf", "password": password}

            def accepts() -> bool:
                try:
                    psycopg2.connect(dbname="postgres", connect_timeout=5, **login).close()
                except psycopg2.OperationalError:
                    return False
                return True

            wait_for("PostgreSQL", accepts, logs / "postgres.log")
            with contextlib.closing(psycopg2.connect(dbname="postgres", **login)) as connection:
                connection.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
                with connection.cursor() as cursor:
                    for database in DATABASES:
                        cursor.execute(f"CREATE DATABASE {database}")
            yield lambda database: f"postgresql+psycopg2://osmf:{password}@{LOCAL}:{port}/{database}"
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def s3(logs: Path, daemons: Daemons, port: int, buckets: set[str]) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1:port holding empty `buckets`; yields its endpoint. It takes any
    key: the AWS_* credentials in the environment are what every client signs with."""
    endpoint = f"http://{LOCAL}:{port}"
    with daemons({"s3": [str(BIN / "moto_server"), "-H", LOCAL, "-p", str(port)]}, dict(os.environ), logs):
        wait_for("the S3 server", lambda: answers(endpoint), logs / "s3.log")
        client = boto3.client("s3", endpoint_url=endpoint)
        for bucket in sorted(buckets):
            client.create_bucket(Bucket=bucket)
        yield endpoint


@dataclass(frozen=True)
class Mlflow:
    url: str
    # MLflow user -> password: the admin and the users docker/mlflow_init.py creates.
    passwords: dict[str, str]


@contextlib.contextmanager
def mlflow_server(logs: Path, daemons: Daemons, port: int, database: Callable[[str], str]) -> Iterator[Mlflow]:
    """The MLflow server and its users as compose runs them: basic auth configured by
    docker/mlflow-auth-ini.sh, PostgreSQL behind it, artifacts proxied to s3://mlflow/ on the S3
    server of the environment's MLFLOW_S3_ENDPOINT_URL, then docker/mlflow_init.py as the admin
    (the pipeline's and the serving endpoint's users, the pipeline's experiment)."""
    passwords = {user: secrets.token_hex(16) for user in ("admin", PIPELINE_USER, "osmf-serving")}
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "osmf-mlflow",
        "MLFLOW_BACKEND_STORE_URI": database("mlflow"),
        "MLFLOW_AUTH_DATABASE_URI": database("mlflow_auth"),
        "MLFLOW_AUTH_CONFIG_PATH": str(logs / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": passwords["admin"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    url = f"http://{LOCAL}:{port}"
    # One worker, not uvicorn's four: two cores, and a night's clients are a task or two at a time.
    command = ["sh", str(DOCKER / "mlflow-auth-ini.sh"), str(BIN / "mlflow"), "server", "--app-name=basic-auth"]
    command += [f"--host={LOCAL}", f"--port={port}", "--workers=1"]
    command += ["--artifacts-destination=s3://mlflow/", "--serve-artifacts"]
    with daemons({"mlflow": command}, env, logs):
        # The first start migrates both databases: minutes on a busy machine.
        wait_for("MLflow", lambda: answers(f"{url}/health"), logs / "mlflow.log", minutes=10)
        admin = {
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": passwords["admin"],
            "MLFLOW_PIPELINE_PASSWORD": passwords[PIPELINE_USER],
            "MLFLOW_SERVING_PASSWORD": passwords["osmf-serving"],
        }
        init = [sys.executable, str(DOCKER / "mlflow_init.py")]
        done = subprocess.run(init, env={**os.environ, **admin}, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield Mlflow(url, passwords)
