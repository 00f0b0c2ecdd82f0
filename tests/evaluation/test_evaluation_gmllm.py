"""The generators' grading against the oracle of the tiny world: lift, headroom, hacking gap."""

import numpy as np
import pandas as pd
import pytest

from osmf_lib.evaluation.gmllm import grade
from osmf_lib.synth.oracle import Oracle


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle.of_world(7, "tiny")


def _table(oracle: Oracle) -> tuple[dict[str, pd.DataFrame], pd.Series, pd.Series]:
    """Two products of two groups; each group is one latent segment's users."""
    keys, audiences = [], {}
    for product in ("p00001", "p00002"):
        for group, segment in enumerate(oracle.segments(product)[:2]):
            keys.append((product, group))
            audiences[(product, group)] = oracle.segment_users(product, segment)[:50]
    index = pd.MultiIndex.from_tuples(keys, names=["product_id", "group_id"])
    audiences = pd.Series(audiences).reindex(index)
    ceiling = [oracle.best_prompt(p, audiences[(p, g)]) for p, g in keys]
    one = {p: oracle.best_prompt(p) for p, _ in keys}
    worst = (
        "a busy city street scene, black and white tones, futuristic tech style, neon glow, with gift boxes and ribbons"
    )

    def frame(prompts, usable=True):
        return pd.DataFrame({"prompt": prompts, "usable": usable}, index=index)

    written = {
        "best_logged": frame([worst] * 4),
        "onesize_dpo": frame([one[p] for p, _ in keys]),
        "group_dpo": frame(ceiling),
        "ceiling": frame(ceiling),
    }
    return written, audiences, audiences.map(len)


def test_lift_headroom_and_distinctness_read_the_oracle(oracle) -> None:
    written, audiences, weights = _table(oracle)
    by = {(m.metric, m.slice): m.value for m in grade(written, audiences, weights, oracle, None, pd.DataFrame())}
    assert by[("headroom_captured", "group_dpo")] == pytest.approx(1.0)
    assert by[("headroom_captured", "best_logged")] == pytest.approx(0.0)
    assert by[("lift_vs_onesize", "onesize_dpo")] == pytest.approx(0.0)
    assert by[("lift_vs_onesize", "group_dpo")] >= 0.0
    assert by[("oracle_ctr", "ceiling")] >= by[("oracle_ctr", "onesize_dpo")] > by[("oracle_ctr", "best_logged")]
    assert by[("distinct_share", "onesize_dpo")] == 0.0
    assert by[("unusable_share", "group_dpo")] == 0.0
    assert ("hacking_gap", "group_dpo") not in by  # no GRM, no judge to compare with
    expected = np.average(
        [
            oracle.expected_ctr(p, written["group_dpo"].at[(p, g), "prompt"], audiences[(p, g)])
            for p, g in audiences.index
        ],
        weights=weights,
    )
    assert by[("oracle_ctr", "group_dpo")] == pytest.approx(expected)


def test_a_night_without_test_groups_grades_nothing(oracle) -> None:
    written, audiences, weights = _table(oracle)
    empty = {name: frame.iloc[:0] for name, frame in written.items()}
    metrics = grade(empty, audiences.iloc[:0], weights.iloc[:0], oracle, None, pd.DataFrame())
    assert [(m.metric, m.value) for m in metrics] == [("groups", 0.0)]
