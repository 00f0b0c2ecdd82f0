"""What several stages of a night read the same way: the look-back window, the dimensions as that
night left them, the groups (and the check that their two tables agree), each product's split
and features, the night's pinned GRM, and the simulated world a day came from.

A stage takes these from here rather than from another stage's module, so the packages of the
night depend on the platform and never on each other (docs/design.md#layers).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from osmf_lib import promotion, tables
from osmf_lib.config import Config
from osmf_lib.job import JobContext, StageError
from osmf_lib.night import DIMENSIONS, GRM
from osmf_lib.spark import named_in
from osmf_lib.tables import (
    DS,
    GROUP_CREATIVE_CTR,
    GROUP_PREFERENCE_PAIRS,
    GROUP_PROFILES,
    IMPRESSIONS,
    LANDING_MANIFESTS,
    MULTI_VALUED_ATTRIBUTES,
    PRODUCTS,
    SINGLE_VALUED_ATTRIBUTES,
    USER_GROUPS,
)

if TYPE_CHECKING:
    from osmf_lib.grm import Grm

PRODUCT_FEATURES = ("product_id", "title", "category", "image_uri")


# The column of user_groups and group_profiles naming the PAAG model the groups came from.
LINEAGE = "paag_version"


def window(impressions: DataFrame, ds: date, lookback_days: int) -> DataFrame:
    """Impressions of the `lookback_days` days ending with ds."""
    first = ds - timedelta(days=lookback_days - 1)
    return impressions.where(F.col(DS).between(F.lit(first), F.lit(ds)))


def dimension_versions(ctx: JobContext) -> dict[str, int]:
    """The Delta version of each dimension table as the night of ctx.ds left it."""
    return {t.name: tables.version_as_of(ctx.spark, t, ctx.cfg, ctx.ds) for t in DIMENSIONS}


def split_of(product_id: Column, cfg: Config) -> Column:
    """train | validation | test for a product id column: the one held-out rule of every stage.

    u = the first 8 hex digits of SHA-256(product_id) / 16^8 is uniform in [0, 1) and the same in
    any engine, version or run; u < test_fraction is test, the next validation_fraction validation.
    """
    u = F.conv(F.substring(F.sha2(product_id.cast("string"), 256), 1, 8), 16, 10).cast("double") / float(16**8)
    test, validation = cfg.pairs.test_fraction, cfg.pairs.validation_fraction
    return F.when(u < test, "test").when(u < test + validation, "validation").otherwise("train")


def check_groups(spark: SparkSession, cfg: Config, ds: date) -> None:
    """Fail unless user_groups and group_profiles of `ds` hold the same groups, sizes and model.

    Delta commits one table at a time; this is what makes the pair safe to read as one. Every
    stage that reads both calls it.
    """
    members = (
        tables.read(spark, USER_GROUPS, cfg, ds=ds)
        .groupBy("product_id", "group_id", LINEAGE)
        .count()
        .withColumnRenamed("count", "size")
    )
    profiles = tables.read(spark, GROUP_PROFILES, cfg, ds=ds).select("product_id", "group_id", LINEAGE, "size")
    disagree = members.exceptAll(profiles).unionByName(profiles.exceptAll(members)).first()
    if disagree is not None:
        raise StageError(
            f"user_groups and group_profiles of ds={ds} disagree (first at product {disagree['product_id']}, "
            f"group {disagree['group_id']}, {disagree[LINEAGE]}): an earlier group_users stopped between its "
            "two writes; rerun group_users for this ds"
        )


def _prefixed(attribute: str) -> Column:
    """A multi-valued attribute's distinct values as "attribute=value" strings (none when null)."""
    values = F.coalesce(F.array_distinct(F.col(attribute)), F.array().cast("array<string>"))
    return F.transform(values, lambda value: F.concat(F.lit(f"{attribute}="), value))


def attribute_profiles(members: DataFrame, users: DataFrame) -> DataFrame:
    """Per (product, group): the share of members holding each attribute value ("gender=female"),
    as long rows (product_id, group_id, feature, share); osmf_lib.grm.features has why."""
    joined = members.select("product_id", "group_id", "user_id").join(users, "user_id")
    single = [F.concat(F.lit(f"{attribute}="), F.col(attribute)) for attribute in SINGLE_VALUED_ATTRIBUTES]
    multi = [_prefixed(attribute) for attribute in MULTI_VALUED_ATTRIBUTES]
    features = F.flatten(F.array(F.filter(F.array(*single), lambda v: v.isNotNull()), *multi))
    sizes = joined.groupBy("product_id", "group_id").agg(F.count("*").alias("size"))
    held = (
        joined.select("product_id", "group_id", F.explode(features).alias("feature"))
        .groupBy("product_id", "group_id", "feature")
        .agg(F.count("*").alias("holders"))
    )
    return held.join(sizes, ["product_id", "group_id"]).select(
        "product_id", "group_id", "feature", (F.col("holders") / F.col("size")).alias("share")
    )


def training_cells(ctr: DataFrame, creatives: DataFrame, cfg: Config) -> DataFrame:
    """group_creative_ctr rows with their creative's prompt and their product's split."""
    prompts = creatives.select("product_id", "creative_id", "prompt")
    return ctr.join(prompts, ["product_id", "creative_id"]).select(
        "product_id",
        "group_id",
        "creative_id",
        "prompt",
        "impressions",
        "clicks",
        split_of(F.col("product_id"), cfg).alias("split"),
    )


def group_data(ctx: JobContext, dimensions: dict[str, int]) -> dict[str, pd.DataFrame]:
    """What the GRM trains on: tonight's cells, pairs, group attribute profiles and the products
    with cells, in pandas."""
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    users, products, creatives = (tables.read(spark, t, cfg, version=dimensions[t.name]) for t in DIMENSIONS)
    ctr = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds)
    pairs = tables.read(spark, GROUP_PREFERENCE_PAIRS, cfg, ds=ds).select(
        "product_id", "group_id", "chosen_prompt", "rejected_prompt", "conflict", "split"
    )
    members = tables.read(spark, USER_GROUPS, cfg, ds=ds)
    return {
        "cells": training_cells(ctr, creatives, cfg).toPandas(),
        "pairs": pairs.toPandas(),
        "profiles": attribute_profiles(members, users).toPandas(),
        "products": named_in(products, ctr, "product_id").select(*PRODUCT_FEATURES).toPandas(),
    }


def writer_data(ctx: JobContext, dimensions: dict[str, int]) -> dict[str, pd.DataFrame]:
    """What the prompt writer (G-MLLM) and rendering read: `group_data` plus the CTRs smoothed, the
    groups with their split, every product with its price band, and impressions per product in the
    look-back window."""
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    data = group_data(ctx, dimensions)
    smoothed = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds).select(
        "product_id", "group_id", "creative_id", "ctr_smoothed"
    )
    data["cells"] = data["cells"].merge(smoothed.toPandas(), on=["product_id", "group_id", "creative_id"])
    data["groups"] = (
        tables.read(spark, GROUP_PROFILES, cfg, ds=ds)
        .select("product_id", "group_id", "size", "description", split_of(F.col("product_id"), cfg).alias("split"))
        .toPandas()
    )
    data["products"] = (
        tables.read(spark, PRODUCTS, cfg, version=dimensions[PRODUCTS.name])
        .select(*PRODUCT_FEATURES, "price_band")
        .toPandas()
    )
    impressions = window(tables.read(spark, IMPRESSIONS, cfg), ds, cfg.paag.lookback_days)
    shown = impressions.groupBy("product_id").agg(F.count("*").alias("shown"))
    data["shown"] = shown.toPandas()
    return data


def group_data_prints(ctx: JobContext, dimensions: dict[str, int]) -> dict:
    """What a model trained on the night's pairs and CTRs saw: fingerprints of those and of the
    dimensions' rows as of ds (the data half of promotion.training_tags)."""
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    return {
        "pairs": promotion.fingerprint(
            tables.read(spark, GROUP_PREFERENCE_PAIRS, cfg, ds=ds), GROUP_PREFERENCE_PAIRS.column_names
        ),
        "cells": promotion.fingerprint(
            tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds), GROUP_CREATIVE_CTR.column_names
        ),
        **promotion.dimension_prints(spark, cfg, dimensions),
    }


def night_grm(cfg: Config, ds: date) -> tuple[str, Grm] | None:
    """The GRM pinned for ds, with its version; None before the first GRM."""
    from osmf_lib.grm import load_grm

    version = promotion.version_for_ds(GRM.name, ds)
    if version is None:
        return None
    return version, load_grm(f"models:/{GRM.name}/{version}", unreadable_image=cfg.models.unreadable_image)


def world_of(spark: SparkSession, cfg: Config, ds: date) -> tuple[int, str] | None:
    """(seed, scale) of the simulated world ds's landing files came from; None for real logs or
    a ds not ingested yet."""
    if not tables.exists(spark, LANDING_MANIFESTS, cfg):
        return None
    row = tables.read(spark, LANDING_MANIFESTS, cfg, ds=ds).select("seed", "scale").first()
    return None if row is None else (row["seed"], row["scale"])


def first_day_of(spark: SparkSession, cfg: Config, world: tuple[int, str]) -> date:
    """The first ds ingested from the simulated world (seed, scale): the world's day 0."""
    seed, scale = world
    manifests = tables.read(spark, LANDING_MANIFESTS, cfg)
    return manifests.where((F.col("seed") == seed) & (F.col("scale") == scale)).agg(F.min("ds")).first()[0]
