"""The frame every grading against the simulated world's oracle shares: find the world the night's
landing manifest names, grade, and store the metrics; a logged skip on real logs or when the night
trained nothing to grade. Either way no metrics of an earlier run of the ds are left behind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date
from typing import TypeVar

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from osmf_lib import tables
from osmf_lib.config import Config
from osmf_lib.inputs import PRODUCT_FEATURES, attribute_profiles, split_of, window, world_of
from osmf_lib.job import JobContext, StageResult
from osmf_lib.synth.oracle import Oracle
from osmf_lib.tables import IMPRESSIONS, PRODUCTS, USER_GROUPS, USERS, Metric

log = logging.getLogger(__name__)

Night = TypeVar("Night")


def sample_products(products: DataFrame, limit: int) -> DataFrame:
    """A stable sample of `limit` product ids: it bounds the oracle's cost and is the same every rerun."""
    return products.select("product_id").distinct().orderBy(F.xxhash64("product_id"), "product_id").limit(limit)


def held_out_members(spark: SparkSession, cfg: Config, ds: date) -> DataFrame:
    """The night's group members of a stable sample of held-out (test-split) products."""
    members = tables.read(spark, USER_GROUPS, cfg, ds=ds).where(split_of(F.col("product_id"), cfg) == "test")
    return members.join(sample_products(members, cfg.evaluate.max_products), "product_id")


def writer_inputs(spark: SparkSession, cfg: Config, ds: date, members: DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a generator needs to write for the groups of `members`: their attribute profiles and
    their products' text and picture, as the night knew them."""
    chosen = members.select("product_id").distinct()
    profiles = attribute_profiles(members, tables.read(spark, USERS, cfg, as_of=ds)).toPandas()
    products = tables.read(spark, PRODUCTS, cfg, as_of=ds).join(chosen, "product_id").select(*PRODUCT_FEATURES)
    return profiles, products.toPandas()


def held_out_audiences(spark: SparkSession, cfg: Config, ds: date) -> tuple[DataFrame, pd.Series, pd.Series]:
    """The held-out members (`held_out_members`), and per (product_id, group_id) the user ids who saw
    the product in the look-back window, repeated by their impressions, and their count (the
    weight of the group): the audience a background is graded on."""
    members = held_out_members(spark, cfg, ds)
    impressions = window(tables.read(spark, IMPRESSIONS, cfg), ds, cfg.paag.lookback_days)
    seen = impressions.groupBy("product_id", "user_id").agg(F.count("*").alias("n"))
    shown = members.join(seen, ["product_id", "user_id"]).toPandas()
    shown = shown.loc[shown.index.repeat(shown["n"])]
    audiences = shown.groupby(["product_id", "group_id"])["user_id"].agg(list)
    return members, audiences, audiences.map(len)


def grade_night(
    ctx: JobContext,
    stage: str,
    night: Night | None,
    missing: str,
    grade: Callable[[Night, Oracle], list[Metric]],
) -> StageResult:
    """Run `grade(night, oracle)` and store its metrics under `stage` (job name = ctx.stage);
    `missing` says why there is nothing to grade when `night` is None (the result's skip)."""
    import mlflow

    world = world_of(ctx.spark, ctx.cfg, ctx.ds)
    reason = None
    metrics: list[Metric] = []
    if world is None:
        reason = f"ds={ctx.ds} was not simulated (no landing manifest): there is no answer key to grade against"
    elif night is None:
        reason = missing
    else:
        seed, scale = world
        mlflow.log_params({"world.seed": seed, "world.scale": scale})
        metrics = grade(night, Oracle.of_world(seed, scale))
    tables.write_metrics(ctx.spark, ctx.cfg, ctx.ds, stage, metrics, mlflow.active_run().info.run_id)
    width = max((len(m.metric) for m in metrics), default=0) + 1
    for m in metrics:
        log.info(f"{ctx.stage}: {m.metric:<{width}} {m.slice:<14} {m.value:.4f}")
    graded = {f"{m.metric}.{m.slice}": m.value for m in metrics}
    mlflow.log_metrics(graded)
    return StageResult(skipped=reason, metrics=graded)
