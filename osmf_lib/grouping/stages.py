"""The group_users task: the night's embeddings grouped (osmf_lib.grouping.groups), written as
user_groups and group_profiles, checked to agree, and gated."""

from __future__ import annotations

import logging
from datetime import date
from typing import TYPE_CHECKING

from osmf_lib import quality, tables, tracking
from osmf_lib.config import Config
from osmf_lib.grouping.clustering import GroupingError
from osmf_lib.grouping.groups import group_audiences
from osmf_lib.inputs import check_groups
from osmf_lib.job import JobContext, StageResult, worker_errors_as_stage_errors
from osmf_lib.quality import Check
from osmf_lib.tables import (
    DS,
    GROUP_PROFILES,
    PAAG_EMBEDDINGS,
    USER_GROUPS,
    USERS,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def group_users(ctx: JobContext) -> StageResult:
    """The group_users task: the night's embeddings -> user_groups and group_profiles."""
    import mlflow
    from pyspark.sql import functions as F

    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    embedded = tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=ds)
    assignments, profiles = group_audiences(embedded, tables.read(spark, USERS, cfg, as_of=ds), cfg, ds)
    # A bad embedding surfaces here from a Python worker; say which, not a JVM stack.
    with worker_errors_as_stage_errors(GroupingError, f"group_users for ds={ds}"):
        # Members first, profiles last: a failure in between leaves the pair disagreeing, which
        # check_groups catches, and a rerun rewrites both.
        tables.overwrite_partition(spark, assignments, USER_GROUPS, cfg, ds)
        tables.overwrite_partition(spark, profiles, GROUP_PROFILES, cfg, ds)
    summary = (
        tables.read(spark, GROUP_PROFILES, cfg, ds=ds)
        .groupBy()
        .agg(
            F.countDistinct("product_id").alias("products"),
            F.count("*").alias("groups"),
            F.avg("k").alias("mean_k"),
        )
        .first()
    )
    if not summary["products"]:
        return StageResult(skipped=f"no embeddings for ds={ds}; nothing to group")
    check_groups(spark, cfg, ds)
    quality.gate(ctx, quality_checks(spark, cfg, ds))
    log.info(
        f"group_users: {summary['groups']} groups over {summary['products']} products (mean K {summary['mean_k']:.2f})"
    )
    mlflow.log_metrics({"products": summary["products"], "groups": summary["groups"], "mean_k": summary["mean_k"]})
    tracking.log_table_input(spark, PAAG_EMBEDDINGS, cfg, context="grouping")
    return StageResult(
        written={GROUP_PROFILES.name: summary["groups"]},
        metrics={"products": summary["products"], "mean_k": summary["mean_k"]},
    )


def quality_checks(spark: SparkSession, cfg: Config, ds: date) -> list[Check]:
    """The night's gate: groups against the previous night's, the smallest group, and the share
    of the embedded audience that was grouped (recorded: small audiences are skipped by design)."""
    from pyspark.sql import functions as F

    profiles = tables.read(spark, GROUP_PROFILES, cfg)
    # A small audience is one group by design; only a product split in several has a smallest group.
    split = F.when(F.col("k") > 1, F.col("size"))
    tonight = profiles.where(F.col(DS) == F.lit(ds)).agg(F.min(split), F.sum("size")).first()
    embedded = tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=ds).count()
    smallest = (
        []
        if tonight[0] is None
        else [
            Check(
                "smallest_group",
                tonight[0],
                low=cfg.grouping.min_group_size,
                setting="grouping.min_group_size",
                measured="of the products split into several groups",
            )
        ]
    )
    return [
        *quality.versus_previous(cfg, "groups", profiles, ds, "groups"),
        *smallest,
        Check("grouped_share", tonight[1] / embedded, measured=f"{tonight[1]:,} of {embedded:,} (product, user)"),
    ]
