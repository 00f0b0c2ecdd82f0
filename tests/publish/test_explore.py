"""Exploration: a group's traffic split between its best candidate and the others by Thompson sampling."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from osmf_lib.config import PublishConfig
from osmf_lib.publish.explore import candidate_shares, traffic_shares

DS = dt.date(2026, 11, 3)


def _group(scores, impressions=(0, 0, 0), clicks=(0, 0, 0), best=0) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame(
        {
            "selected": np.arange(n) == best,
            "grm_score": scores,
            "prior_mean": 0.05,
            "prior_strength": 200.0,
            "impressions": impressions[:n],
            "clicks": clicks[:n],
        }
    )


def test_the_best_keeps_all_but_the_explored_share_and_shares_sum_to_one():
    shares = traffic_shares(_group([-1.0, -2.0, -3.0]), explore=0.2, draws=2_000, seed=1)
    assert shares[0] == pytest.approx(0.8) and shares.sum() == pytest.approx(1.0)
    # The other candidate the GRM likes more is more likely the better one: it explores more.
    assert shares[1] > shares[2] > 0


def test_no_exploration_or_no_other_candidate_serves_the_best_alone():
    assert traffic_shares(_group([-1.0, -2.0]), explore=0.0, draws=100, seed=1).tolist() == [1.0, 0.0]
    assert traffic_shares(_group([-1.0]), explore=0.2, draws=100, seed=1).tolist() == [1.0]


def test_clicks_so_far_update_the_grms_prior():
    # Same GRM score; candidate 2's prompt was shown 4,000 times before and hardly clicked.
    prior_only = traffic_shares(_group([-1.0, -3.0, -3.0]), explore=0.2, draws=4_000, seed=3)
    assert prior_only[1] == pytest.approx(prior_only[2], abs=0.02)
    updated = traffic_shares(
        _group([-1.0, -3.0, -3.0], impressions=(0, 0, 4_000), clicks=(0, 0, 20)), explore=0.2, draws=4_000, seed=3
    )
    assert updated[2] < 0.02 < 0.18 < updated[1]
    # A prompt that proved itself draws the exploration even against a better GRM score.
    proven = traffic_shares(
        _group([-1.0, -2.0, -3.0], impressions=(0, 0, 4_000), clicks=(0, 0, 800)), explore=0.2, draws=4_000, seed=3
    )
    assert proven[2] > 0.19


def test_the_same_seed_gives_the_same_shares_without_a_grm_alike():
    group = _group([np.nan, np.nan, np.nan])
    first = traffic_shares(group, explore=0.3, draws=500, seed=9)
    assert first.tolist() == traffic_shares(group, explore=0.3, draws=500, seed=9).tolist()
    assert first[1] == pytest.approx(0.15, abs=0.03) and first[2] == pytest.approx(0.15, abs=0.03)


def test_candidate_shares_bring_a_prompts_clicks_along_under_its_new_id(spark):
    """Tonight's candidates of one group; the group clicked one of the prompts on an earlier night,
    when it was served under another id."""
    generated = pd.DataFrame(
        {
            "product_id": "p",
            "group_id": 0,
            "candidate": [0, 1, 2],
            "prompt": ["best", "shown before", "never shown"],
            "image_uri": ["a.png", "b.png", "c.png"],
            "grm_score": [-1.0, -3.0, -3.0],
            "selected": [True, False, False],
        }
    )
    ctr = pd.DataFrame(
        {
            "product_id": "p",
            "group_id": 0,
            "creative_id": ["gen-earlier", "logged"],
            "impressions": [5_000, 5_000],
            "clicks": [1_000, 250],
            "prior_alpha": 5.0,
            "prior_beta": 95.0,
        }
    )
    creatives = pd.DataFrame(
        {"product_id": "p", "creative_id": ["gen-earlier", "logged"], "prompt": ["shown before", "x"]}
    )
    frames = [spark.createDataFrame(frame) for frame in (generated, ctr, creatives)]
    cfg = PublishConfig(explore_share=0.2, explore_draws=1_000)
    shares = candidate_shares(*frames, DS, cfg).toPandas().set_index("candidate")["traffic_share"]
    assert shares[0] == pytest.approx(0.8) and shares[1] > 0.19 and shares[2] < 0.01
    assert set(candidate_shares(*frames, DS, cfg).columns) == {*generated.columns, "traffic_share"}
