"""Pure parts of the grouping evaluation; the stage itself runs in test_embeddings' nightly chain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from osmf_lib.evaluation.grouping import Metric, ari_metrics, ndcg_at


def test_ndcg_rewards_the_true_order_and_penalises_the_reverse() -> None:
    gains = np.array([1.0, 0.5, 0.0])
    assert ndcg_at(gains, gains) == pytest.approx(1.0)
    # Reversed: gains 0, 0.5, 1 at discounts 1, 1/log2(3), 1/2 against the ideal 1 + 0.5/log2(3).
    reversed_dcg = 0.5 / np.log2(3) + 1.0 / 2
    assert ndcg_at(-gains, gains) == pytest.approx(reversed_dcg / (1.0 + 0.5 / np.log2(3)))


def test_ndcg_breaks_ties_in_catalogue_order() -> None:
    assert ndcg_at(np.zeros(3), np.array([0.0, 1.0, 0.0]), top=1) == 0.0


def test_ari_is_reported_per_model_and_per_category_weighted_by_audience() -> None:
    sizes = pd.Series({"p1": 100, "p2": 300, "p3": 50})
    categories = pd.Series({"p1": "books", "p2": "books", "p3": "toys"})
    aware = pd.Series({"p1": 0.8, "p2": 0.4, "p3": 0.1})
    agnostic = pd.Series({"p1": 0.0, "p2": 0.2, "p3": 0.3})
    metrics = ari_metrics({"product_aware": aware, "product_agnostic": agnostic}, sizes, categories)
    assert metrics == [
        Metric("ari", "product_aware", pytest.approx((80 + 120 + 5) / 450)),
        Metric("ari", "product_aware/books", pytest.approx(0.5)),
        Metric("ari", "product_aware/toys", pytest.approx(0.1)),
        Metric("ari", "product_agnostic", pytest.approx((0 + 60 + 15) / 450)),
        Metric("ari", "product_agnostic/books", pytest.approx(0.15)),
        Metric("ari", "product_agnostic/toys", pytest.approx(0.3)),
    ]
