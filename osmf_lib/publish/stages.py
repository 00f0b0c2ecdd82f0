"""evaluate_and_publish (docs/design.md#publish): what the night hands to the ad server, and how good it is.

- **serving_creatives**: the creatives of each (product, group) of the night's groups with their
  share of its traffic. Where generate_creatives rendered candidates, the best-of-N gets
  `1 - publish.explore_share` and the other candidates the rest, by Thompson sampling
  (explore.py); otherwise the group's best logged creative by smoothed CTR gets all of it (a
  product outside `gmllm.target_products`, or whose descriptions were all unusable, still gets a
  creative). The `serving_lookup` view joins it with user_groups, so an
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
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from osmf_lib import tables
from osmf_lib.evaluation import publish as evaluate_publish
from osmf_lib.job import JobContext, StageResult
from osmf_lib.publish import explore, report, serving
from osmf_lib.tables import (
    CREATIVES,
    GENERATED,
    GENERATED_CREATIVES,
    GROUP_CREATIVE_CTR,
    GROUP_PROFILES,
    GROUPS_DS,
    LOGGED,
    SERVING_CREATIVES,
    Metric,
)

log = logging.getLogger(__name__)

STAGE = "publish"
# How well the night's osmf-serving places members by their attributes alone.
SERVING_STAGE = "serving"
KEY = list(GROUP_PROFILES.keys)


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


def serving_rows(targets: DataFrame, rendered: DataFrame, logged: DataFrame, ds: date) -> DataFrame:
    """The rows of each target (product, group) of the night: its rendered candidates with a share of
    its traffic (`rendered`: explore.candidate_shares), else its best logged creative with all of
    it; a target with neither gets no row. Columns: the serving_creatives contract."""
    generated = rendered.where(F.col("traffic_share") > 0).select(
        *KEY,
        generated_creative_id(F.col("ds"), F.col("product_id"), F.col("group_id"), F.col("candidate")).alias(
            "creative_id"
        ),
        F.lit(GENERATED).alias("origin"),
        "prompt",
        "image_uri",
        "grm_score",
        "gmllm_version",
        "grm_version",
        "traffic_share",
        "selected",
    )
    fallback = logged.join(generated.select(*KEY).distinct(), KEY, "left_anti").select(
        *KEY,
        "creative_id",
        F.lit(LOGGED).alias("origin"),
        "prompt",
        "image_uri",
        F.lit(None).cast("double").alias("grm_score"),
        F.lit(None).cast("string").alias("gmllm_version"),
        F.lit(None).cast("string").alias("grm_version"),
        F.lit(1.0).alias("traffic_share"),
        F.lit(True).alias("selected"),
    )
    return (
        targets.select(*KEY)
        .join(generated.unionByName(fallback), KEY)
        .withColumn(GROUPS_DS, F.lit(ds))
        .withColumn("ds", F.lit(ds))
    )


def coverage(served: pd.DataFrame, targets: int) -> list[Metric]:
    """Targets served a generated or a logged best, or nothing; what the rest of the traffic explores."""
    best = served[served["selected"]]
    generated = int((best["origin"] == GENERATED).sum())
    logged = int((best["origin"] == LOGGED).sum())
    explored = served[~served["selected"]]
    metrics = [
        Metric("targets", "all", float(targets)),
        Metric("served", GENERATED, float(generated)),
        Metric("served", LOGGED, float(logged)),
        Metric("unserved", "all", float(targets - generated - logged)),
        Metric("generated_share", "all", generated / targets if targets else 0.0),
        Metric("explored", "candidates", float(len(explored))),
        Metric("explore_share", "all", float(explored["traffic_share"].sum() / len(best)) if len(best) else 0.0),
    ]
    scores = best.loc[best["origin"] == GENERATED, "grm_score"].dropna()
    if len(scores):
        metrics.append(Metric("grm_probability", GENERATED, float(np.mean(1 / (1 + np.exp(-scores))))))
    return metrics


def evaluate_and_publish(ctx: JobContext) -> StageResult:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    targets = tables.read(spark, GROUP_PROFILES, cfg, ds=ds).select(*KEY)
    ctr = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds).where(F.col(GROUPS_DS) == F.lit(ds))
    creatives = tables.read(spark, CREATIVES, cfg, as_of=ds)
    logged = best_logged(ctr, creatives)
    generated = tables.read_or_empty(spark, GENERATED_CREATIVES, cfg).where(F.col("ds") == F.lit(ds))
    rendered = explore.candidate_shares(generated, ctr, creatives, ds, cfg.publish)
    served = serving_rows(targets, rendered, logged, ds)
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
        f"{counted['unserved', 'all']} without a creative, {counted['explored', 'candidates']} other candidates "
        f"explored; {len(views)} tables and views registered"
    )
    model_version, night = serving.register_night(ctx, stored)
    agreement = serving.member_agreement(spark, cfg, ds, night, cfg.publish.agreement_rows)
    tables.write_metrics(spark, cfg, ds, SERVING_STAGE, agreement, run_id)
    mlflow.log_metrics({f"{m.metric}.{m.slice}": m.value for m in agreement})
    placed = f"; members placed by attributes alone get their own group: {agreement[0].value:.2%}" if agreement else ""
    log.info(
        f"{ctx.stage}: {serving.MODEL_NAME} v{model_version} serves ds={ds}: {len(night.members)} members, "
        f"{len(night.groups.drop_duplicates(KEY))} groups, {len(night.fallback)} products with a fallback{placed}"
    )
    original = best_logged(ctr, creatives.where(F.col("origin") == LOGGED)).toPandas()
    graded = evaluate_publish.grade_served_day(ctx, served_pd, logged_pd, original, night)
    if graded.skipped:
        log.info(f"{ctx.stage}: the oracle's grade skipped: {graded.skipped}")
    path = report.write(ctx, served_pd[served_pd["selected"]])
    log.info(f"{ctx.stage}: report {path}")
    return StageResult(
        written={SERVING_CREATIVES.name: len(served_pd)},
        model=f"{serving.MODEL_NAME}/{model_version}",
        metrics={f"{m.metric}.{m.slice}": m.value for m in metrics},
    )
