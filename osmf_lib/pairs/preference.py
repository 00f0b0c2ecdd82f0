"""Per product, in pandas: the empirical-Bayes prior of its CTR cells, each cell's posterior, and
the pairs within a group that pass the thresholds (the package docstring has the maths)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import special

from osmf_lib.config import PairsConfig
from osmf_lib.inputs import LINEAGE
from osmf_lib.tables import (
    DS,
    GROUP_CREATIVE_CTR,
    GROUPS_DS,
)

CREDIBLE_MASS = 0.90
WEAK_PRIOR_STRENGTH = 2.0
QUADRATURE_NODES = 512

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
