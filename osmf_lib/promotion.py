"""The one promotion rule of every registered model, and which version a night uses (docs/design.md#promotion).

- **Like for like.** The training stage scores its challenger and the champion *for its ds* on the
  same held-out data in the same run, with the same function; only those two numbers are compared.
- **Never by accident.** A missing or NaN score never promotes; a tie keeps the champion; the
  challenger must win by more than `evaluate.min_improvement`.
- **Pinned per ds.** The version promoted on night ds is tagged `osmf.champion_from_ds = ds`. The
  champion *for* a night is the version promoted on the latest night <= it, so a backfill of an
  old night uses the model that night had, never one trained on later data. The registry alias
  `champion` follows the newest night's, for consumers outside the pipeline.

The decision, both scores and both versions go to MLflow (the stage's run and the challenger's
version tags) and to `eval_metrics` (stage "promotion", slice = the model's name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient

from osmf_lib import tables, tracking
from osmf_lib.config import Config
from osmf_lib.job import StageError, StageResult

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STAGE = "promotion"
TAG_TRAINED_FOR = "osmf.trained_for_ds"
TAG_CHAMPION_FROM = "osmf.champion_from_ds"
TAG_DECISION = "osmf.promotion"
# Version tags that make a rerun of the same night, on the same data and settings, reuse its
# model instead of training anew (so a backfill reproduces the night's rows).
TAG_DATA = "osmf.training_data"
TAG_SETTINGS = "osmf.training_settings"


@dataclass(frozen=True)
class Decision:
    model: str
    metric: str
    challenger: str
    challenger_score: float | None
    champion: str | None  # the champion for the night, None on a model's first night
    champion_score: float | None
    promoted: bool
    reason: str

    def line(self) -> str:
        def score(value: float | None) -> str:
            return "none" if value is None else f"{value:.4f}"

        against = f"champion v{self.champion} {score(self.champion_score)}" if self.champion else "no champion"
        verdict = "promoted" if self.promoted else "kept the champion"
        return (
            f"{self.model} v{self.challenger} {self.metric} {score(self.challenger_score)} vs {against}: "
            f"{verdict} ({self.reason})"
        )


def _usable(score: float | None) -> bool:
    return score is not None and not math.isnan(score)


def decide(
    challenger_score: float | None,
    champion_score: float | None,
    *,
    has_champion: bool,
    min_improvement: float = 0.0,
    higher_is_better: bool = True,
) -> tuple[bool, str]:
    """(promote?, why) for two scores measured on the same data."""
    if not _usable(challenger_score):
        return False, "the challenger has no usable score"
    if not has_champion:
        return True, "first version"
    if not _usable(champion_score):
        return False, "the champion could not be scored, so nothing is known to be better"
    gain = challenger_score - champion_score if higher_is_better else champion_score - challenger_score
    if gain > min_improvement:
        return True, f"better by {gain:.4f}"
    return False, f"not better by more than {min_improvement:g} (gain {gain:.4f})"


def challenge(
    model: str, metric: str, challenger: str, champion: str | None, score: Callable[[str], float], cfg: Config
) -> Decision:
    """Score the challenger and the night's champion (None on a first night) with the same `score`
    (a version -> its metric on the same held-out data), and apply the rule."""
    challenger_score = score(challenger)
    champion_score = score(champion) if champion else None
    promoted, reason = decide(
        challenger_score,
        champion_score,
        has_champion=champion is not None,
        min_improvement=cfg.evaluate.min_improvement,
    )
    return Decision(model, metric, challenger, challenger_score, champion, champion_score, promoted, reason)


def version_for_ds(name: str, ds: date) -> str | None:
    """The version that is champion for night `ds`: promoted on the latest night <= ds (newest wins
    ties). A version that lost its night is champion of none, even for date.max."""
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    nights = ((v.tags.get(TAG_CHAMPION_FROM), int(v.version)) for v in versions)
    promoted = [(night, number) for night, number in nights if night is not None and night <= ds.isoformat()]
    return str(max(promoted)[1]) if promoted else None


def pinned_version(cfg: Config, name: str, ds: date, producer: str) -> str:
    """The version of `name` that is champion for night ds; fails naming the stage to run without one."""
    tracking.configure(cfg)
    version = version_for_ds(name, ds)
    if version is None:
        raise StageError(f"{name} has no champion for ds={ds}: run {producer} for ds={ds} first")
    return version


def pinned_folder(cfg: Config, name: str, ds: date, artifact: str, producer: str) -> tuple[Path, str]:
    """Download the version pinned for night ds; returns its `artifact` folder and the version."""
    import mlflow

    version = pinned_version(cfg, name, ds, producer)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
    return local / "artifacts" / artifact, version


def _move_alias(name: str) -> None:
    """Point `champion` at the version promoted on the newest night (a backfill never moves it back)."""
    newest = version_for_ds(name, date.max)
    if newest is not None:
        tracking.promote(name, newest)


def crown(name: str, version: str, ds: date) -> None:
    """Make `version` the champion from night ds on (and move the alias if ds is the newest night)."""
    MlflowClient().set_model_version_tag(name, version, TAG_CHAMPION_FROM, ds.isoformat())
    _move_alias(name)


def record(spark: SparkSession, cfg: Config, ds: date, decision: Decision) -> StageResult:
    """Store the decision everywhere it is looked for, and promote when it says so; the stage's
    result names the version decided on and its score."""
    import mlflow

    client = MlflowClient()
    client.set_model_version_tag(decision.model, decision.challenger, TAG_DECISION, decision.line())
    if decision.promoted:
        crown(decision.model, decision.challenger, ds)
    values = {
        f"{decision.metric}.challenger": decision.challenger_score,
        f"{decision.metric}.champion": decision.champion_score,
        "challenger_version": float(decision.challenger),
        "champion_version": float(decision.champion) if decision.champion else None,
        "promoted": float(decision.promoted),
    }
    known = {key: value for key, value in values.items() if value is not None}
    mlflow.log_metrics({f"promotion.{key}": value for key, value in known.items()})
    mlflow.set_tag("osmf.promotion", decision.line())
    metrics = [tables.Metric(key, decision.model, value) for key, value in known.items()]
    tables.write_metrics(spark, cfg, ds, STAGE, metrics, mlflow.active_run().info.run_id, slice_=decision.model)
    log.info(f"promotion: {decision.line()}")
    score = {} if decision.challenger_score is None else {decision.metric: decision.challenger_score}
    return StageResult(
        model=f"{decision.model}/{decision.challenger}", metrics={**score, "promoted": float(decision.promoted)}
    )


# ---------------------------------------------------------------------------------------------
# Reruns: the same night, data and settings reuse the version trained then


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(rows: DataFrame, columns: Sequence[str]) -> dict[str, int]:
    """Rows as a count and an order-free hash of `columns`: equal whatever later days added elsewhere."""
    from pyspark.sql import functions as F

    row = rows.agg(F.count("*").alias("rows"), F.bit_xor(F.xxhash64(*columns)).alias("hash")).first()
    return {"rows": row["rows"], "hash": row["hash"] or 0}


def dimension_prints(spark: SparkSession, cfg: Config, versions: dict[str, int]) -> dict[str, dict[str, int]]:
    """The dimension tables a training read, as fingerprints of their rows at the versions it read.
    Not the version numbers: a rerun of the night's ingestion commits new versions holding the
    same rows (Delta commits every MERGE), which must not make the night's models train again."""
    prints = {}
    for name, version in versions.items():
        table = tables.TABLES[name]
        prints[name] = fingerprint(tables.read(spark, table, cfg, version=version), table.column_names)
    return prints


def training_tags(ds: date, data: dict, settings: dict) -> dict[str, str]:
    """The tags that identify a training: its night, a digest of its data and one of its settings."""
    return {TAG_TRAINED_FOR: ds.isoformat(), TAG_DATA: _digest(data), TAG_SETTINGS: _digest(settings)}


def trained_for_ds(name: str, ds: date) -> ModelVersion | None:
    """The newest version of `name` trained for night ds, promoted or not (what that night's
    evaluation grades); None when the night trained none."""
    trained = [
        v
        for v in MlflowClient().search_model_versions(f"name = '{name}'")
        if v.tags.get(TAG_TRAINED_FOR) == ds.isoformat()
    ]
    return max(trained, key=lambda v: int(v.version)) if trained else None


def reused(stage: str, version: ModelVersion, ds: date) -> StageResult:
    """A rerun of the night on the same data and settings keeps the version it made (the same rows
    after it); say so, with the decision it made then if it got that far."""
    import mlflow

    log.info(f"{stage}: {version.name} version {version.version} was trained for ds={ds} on the same data and settings")
    if TAG_DECISION in version.tags:
        log.info(f"{stage}: {version.tags[TAG_DECISION]}")
    if TAG_CHAMPION_FROM in version.tags:
        # A run stopped between crowning the version and moving the alias left the alias behind.
        _move_alias(version.name)
    mlflow.set_tag("osmf.reused_version", version.version)
    return StageResult(model=f"{version.name}/{version.version}", reused=True)


def reusable_version(name: str, tags: dict[str, str]) -> ModelVersion | None:
    """A version of `name` already trained with exactly these tags, so a rerun changes nothing."""
    for version in MlflowClient().search_model_versions(f"name = '{name}'"):
        if all(version.tags.get(key) == value for key, value in tags.items()):
            return version
    return None
