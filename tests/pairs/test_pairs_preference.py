"""Per product, in pandas: the prior, the posterior interval, P(A > B) and the pair filters."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from osmf_lib.config import PairsConfig
from osmf_lib.pairs.preference import (
    PAIR_COLUMNS,
    WEAK_PRIOR_STRENGTH,
    fit_prior,
    prob_greater,
    product_pairs,
    smooth_product,
)
from osmf_lib.tables import (
    GROUP_CREATIVE_CTR,
)

DS = dt.date(2026, 11, 3)
VERSION = "osmf-paag/1"
# Every pair the filters would take, so a test moves one filter at a time.
OPEN = PairsConfig(min_impressions=1, ratio_min=1.0001, ratio_max=100.0, min_confidence=0.0001)


# ---------------------------------------------------------------------------------------------
# The prior, the interval and P(A > B)


def test_the_prior_recovers_a_known_beta_by_moments() -> None:
    rng = np.random.default_rng(3)
    impressions = rng.integers(300, 3000, size=600)
    clicks = rng.binomial(impressions, rng.beta(8.0, 192.0, size=600))
    prior = fit_prior(impressions, clicks)
    assert prior.alpha / (prior.alpha + prior.beta) == pytest.approx(0.04, rel=0.05)
    assert prior.alpha + prior.beta == pytest.approx(200.0, rel=0.3)


@pytest.mark.parametrize(
    ("impressions", "clicks"),
    [
        ([100], [5]),  # one cell
        ([100, 100, 100], [5, 5, 5]),  # no spread beyond binomial noise
        ([100, 50], [0, 0]),  # no clicks
        ([3, 4], [3, 4]),  # only clicks
        ([1, 1, 1], [0, 1, 0]),  # one impression per cell: the spread says nothing about the prior
    ],
)
def test_degenerate_cells_get_a_weak_prior_at_the_pooled_ctr(impressions: list[int], clicks: list[int]) -> None:
    prior = fit_prior(impressions, clicks)
    assert prior.alpha + prior.beta == pytest.approx(WEAK_PRIOR_STRENGTH)
    assert prior.alpha / (prior.alpha + prior.beta) == pytest.approx((sum(clicks) + 1) / (sum(impressions) + 2))


def _cells(counts: dict[tuple[int, str], tuple[int, int]], product_id: str = "p1") -> pd.DataFrame:
    """group_creative_ctr-like rows of one product from {(group, creative): (impressions, clicks)}."""
    return pd.DataFrame(
        [
            {
                "product_id": product_id,
                "group_id": group,
                "paag_version": VERSION,
                "groups_ds": DS,
                "creative_id": creative,
                "impressions": n,
                "clicks": k,
            }
            for (group, creative), (n, k) in counts.items()
        ]
    )


def test_the_posterior_mean_and_interval_follow_the_product_prior() -> None:
    cells = _cells({(0, "a"): (40, 4), (0, "b"): (400, 12), (1, "a"): (4000, 200), (1, "b"): (90, 9)})
    prior = fit_prior(cells["impressions"], cells["clicks"])
    smoothed = smooth_product(cells.sample(frac=1.0, random_state=1))
    assert list(smoothed.columns) == [c for c in GROUP_CREATIVE_CTR.column_names if c != "ds"]
    smoothed = smoothed.set_index(["group_id", "creative_id"])
    for (group, creative), (n, k) in {(0, "a"): (40, 4), (1, "a"): (4000, 200)}.items():
        row = smoothed.loc[(group, creative)]
        posterior = stats.beta(prior.alpha + k, prior.beta + n - k)
        assert (row["prior_alpha"], row["prior_beta"]) == pytest.approx(prior)
        assert row["ctr"] == pytest.approx(k / n)
        assert row["ctr_smoothed"] == pytest.approx(posterior.mean())
        assert (row["ctr_low"], row["ctr_high"]) == pytest.approx(posterior.interval(0.90))
        assert row["ctr_low"] < row["ctr_smoothed"] < row["ctr_high"]
    width = smoothed["ctr_high"] - smoothed["ctr_low"]
    assert width[(1, "a")] < width[(0, "a")]  # more impressions, a narrower interval


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((30.0, 170.0), (20.0, 180.0)),
        ((5.5, 100.0), (3.2, 40.0)),
        ((400.0, 9600.0), (4.0, 90.0)),  # a narrow posterior against a wide one
        ((4.0, 90.0), (400.0, 9600.0)),
        ((12.0, 300.0), (12.0, 300.0)),  # the same posterior: one half
        ((0.3, 5.0), (0.6, 2.0)),  # below one: densities that are infinite at 0
    ],
)
def test_confidence_agrees_with_monte_carlo(a: tuple[float, float], b: tuple[float, float]) -> None:
    rng = np.random.default_rng(7)
    draws = 1_000_000
    sampled = float(np.mean(rng.beta(*a, size=draws) > rng.beta(*b, size=draws)))
    computed = prob_greater(*([x] for x in (*a, *b)))[0]
    # Quadrature is within 0.001; a million draws within about 0.0025 at 5 standard errors.
    assert computed == pytest.approx(sampled, abs=0.0035)
    assert prob_greater(*([x] for x in (*a, *b))) == pytest.approx([computed])  # deterministic


# ---------------------------------------------------------------------------------------------
# Pairs


def _smoothed(counts: dict[tuple[int, str], tuple[int, int]], prior: tuple[float, float] = (1.0, 19.0)) -> pd.DataFrame:
    """CTR rows under a fixed prior, so a test states the posteriors it filters."""
    cells = _cells(counts)
    alpha, beta = prior[0] + cells["clicks"], prior[1] + cells["impressions"] - cells["clicks"]
    return cells.assign(prior_alpha=prior[0], prior_beta=prior[1], ctr_smoothed=alpha / (alpha + beta))


def _found(ctr: pd.DataFrame, cfg: PairsConfig) -> set[tuple[int, str, str]]:
    found = product_pairs(ctr, cfg)
    assert list(found.columns) == PAIR_COLUMNS
    return set(zip(found["group_id"], found["chosen_creative_id"], found["rejected_creative_id"], strict=True))


def test_pairs_are_oriented_and_every_filter_applies() -> None:
    ctr = _smoothed({(0, "a"): (2000, 230), (0, "b"): (2000, 200), (0, "c"): (2000, 100), (0, "few"): (30, 8)})
    # Posterior means 0.114, 0.099, 0.050 and 0.180: a/b is 1.15, few/a 1.57, every other ratio above 1.8.
    everything = {(0, "a", "b"), (0, "a", "c"), (0, "b", "c"), (0, "few", "a"), (0, "few", "b"), (0, "few", "c")}
    assert _found(ctr, OPEN) == everything
    assert _found(ctr, OPEN.model_copy(update={"min_impressions": 31})) == {(0, "a", "b"), (0, "a", "c"), (0, "b", "c")}
    assert _found(ctr, OPEN.model_copy(update={"ratio_min": 1.05, "ratio_max": 1.2})) == {(0, "a", "b")}
    assert _found(ctr, OPEN.model_copy(update={"ratio_min": 1.5})) == everything - {(0, "a", "b")}
    # 30 impressions make few's larger ratio over a less sure than a's small one over b.
    assert _found(ctr, OPEN.model_copy(update={"min_confidence": 0.9})) == everything - {(0, "few", "a")}
    confidence = product_pairs(ctr, OPEN).set_index(["chosen_creative_id", "rejected_creative_id"])["confidence"]
    assert confidence[("few", "a")] < 0.9 < confidence[("a", "b")] < confidence[("few", "c")] < confidence[("a", "c")]


def test_a_group_with_one_creative_or_no_difference_yields_no_pairs() -> None:
    assert _found(_smoothed({(0, "a"): (500, 50)}), OPEN) == set()
    assert _found(_smoothed({(0, "a"): (500, 50), (0, "b"): (500, 50)}), OPEN) == set()


def test_a_pair_that_flips_between_groups_is_kept_in_both_as_a_conflict() -> None:
    ctr = _smoothed(
        {
            (0, "a"): (2000, 300),
            (0, "b"): (2000, 150),
            (0, "c"): (2000, 60),
            (1, "a"): (2000, 150),
            (1, "b"): (2000, 300),
            (1, "c"): (2000, 60),
            (2, "a"): (2000, 300),
            (2, "b"): (2000, 100),
        }
    )
    found = product_pairs(ctr, OPEN)
    flags = {
        (g, c, r): f
        for g, c, r, f in zip(
            found["group_id"],
            found["chosen_creative_id"],
            found["rejected_creative_id"],
            found["conflict"],
            strict=True,
        )
    }
    assert flags == {
        (0, "a", "b"): True,
        (0, "a", "c"): False,
        (0, "b", "c"): False,
        (1, "b", "a"): True,
        (1, "a", "c"): False,
        (1, "b", "c"): False,
        (2, "a", "b"): True,
    }
