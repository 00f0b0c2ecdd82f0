"""Exploration (docs/design.md#exploration): how a group's traffic is split among its rendered candidates.

The best candidate (best-of-N by the GRM, `generated_creatives.selected`) gets `1 - explore_share`
of the group's traffic. The rest is split among the group's other rendered candidates by Thompson
sampling: each gets the chance that it is the best of them under its Beta posterior of the
group's CTR.

- **Prior:** mean sigmoid(GRM logit); the GRM is fitted to click counts as well as pairs, so its
  logit is a click logit for the group. Strength: the product's empirical-Bayes prior strength
  (prior_alpha + prior_beta of group_creative_ctr), the logs' own measure of how far a
  creative's CTR strays from the product's. Without a GRM score, the product's prior mean.
- **Update:** the group's impressions and clicks so far on the same prompt (group_creative_ctr
  over the look-back window, through the creatives that carried it), so a description served on
  an earlier night brings its clicks along under a new id.

Why not serve the best alone: the next night learns only about prompts someone was shown. The
pairs, the GRM and Group-DPO read the generated creatives' clicks as they read logged ones. A
group that only ever sees its best yields no pair between its candidates. The draws are seeded
per night and group, so a rerun of the night gives the same shares.
"""

from __future__ import annotations

import zlib
from datetime import date

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from osmf_lib.config import PublishConfig
from osmf_lib.pairs.preference import WEAK_PRIOR_STRENGTH
from osmf_lib.tables import GROUP_PROFILES

KEY = list(GROUP_PROFILES.keys)
# A prior mean of exactly 0 or 1 is no Beta distribution.
EDGE = 1e-6
SHARE_SCHEMA = "product_id STRING, group_id INT, candidate INT, traffic_share DOUBLE"


def group_seed(ds: date, product_id: str, group_id: int) -> int:
    return zlib.crc32(f"explore/{ds.isoformat()}/{product_id}/{group_id}".encode())


def traffic_shares(group: pd.DataFrame, explore: float, draws: int, seed: int) -> np.ndarray:
    """One group's rendered candidates (columns: selected, grm_score, prior_mean, prior_strength,
    impressions, clicks) -> each one's share of the group's traffic, summing to 1."""
    best = group["selected"].to_numpy(dtype=bool)
    shares = best.astype(np.float64)
    others = np.flatnonzero(~best)
    if not best.any():  # generate_creatives selects one whenever it rendered one; else share alike
        return np.full(len(group), 1 / len(group))
    if explore == 0 or not len(others):
        return shares
    rows = group.iloc[others]
    score = rows["grm_score"].to_numpy(dtype=np.float64)
    mean = np.where(np.isnan(score), rows["prior_mean"].to_numpy(dtype=np.float64), 1 / (1 + np.exp(-score)))
    mean = np.clip(np.nan_to_num(mean, nan=0.5), EDGE, 1 - EDGE)
    strength = np.nan_to_num(rows["prior_strength"].to_numpy(dtype=np.float64), nan=WEAK_PRIOR_STRENGTH)
    clicks = rows["clicks"].to_numpy(dtype=np.float64)
    misses = rows["impressions"].to_numpy(dtype=np.float64) - clicks
    samples = np.random.default_rng(seed).beta(
        strength * mean + clicks, strength * (1 - mean) + misses, (draws, len(rows))
    )
    wins = np.bincount(samples.argmax(axis=1), minlength=len(rows)) / draws
    shares *= 1 - explore
    shares[others] = explore * wins
    return shares


def candidate_shares(
    generated: DataFrame, ctr: DataFrame, creatives: DataFrame, ds: date, cfg: PublishConfig
) -> DataFrame:
    """Tonight's rendered candidates (generated_creatives rows of ds with an image) with their
    `traffic_share`; `ctr` is the night's group_creative_ctr, `creatives` the creatives as of ds."""
    prompts = creatives.select("product_id", "creative_id", "prompt")
    so_far = (
        ctr.join(prompts, ["product_id", "creative_id"])
        .groupBy(*KEY, "prompt")
        .agg(F.sum("impressions").alias("impressions"), F.sum("clicks").alias("clicks"))
    )
    # Every row of a product holds the product's prior.
    prior = ctr.groupBy("product_id").agg(
        F.max(F.col("prior_alpha") + F.col("prior_beta")).alias("prior_strength"),
        F.max(F.col("prior_alpha") / (F.col("prior_alpha") + F.col("prior_beta"))).alias("prior_mean"),
    )
    rendered = (
        generated.where(F.col("image_uri").isNotNull())
        .join(so_far, [*KEY, "prompt"], "left")
        .join(prior, "product_id", "left")
        .fillna(0, ["impressions", "clicks"])
    )
    explore, draws = cfg.explore_share, cfg.explore_draws

    def one_group(group: pd.DataFrame) -> pd.DataFrame:
        group = group.sort_values("candidate").reset_index(drop=True)
        product, number = group["product_id"].iat[0], int(group["group_id"].iat[0])
        shares = traffic_shares(group, explore, draws, group_seed(ds, product, number))
        return group[[*KEY, "candidate"]].assign(traffic_share=shares)

    needed = rendered.select(
        *KEY, "candidate", "selected", "grm_score", "prior_mean", "prior_strength", "impressions", "clicks"
    )
    shares = needed.groupBy(*KEY).applyInPandas(one_group, SHARE_SCHEMA)
    return rendered.drop("impressions", "clicks", "prior_mean", "prior_strength").join(shares, [*KEY, "candidate"])
