"""Group-wise CTR and preference pairs (docs/design.md#pairs): what each of tonight's groups clicks on.

    group_creative_ctr      per (product, group, creative): impressions and clicks of the group's
                            current members over the look-back window, the raw CTR, and its Beta
                            posterior under an empirical-Bayes prior fitted per product (posterior
                            mean and 90% equal-tailed credible interval)
    group_preference_pairs  within one (product, group): creative A over creative B when both have
                            >= pairs.min_impressions, A's posterior mean is at least pairs.ratio_min
                            (and at most pairs.ratio_max, if set) times B's, and
                            P(CTR_A > CTR_B) >= pairs.min_confidence

**The prior** is fitted per product, over its (group, creative) cells, by the method of moments
of the beta-binomial: with n_i impressions and k_i clicks per cell, N = sum n_i, the pooled CTR
m = sum k_i / N and S = sum n_i (k_i / n_i - m)^2, the model gives
E[S] = m (1 - m) [(C - 1) + rho (N - sum n_i^2 / N - (C - 1))] over C cells, where
rho = 1 / (alpha + beta + 1) is the share of the spread that is real differences between cells
rather than binomial noise. Solving for rho gives alpha + beta = 1 / rho - 1, split by m. Where
rho cannot be estimated (one cell, no clicks or only clicks, one impression per cell) or the
estimate is not in (0, 1) (the cells differ no more than noise would make them), the prior is a
weak one worth WEAK_PRIOR_STRENGTH impressions at the product's pooled CTR (Laplace-smoothed, so
never 0 or 1): the data then decide.

**P(CTR_A > CTR_B)** for independent Beta posteriors A and B is E[F_B(A)] = the integral over
u in (0, 1) of F_B(F_A^-1(u)), taken by the midpoint rule on QUADRATURE_NODES points: deterministic,
and because the integrand rises monotonically from 0 to 1, within 1 / (2 x QUADRATURE_NODES)
(0.001) of the exact value for any parameters (a test checks it against Monte Carlo).

**Split**: `split_of` puts every product in train, validation or test by a hash of its id; every
stage that holds data out uses it.

The per-product work is pandas/numpy/scipy (`smooth_product`, `product_pairs`); Spark runs each
with one groupBy(product).applyInPandas pass. Only `run` reads and writes tables.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
from scipy import special

from osmf_lib import quality, tables, tracking
from osmf_lib.config import Config, PairsConfig
from osmf_lib.grouping import LINEAGE, check_groups
from osmf_lib.job import JobContext
from osmf_lib.paag.stages import window
from osmf_lib.quality import Check
from osmf_lib.tables import (
    CREATIVES,
    DS,
    GROUP_CREATIVE_CTR,
    GROUP_PREFERENCE_PAIRS,
    GROUP_PROFILES,
    GROUPS_DS,
    IMPRESSIONS,
    USER_GROUPS,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

CREDIBLE_MASS = 0.90
WEAK_PRIOR_STRENGTH = 2.0
QUADRATURE_NODES = 512
SPLITS = ("train", "validation", "test")

# A group's rows are told apart by these; the lineage columns ride along with the group.
GROUP = ["product_id", "group_id", LINEAGE, GROUPS_DS]
CTR_COLUMNS = [c for c in GROUP_CREATIVE_CTR.column_names if c != DS]
PAIR_COLUMNS = [
    *GROUP,
    "chosen_creative_id",
    "rejected_creative_id",
    "chosen_ctr",
    "rejected_ctr",
    "confidence",
    "conflict",
]
_MIDPOINTS = (np.arange(QUADRATURE_NODES) + 0.5) / QUADRATURE_NODES


class BetaPrior(NamedTuple):
    alpha: float
    beta: float


def fit_prior(impressions: np.ndarray | pd.Series, clicks: np.ndarray | pd.Series) -> BetaPrior:
    """The empirical-Bayes Beta prior of one product's cells, by the method of moments (module docstring)."""
    n = np.asarray(impressions, dtype=np.float64)
    k = np.asarray(clicks, dtype=np.float64)
    total, clicked, cells = n.sum(), k.sum(), len(n)
    pooled = (clicked + 1) / (total + 2)
    weak = BetaPrior(WEAK_PRIOR_STRENGTH * pooled, WEAK_PRIOR_STRENGTH * (1 - pooled))
    if cells < 2 or clicked in (0, total):
        return weak
    mean = clicked / total
    spread = np.sum(n * (k / n - mean) ** 2) / (mean * (1 - mean))
    room = total - np.sum(n**2) / total - (cells - 1)
    if room <= 0:
        return weak
    rho = (spread - (cells - 1)) / room
    if not 0 < rho < 1:
        return weak
    strength = 1 / rho - 1
    return BetaPrior(mean * strength, (1 - mean) * strength)


def smooth_product(cells: pd.DataFrame) -> pd.DataFrame:
    """One product's cells (GROUP columns, creative_id, impressions, clicks) -> its group_creative_ctr rows
    without ds, under the prior fitted over them."""
    cells = cells.sort_values(["group_id", "creative_id"], kind="stable").reset_index(drop=True)
    prior = fit_prior(cells["impressions"], cells["clicks"])
    alpha = prior.alpha + cells["clicks"]
    beta = prior.beta + cells["impressions"] - cells["clicks"]
    tail = (1 - CREDIBLE_MASS) / 2
    return cells.assign(
        ctr=cells["clicks"] / cells["impressions"],
        prior_alpha=prior.alpha,
        prior_beta=prior.beta,
        ctr_smoothed=alpha / (alpha + beta),
        ctr_low=special.betaincinv(alpha, beta, tail),
        ctr_high=special.betaincinv(alpha, beta, 1 - tail),
    )[CTR_COLUMNS]


def prob_greater(alpha_a: np.ndarray, beta_a: np.ndarray, alpha_b: np.ndarray, beta_b: np.ndarray) -> np.ndarray:
    """P(A > B) for independent A ~ Beta(alpha_a, beta_a), B ~ Beta(alpha_b, beta_b), elementwise.

    Within 1 / (2 x QUADRATURE_NODES) of the exact value (module docstring).
    """
    a = np.column_stack([np.asarray(alpha_a, dtype=np.float64), np.asarray(beta_a, dtype=np.float64)])
    # A cell is the chosen side of several pairs: its quantiles, the costly part, are computed once.
    distinct, which = np.unique(a, axis=0, return_inverse=True)
    quantiles = special.betaincinv(distinct[:, :1], distinct[:, 1:], _MIDPOINTS)[which.ravel()]
    b = (np.asarray(x, dtype=np.float64)[:, None] for x in (alpha_b, beta_b))
    return special.betainc(*b, quantiles).mean(axis=1)


def product_pairs(ctr: pd.DataFrame, cfg: PairsConfig) -> pd.DataFrame:
    """One product's group_creative_ctr rows -> its preference pairs (PAIR_COLUMNS), within each group.

    The chosen creative is the one with the higher posterior mean; a pair kept in one group and
    kept the other way round in another group of the product is a conflict in both.
    """
    cells = ctr[ctr["impressions"] >= cfg.min_impressions]
    both = cells.merge(cells, on=GROUP, suffixes=("_chosen", "_rejected"))
    ratio = both["ctr_smoothed_chosen"] / both["ctr_smoothed_rejected"]
    # ratio > 1 orients each pair (chosen = the higher mean) even where ratio_min is below 1.
    within = (ratio > 1) & (ratio >= cfg.ratio_min)
    if cfg.ratio_max is not None:
        within &= ratio <= cfg.ratio_max
    both = both[within]

    def posterior(side: str) -> tuple[pd.Series, pd.Series]:
        clicks, impressions = both[f"clicks_{side}"], both[f"impressions_{side}"]
        return both[f"prior_alpha_{side}"] + clicks, both[f"prior_beta_{side}"] + impressions - clicks

    confidence = prob_greater(*posterior("chosen"), *posterior("rejected"))
    kept = both.assign(confidence=confidence)[confidence >= cfg.min_confidence].rename(
        columns={
            "creative_id_chosen": "chosen_creative_id",
            "creative_id_rejected": "rejected_creative_id",
            "ctr_smoothed_chosen": "chosen_ctr",
            "ctr_smoothed_rejected": "rejected_ctr",
        }
    )
    directions = set(zip(kept["chosen_creative_id"], kept["rejected_creative_id"], strict=True))
    kept["conflict"] = [
        (rejected, chosen) in directions
        for chosen, rejected in zip(kept["chosen_creative_id"], kept["rejected_creative_id"], strict=True)
    ]
    return kept.sort_values(["group_id", "chosen_creative_id", "rejected_creative_id"])[PAIR_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Spark


def split_of(product_id: Column, cfg: Config) -> Column:
    """train | validation | test for a product id column: the one held-out rule of every stage.

    u = the first 8 hex digits of SHA-256(product_id) / 16^8 is uniform in [0, 1) and the same in
    any engine, version or run; u < test_fraction is test, the next validation_fraction validation.
    """
    from pyspark.sql import functions as F

    u = F.conv(F.substring(F.sha2(product_id.cast("string"), 256), 1, 8), 16, 10).cast("double") / float(16**8)
    test, validation = cfg.pairs.test_fraction, cfg.pairs.validation_fraction
    return F.when(u < test, "test").when(u < test + validation, "validation").otherwise("train")


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


def run(ctx: JobContext) -> None:
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
        print(f"build_preference_pairs: no groups for ds={ds}; its partitions of both tables are left empty")

    tables.overwrite_partition(
        spark, group_creative_ctr(creative_cells(seen, members), ds), GROUP_CREATIVE_CTR, cfg, ds
    )
    # Pairs come from the committed CTR rows, so both tables hold the very same estimates.
    ctr = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds)
    tables.overwrite_partition(spark, preference_pairs(ctr, creatives, cfg, ds), GROUP_PREFERENCE_PAIRS, cfg, ds)

    cells = ctr.agg(F.count("*").alias("cells"), F.countDistinct("product_id", "group_id").alias("groups")).first()
    written = (
        tables.read(spark, GROUP_PREFERENCE_PAIRS, cfg, ds=ds)
        .agg(
            F.count("*").alias("pairs"),
            F.count(F.when(F.col("conflict"), 1)).alias("conflict_pairs"),
            *(F.count(F.when(F.col("split") == split, 1)).alias(f"pairs_{split}") for split in SPLITS),
        )
        .first()
    )
    metrics = {
        "cells": cells["cells"],
        "groups": cells["groups"],
        "unknown_creative_cells": unknown_creative_cells(ctr, creatives).count(),
        **written.asDict(),
    }
    splits = " / ".join(f"{split} {metrics[f'pairs_{split}']}" for split in SPLITS)
    unknown = metrics["unknown_creative_cells"]
    print(
        f"build_preference_pairs: {metrics['cells']} (group, creative) cells over {metrics['groups']} groups, "
        f"{metrics['pairs']} pairs ({metrics['conflict_pairs']} conflict; {splits})"
        + (f"; {unknown} cells of creatives missing from creatives have no pairs" if unknown else "")
    )
    mlflow.log_metrics(metrics)
    quality.gate(ctx, quality_checks(spark, cfg, ds))
    tracking.log_table_input(spark, IMPRESSIONS, cfg, context="clicks")
    tracking.log_table_input(spark, USER_GROUPS, cfg, context="groups")
    tracking.log_table_input(spark, CREATIVES, cfg, context="prompts", version=creatives_version)
