"""evaluate_and_publish (docs/design.md#publish): what the night hands to the ad server, and how good it is.

- **serving_creatives**: one creative per (product, group) of the night's groups: the rendered
  best-of-N when generate_creatives made one, otherwise the group's best logged creative by
  smoothed CTR (a product outside `gmllm.target_products`, or whose descriptions were all
  unusable, still gets a creative). The `serving_lookup` view joins it with user_groups, so an
  analyst reads a member's (user, product) -> group -> creative by key.
- **osmf-serving** (serving.py here; the model is osmf_lib/serving): the night's model for
  everyone else too. It places any user with attributes in the product's groups, and is
  registered and pinned to the night; how often it gives members their own group back by their
  attributes alone goes to `eval_metrics` (stage "serving").
- **Metrics** (`eval_metrics` stage "publish"): how many targets got a generated creative, a
  logged one or none; on a simulated world, osmf_lib/evaluation/publish.py grades what is served to
  the next day's audience, members and newcomers.
- **Views** are re-registered, so a view broken by a contract change fails the night here.
- **The report** (report.py beside this module) is written under the artifacts root and logged
  to MLflow.
"""

from __future__ import annotations

import logging
from datetime import date

import mlflow
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from osmf_lib import tables
from osmf_lib.config import Config
from osmf_lib.evaluation import publish as evaluate_publish
from osmf_lib.job import JobContext, StageResult
from osmf_lib.publish import report, serving
from osmf_lib.tables import (
    CREATIVES,
    GENERATED,
    GENERATED_CREATIVES,
    GROUP_CREATIVE_CTR,
    GROUP_PROFILES,
    GROUPS_DS,
    LOGGED,
    SERVING_CREATIVES,
    USER_GROUPS,
    Metric,
)

log = logging.getLogger(__name__)

STAGE = "publish"
# How well the night's osmf-serving places members by their attributes alone.
SERVING_STAGE = "serving"
KEY = list(SERVING_CREATIVES.keys)


def generated_creative_id(ds: F.Column, product_id: F.Column, group_id: F.Column, candidate: F.Column) -> F.Column:
    """A stable id for a rendered candidate: the same night, target and candidate, the same id."""
    key = F.concat_ws("/", ds.cast("string"), product_id, group_id.cast("string"), candidate.cast("string"))
    return F.concat(F.lit("gen-"), F.substring(F.sha2(key, 256), 1, 16))


def best_logged(ctr: DataFrame, creatives: DataFrame) -> DataFrame:
    """Per (product, group): the creative in the night's logs with the highest smoothed CTR (ties:
    lowest id); after a closed loop that may be one generated on an earlier night."""
    order = Window.partitionBy(*KEY).orderBy(F.col("ctr_smoothed").desc(), F.col("creative_id"))
    return (
        ctr.join(creatives.select("creative_id", "prompt", "image_uri"), "creative_id")
        .withColumn("_rank", F.row_number().over(order))
        .where("_rank = 1")
        .select(*KEY, "creative_id", "prompt", "image_uri")
    )


def serving_rows(targets: DataFrame, generated: DataFrame, logged: DataFrame, ds: date) -> DataFrame:
    """One row per target (product, group) of the night: its selected generated creative, else its
    best logged one; a target with neither gets no row. Columns: the serving_creatives contract."""
    chosen = generated.where(F.col("selected") & F.col("image_uri").isNotNull()).select(
        *KEY,
        generated_creative_id(F.col("ds"), F.col("product_id"), F.col("group_id"), F.col("candidate")).alias("g_id"),
        F.col("prompt").alias("g_prompt"),
        F.col("image_uri").alias("g_uri"),
        "grm_score",
        "gmllm_version",
        "grm_version",
    )
    fallback = logged.select(
        *KEY, F.col("creative_id").alias("l_id"), F.col("prompt").alias("l_prompt"), F.col("image_uri").alias("l_uri")
    )
    joined = targets.select(*KEY).join(chosen, KEY, "left").join(fallback, KEY, "left")
    is_generated = F.col("g_id").isNotNull()
    return joined.where(is_generated | F.col("l_id").isNotNull()).select(
        *KEY,
        F.coalesce("g_id", "l_id").alias("creative_id"),
        F.when(is_generated, F.lit(GENERATED)).otherwise(F.lit(LOGGED)).alias("origin"),
        F.coalesce("g_prompt", "l_prompt").alias("prompt"),
        F.when(is_generated, F.col("g_uri")).otherwise(F.col("l_uri")).alias("image_uri"),
        "grm_score",
        "gmllm_version",
        "grm_version",
        F.lit(ds).alias(GROUPS_DS),
        F.lit(ds).alias("ds"),
    )


def lookup(spark: SparkSession, cfg: Config, ds: date) -> DataFrame:
    """The night's user -> group -> creative: user_id, product_id, group_id, creative_id, prompt,
    image_uri for every member of a served group (the serving_lookup view, pinned to one ds)."""
    served = tables.read(spark, SERVING_CREATIVES, cfg, ds=ds)
    members = tables.read(spark, USER_GROUPS, cfg).select(*KEY, "user_id", F.col("ds").alias(GROUPS_DS))
    return served.join(members, [*KEY, GROUPS_DS]).select("user_id", *KEY, "creative_id", "prompt", "image_uri")


def coverage(served: pd.DataFrame, targets: int) -> list[Metric]:
    generated = int((served["origin"] == GENERATED).sum())
    logged = int((served["origin"] == LOGGED).sum())
    metrics = [
        Metric("targets", "all", float(targets)),
        Metric("served", GENERATED, float(generated)),
        Metric("served", LOGGED, float(logged)),
        Metric("unserved", "all", float(targets - generated - logged)),
        Metric("generated_share", "all", generated / targets if targets else 0.0),
    ]
    scores = served.loc[served["origin"] == GENERATED, "grm_score"].dropna()
    if len(scores):
        metrics.append(Metric("grm_probability", GENERATED, float(np.mean(1 / (1 + np.exp(-scores))))))
    return metrics


def evaluate_and_publish(ctx: JobContext) -> StageResult:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    targets = tables.read(spark, GROUP_PROFILES, cfg, ds=ds).select(*KEY)
    ctr = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds).where(F.col(GROUPS_DS) == F.lit(ds))
    logged = best_logged(ctr, tables.read(spark, CREATIVES, cfg, as_of=ds))
    generated = tables.read_or_empty(spark, GENERATED_CREATIVES, cfg).where(F.col("ds") == F.lit(ds))
    served = serving_rows(targets, generated, logged, ds)
    version = tables.overwrite_partition(spark, served, SERVING_CREATIVES, cfg, ds)
    stored = tables.read(spark, SERVING_CREATIVES, cfg, version=version, ds=ds)
    served_pd = stored.toPandas()
    logged_pd = logged.toPandas()
    run_id = mlflow.active_run().info.run_id
    metrics = coverage(served_pd, targets.count())
    tables.write_metrics(spark, cfg, ds, STAGE, metrics, run_id)
    mlflow.log_metrics({f"{m.metric}.{m.slice}": m.value for m in metrics})
    views = tables.register_views(spark, cfg)
    counted = {(m.metric, m.slice): int(m.value) for m in metrics}
    log.info(
        f"{ctx.stage}: serving_creatives v{version}: {counted['targets', 'all']} targets, "
        f"{counted['served', GENERATED]} generated, {counted['served', LOGGED]} logged (the group's best), "
        f"{counted['unserved', 'all']} without a creative; {len(views)} tables and views registered"
    )
    model_version, night = serving.register_night(ctx, stored)
    agreement = serving.member_agreement(spark, cfg, ds, night, cfg.publish.agreement_rows)
    tables.write_metrics(spark, cfg, ds, SERVING_STAGE, agreement, run_id)
    mlflow.log_metrics({f"{m.metric}.{m.slice}": m.value for m in agreement})
    placed = f"; members placed by attributes alone get their own group: {agreement[0].value:.2%}" if agreement else ""
    log.info(
        f"{ctx.stage}: {serving.MODEL_NAME} v{model_version} serves ds={ds}: {len(night.members)} members, "
        f"{len(night.groups)} groups, {len(night.fallback)} products with a fallback{placed}"
    )
    graded = evaluate_publish.grade_served_day(ctx, served_pd, logged_pd, night)
    if graded.skipped:
        log.info(f"{ctx.stage}: the oracle's grade skipped: {graded.skipped}")
    path = report.write(ctx, served_pd)
    log.info(f"{ctx.stage}: report {path}")
    return StageResult(
        written={SERVING_CREATIVES.name: len(served_pd)},
        model=f"{serving.MODEL_NAME}/{model_version}",
        metrics={f"{m.metric}.{m.slice}": m.value for m in metrics},
    )
