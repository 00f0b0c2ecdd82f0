"""The train_grm stage on the lakehouse (docs/design.md#grm): tonight's group-wise CTRs and preference
pairs -> osmf-grm, with its group-agnostic baseline trained in the same run on the same data.

Reads the groups, CTRs and pairs of its ds and the dimensions as that night left them; promotes
by the one like-for-like rule (osmf_lib.promotion) on the validation products' pairs, the champion
scored with tonight's group profiles. A night without pairs is a logged skip: the champion stays.

The torch side lives in osmf_lib.grm; this module selects data with Spark and moves it to pandas.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from datetime import date
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import functions as F

from osmf_lib import promotion, tables, tracking
from osmf_lib.config import Config
from osmf_lib.inputs import check_groups, dimension_versions, group_data, group_data_prints
from osmf_lib.job import JobContext, StageResult
from osmf_lib.night import DIMENSIONS, GRM
from osmf_lib.tables import (
    GROUP_CREATIVE_CTR,
    GROUP_PREFERENCE_PAIRS,
    USER_GROUPS,
)

if TYPE_CHECKING:
    from osmf_lib.grm.train import TrainedGrm

log = logging.getLogger(__name__)

MODEL_NAME = GRM.name
STAGE = "grm"
# Promotion compares pair accuracy on the validation products: the GRM's job is to order prompts
# within a group, and AUROC or log-loss over impressions mostly measure base click rates.
METRIC = "val_pair_accuracy"


def _skip(ctx: JobContext, reason: str) -> StageResult:
    import mlflow

    champion = promotion.version_for_ds(MODEL_NAME, ctx.ds)
    kept = f"{MODEL_NAME} v{champion} stays champion" if champion else f"{MODEL_NAME} has no champion yet"
    # Metrics an earlier run of this night stored no longer describe it.
    tables.write_metrics(ctx.spark, ctx.cfg, ctx.ds, STAGE, [], mlflow.active_run().info.run_id)
    return StageResult(skipped=f"{reason}; {kept}")


def challenge(version: str, data: dict[str, pd.DataFrame], cfg: Config, ds: date) -> promotion.Decision:
    """Score the challenger and the night's champion on the same validation pairs; apply the one rule."""
    from osmf_lib.grm import evaluate, load_grm

    champion = promotion.version_for_ds(MODEL_NAME, ds)
    pairs = data["pairs"][data["pairs"]["split"] == "validation"]

    def score(model_version: str) -> float:
        grm = load_grm(f"models:/{MODEL_NAME}/{model_version}", unreadable_image=cfg.models.unreadable_image)
        return evaluate(grm, data["cells"].iloc[:0], pairs, data["profiles"], data["products"])["pair_accuracy"]

    return promotion.challenge(MODEL_NAME, METRIC, version, champion, score, cfg)


def _report(ctx: JobContext, trained: TrainedGrm, baseline: TrainedGrm) -> None:
    """Both models' held-out metrics side by side: MLflow, eval_metrics (stage "grm") and the log."""
    import mlflow

    metrics = [
        tables.Metric(metric, slice_, value)
        for slice_, model in (("group_aware", trained), ("group_agnostic", baseline))
        for metric, value in model.metrics.items()
        if not math.isnan(value)  # no such data tonight (e.g. no conflict pairs): nothing to store
    ]
    tables.write_metrics(ctx.spark, ctx.cfg, ctx.ds, STAGE, metrics, mlflow.active_run().info.run_id)
    for split in ("val", "test"):
        parts = []
        for name, model in (("GRM", trained), ("group-agnostic", baseline)):
            m = model.metrics
            parts.append(
                f"{name} {m[f'{split}_pair_accuracy']:.3f} (conflict {m[f'{split}_conflict_pair_accuracy']:.3f}), "
                f"AUROC {m[f'{split}_auroc']:.3f}"
            )
        m = trained.metrics
        log.info(
            f"train_grm: {split} products, {int(m[f'{split}_pairs'])} pairs "
            f"({int(m[f'{split}_conflict_pairs'])} conflict): pair accuracy " + " vs ".join(parts)
        )


def train_grm(ctx: JobContext) -> StageResult:
    import mlflow

    from osmf_lib.grm import fit_grm, log_grm
    from osmf_lib.grm.registry import BASELINE_ARTIFACT

    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    check_groups(spark, cfg, ds)
    pairs = tables.read(spark, GROUP_PREFERENCE_PAIRS, cfg, ds=ds)
    counts = pairs.agg(F.count("*").alias("all"), F.count(F.when(F.col("split") == "train", 1)).alias("train")).first()
    if counts["train"] == 0:
        return _skip(ctx, f"no training pairs ({counts['all']} in all) in group_preference_pairs for ds={ds}")

    dimensions = dimension_versions(ctx)
    settings = {"grm": cfg.grm.model_dump(mode="json"), "models": cfg.models.model_dump(mode="json")}
    tags = promotion.training_tags(ds, group_data_prints(ctx, dimensions), settings)
    reused = promotion.reusable_version(MODEL_NAME, tags)
    if reused is not None and promotion.TAG_DECISION in reused.tags:
        return promotion.reused("train_grm", reused, ds)

    data = group_data(ctx, dimensions)
    for table in (GROUP_CREATIVE_CTR, GROUP_PREFERENCE_PAIRS, USER_GROUPS):
        tracking.log_table_input(spark, table, cfg, context="training")
    for table in DIMENSIONS:
        tracking.log_table_input(spark, table, cfg, context="features", version=dimensions[table.name])

    args = (data["cells"], data["pairs"], data["profiles"], data["products"], cfg)
    trained = fit_grm(*args, group_aware=True)
    # The group-agnostic baseline of the evaluation: same model and data, group input removed.
    baseline = fit_grm(*args, group_aware=False)
    if reused is None:
        uri = log_grm(trained, cfg, name=MODEL_NAME, ds=ds)
        log_grm(baseline, cfg, name=BASELINE_ARTIFACT, ds=ds)
        version = tracking.register(uri, MODEL_NAME)
        for key, value in tags.items():
            mlflow.MlflowClient().set_model_version_tag(MODEL_NAME, version, key, value)
    else:
        # Trained by an earlier run of this night that stopped before deciding.
        version = reused.version
    truncated = trained.grm.truncated_prompts
    if truncated:
        log.info(
            f"train_grm: {truncated} prompts longer than grm.max_prompt_tokens={cfg.grm.max_prompt_tokens} were cut"
        )
    _report(ctx, trained, baseline)
    result = promotion.record(spark, cfg, ds, challenge(version, data, cfg, ds))
    return replace(result, reused=reused is not None)
