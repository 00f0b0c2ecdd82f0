"""The build_preference_pairs task: the night's group_creative_ctr and group_preference_pairs, each
product's work (osmf_lib.pairs.preference) run in one groupBy(product).applyInPandas pass."""

from __future__ import annotations

import logging
from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from osmf_lib import quality, tables, tracking
from osmf_lib.config import Config
from osmf_lib.inputs import LINEAGE, check_groups, split_of, window
from osmf_lib.job import JobContext, StageResult
from osmf_lib.pairs.preference import CTR_COLUMNS, GROUP, PAIR_COLUMNS, product_pairs, smooth_product
from osmf_lib.quality import Check
from osmf_lib.tables import (
    CREATIVES,
    DS,
    GENERATED,
    GROUP_CREATIVE_CTR,
    GROUP_PREFERENCE_PAIRS,
    GROUP_PROFILES,
    GROUPS_DS,
    IMPRESSIONS,
    LOGGED,
    USER_GROUPS,
    Metric,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STAGE = "build_preference_pairs"
SPLITS = ("train", "validation", "test")


def _schema(columns: list[str], table: tables.Table) -> str:
    types = {c.name: c.type for c in table.columns}
    return ", ".join(f"{name} {types[name]}" for name in columns)


def creative_cells(impressions: DataFrame, members: DataFrame) -> DataFrame:
    """Impressions and clicks per (product, group, creative) of each group's members, with the GROUP columns."""
    from pyspark.sql import functions as F

    groups = members.select("product_id", "user_id", "group_id", LINEAGE, F.col(DS).alias(GROUPS_DS))
    return (
        impressions.join(groups, ["product_id", "user_id"])
        .groupBy(*GROUP, "creative_id")
        .agg(F.count("*").alias("impressions"), F.sum(F.col("clicked").cast("long")).alias("clicks"))
    )


def group_creative_ctr(cells: DataFrame, ds: date) -> DataFrame:
    """Smooth every product's cells with its own prior -> group_creative_ctr rows of `ds`."""
    from pyspark.sql import functions as F

    smoothed = cells.groupBy("product_id").applyInPandas(smooth_product, _schema(CTR_COLUMNS, GROUP_CREATIVE_CTR))
    return tables.conform(smoothed.withColumn(DS, F.lit(ds)), GROUP_CREATIVE_CTR)


def _creative_key(creatives: DataFrame) -> DataFrame:
    return creatives.select("product_id", "creative_id")


def unknown_creative_cells(ctr: DataFrame, creatives: DataFrame) -> DataFrame:
    """CTR rows whose creative `creatives` does not hold for the product: they get no pairs (no prompt)."""
    return ctr.join(_creative_key(creatives), ["product_id", "creative_id"], "left_anti")


def preference_pairs(ctr: DataFrame, creatives: DataFrame, cfg: Config, ds: date) -> DataFrame:
    """Every product's pairs from its group_creative_ctr rows, with both prompts and the product's split.

    Cells of creatives missing from `creatives` are left out before pairing, so conflicts are
    judged among pairs that exist.
    """
    from pyspark.sql import functions as F

    pairs_cfg = cfg.pairs

    def one_product(rows: pd.DataFrame) -> pd.DataFrame:
        return product_pairs(rows, pairs_cfg)

    def prompts(side: str) -> DataFrame:
        return creatives.select(
            "product_id", F.col("creative_id").alias(f"{side}_creative_id"), F.col("prompt").alias(f"{side}_prompt")
        )

    known = ctr.join(_creative_key(creatives), ["product_id", "creative_id"], "left_semi")
    found = known.groupBy("product_id").applyInPandas(one_product, _schema(PAIR_COLUMNS, GROUP_PREFERENCE_PAIRS))
    with_prompts = found.join(prompts("chosen"), ["product_id", "chosen_creative_id"]).join(
        prompts("rejected"), ["product_id", "rejected_creative_id"]
    )
    return tables.conform(
        with_prompts.withColumn("split", split_of(F.col("product_id"), cfg)).withColumn(DS, F.lit(ds)),
        GROUP_PREFERENCE_PAIRS,
    )


def dpo_examples(pairs: DataFrame, profiles: DataFrame, products: DataFrame) -> DataFrame:
    """Pairs as trl's DPO trainer reads them (prompt, chosen, rejected), plus the group's columns.

    The prompt names the product (its id where `products` lacks it) and the group's description;
    chosen and rejected are the two background prompts.
    """
    from pyspark.sql import functions as F

    groups = profiles.select("product_id", "group_id", F.col(DS).alias(GROUPS_DS), "description")
    named = products.select("product_id", "title", "category")
    product = F.when(F.col("title").isNull(), F.col("product_id")).otherwise(
        F.format_string("%s (%s)", "title", "category")
    )
    audience = F.coalesce(F.col("description"), F.concat(F.lit("group "), F.col("group_id").cast("string")))
    return (
        pairs.join(groups, ["product_id", "group_id", GROUPS_DS], "left")
        .join(named, "product_id", "left")
        .select(
            F.format_string("Describe the background of an ad for %s, shown to %s.", product, audience).alias("prompt"),
            F.col("chosen_prompt").alias("chosen"),
            F.col("rejected_prompt").alias("rejected"),
            "product_id",
            "group_id",
            "conflict",
            "confidence",
            "chosen_creative_id",
            "rejected_creative_id",
        )
    )


def pairs_by_origin(pairs: DataFrame, creatives: DataFrame) -> list[Metric]:
    """The night's pairs counted by the origin of their two creatives (slice `chosen_over_rejected`,
    e.g. `generated_over_logged`): how much the closed loop's own creatives teach the next models."""
    from pyspark.sql import functions as F

    def origin(side: str) -> DataFrame:
        return creatives.select(
            "product_id", F.col("creative_id").alias(f"{side}_creative_id"), F.col("origin").alias(side)
        )

    counted = (
        pairs.join(origin("chosen"), ["product_id", "chosen_creative_id"])
        .join(origin("rejected"), ["product_id", "rejected_creative_id"])
        .groupBy("chosen", "rejected")
        .count()
        .collect()
    )
    found = {(row["chosen"], row["rejected"]): row["count"] for row in counted}
    return [
        Metric("pairs", f"{chosen}_over_{rejected}", float(found.get((chosen, rejected), 0)))
        for chosen in (LOGGED, GENERATED)
        for rejected in (LOGGED, GENERATED)
    ]


def quality_checks(spark: SparkSession, cfg: Config, ds: date) -> list[Check]:
    """The night's gate: pairs against the previous night's, pairs of a group that is not one of
    tonight's (none may be), and pairs per group with CTR cells (recorded)."""
    from pyspark.sql import functions as F

    stored = tables.read(spark, GROUP_PREFERENCE_PAIRS, cfg)
    tonight = stored.where(F.col(DS) == F.lit(ds))
    groups = tables.read(spark, GROUP_PROFILES, cfg, ds=ds).select(
        "product_id", "group_id", LINEAGE, F.col(DS).alias(GROUPS_DS)
    )
    orphans = tonight.join(groups, GROUP, "left_anti").count()
    pairs = tonight.count()
    with_cells = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds).select(*GROUP).distinct().count()
    return [
        *quality.versus_previous(cfg, "pairs", stored, ds, "pairs"),
        Check("pairs_of_unknown_groups", orphans, high=0, measured="pairs whose group is not in group_profiles"),
        Check("pairs_per_group", pairs / with_cells if with_cells else 0.0, measured=f"{pairs:,} over {with_cells:,}"),
    ]


def build_preference_pairs(ctx: JobContext) -> StageResult:
    """The build_preference_pairs stage: tonight's groups and the window's impressions -> both tables."""
    import mlflow
    from pyspark.sql import functions as F

    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    check_groups(spark, cfg, ds)
    members = tables.read(spark, USER_GROUPS, cfg, ds=ds)
    seen = window(tables.read(spark, IMPRESSIONS, cfg), ds, cfg.paag.lookback_days)
    creatives_version = tables.version_as_of(spark, CREATIVES, cfg, ds)
    creatives = tables.read(spark, CREATIVES, cfg, version=creatives_version)
    if members.first() is None:
        # Nothing to compute, but the writes below still run: they empty what an earlier run wrote.
        log.info(f"{STAGE}: no groups for ds={ds}; its partitions of both tables are left empty")

    tables.overwrite_partition(
        spark, group_creative_ctr(creative_cells(seen, members), ds), GROUP_CREATIVE_CTR, cfg, ds
    )
    # Pairs come from the committed CTR rows, so both tables hold the very same estimates.
    ctr = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds)
    tables.overwrite_partition(spark, preference_pairs(ctr, creatives, cfg, ds), GROUP_PREFERENCE_PAIRS, cfg, ds)

    cells = ctr.agg(F.count("*").alias("cells"), F.countDistinct("product_id", "group_id").alias("groups")).first()
    stored = tables.read(spark, GROUP_PREFERENCE_PAIRS, cfg, ds=ds)
    written = stored.agg(
        F.count("*").alias("pairs"),
        F.count(F.when(F.col("conflict"), 1)).alias("conflict_pairs"),
        *(F.count(F.when(F.col("split") == split, 1)).alias(f"pairs_{split}") for split in SPLITS),
    ).first()
    metrics = {
        "cells": cells["cells"],
        "groups": cells["groups"],
        "unknown_creative_cells": unknown_creative_cells(ctr, creatives).count(),
        **written.asDict(),
    }
    origins = pairs_by_origin(stored, creatives)
    tables.write_metrics(spark, cfg, ds, STAGE, origins, mlflow.active_run().info.run_id)
    by_origin = {f"{m.metric}.{m.slice}": m.value for m in origins}
    with_generated = int(sum(m.value for m in origins if GENERATED in m.slice))
    splits = " / ".join(f"{split} {metrics[f'pairs_{split}']}" for split in SPLITS)
    unknown = metrics["unknown_creative_cells"]
    log.info(
        f"{STAGE}: {metrics['cells']} (group, creative) cells over {metrics['groups']} groups, "
        f"{metrics['pairs']} pairs ({metrics['conflict_pairs']} conflict; {splits}; "
        f"{with_generated} with a generated creative)"
        + (f"; {unknown} cells of creatives missing from creatives have no pairs" if unknown else "")
    )
    mlflow.log_metrics({**metrics, **by_origin})
    quality.gate(ctx, quality_checks(spark, cfg, ds))
    tracking.log_table_input(spark, IMPRESSIONS, cfg, context="clicks")
    tracking.log_table_input(spark, USER_GROUPS, cfg, context="groups")
    tracking.log_table_input(spark, CREATIVES, cfg, context="prompts", version=creatives_version)
    return StageResult(
        written={GROUP_CREATIVE_CTR.name: metrics["cells"], GROUP_PREFERENCE_PAIRS.name: metrics["pairs"]},
        metrics={
            **{key: metrics[key] for key in ("groups", "conflict_pairs", "unknown_creative_cells")},
            **by_origin,
        },
    )
