"""The GRM's grading against the oracle: the unseen prompts and the two ranking measures."""

import numpy as np
import pytest

from osmf_lib.evaluation.grm import UNSEEN_PROMPTS, ranking_quality, unseen_prompts


def test_unseen_prompts_are_distinct_never_logged_and_the_same_every_run() -> None:
    first = unseen_prompts("p00001", 0, set())
    assert len(first) == len(set(first)) == UNSEEN_PROMPTS
    assert unseen_prompts("p00001", 0, set()) == first
    assert unseen_prompts("p00001", 1, set()) != first
    avoided = unseen_prompts("p00001", 0, set(first[:10]))
    assert not set(avoided) & set(first[:10])


def test_ranking_quality_is_spearman_and_relative_regret_of_the_favourite() -> None:
    truth = np.array([0.02, 0.04, 0.05, 0.03])
    assert ranking_quality(truth * 7, truth) == (pytest.approx(1.0), 0.0)
    rho, regret = ranking_quality(np.array([4.0, 3.0, 1.0, 2.0]), truth)
    assert rho == pytest.approx(-0.8)
    assert regret == pytest.approx((0.05 - 0.02) / 0.05)
