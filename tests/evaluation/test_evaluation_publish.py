"""Splitting the gap to the ceiling: which creative a group serves most, and which of its
creatives the oracle rates best."""

import pandas as pd
import pytest

from osmf_lib.evaluation.publish import KEY, candidate_prompts
from osmf_lib.synth.oracle import Oracle

WORST = "a busy city street scene, black and white tones, futuristic tech style, neon glow, with gift boxes and ribbons"


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle.of_world(7, "tiny")


def test_the_selected_creative_has_the_largest_share_and_the_best_candidate_may_be_the_logged_one(oracle):
    product = "p00001"
    segments = oracle.segments(product)[:3]
    users = [oracle.segment_users(product, segment)[:50] for segment in segments]
    best = [oracle.best_prompt(product, group_users) for group_users in users]
    audiences = pd.Series(users, index=pd.MultiIndex.from_tuples([(product, g) for g in range(3)], names=KEY))
    creatives = pd.DataFrame(
        [
            # Group 0 serves its worst creative most and explores its best one.
            (product, 0, "c1", WORST, 0.8),
            (product, 0, "c2", best[0], 0.2),
            # Group 1 serves one creative, worse than its best logged one.
            (product, 1, "c3", WORST, 1.0),
            # Group 2 has no creative of its own.
        ],
        columns=[*KEY, "creative_id", "prompt", "traffic_share"],
    )
    logged = pd.Series([WORST, best[1], best[2]], index=audiences.index)
    got = candidate_prompts(oracle, audiences, creatives, logged)
    assert got["selected"].tolist() == [WORST, WORST, best[2]]
    assert got["best_candidate"].tolist() == best
