"""The GRM on a small world whose answer is known: two groups of every product want opposite
backgrounds, so only a model that reads the group can order their conflict pairs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from osmf_lib.config import Config
from osmf_lib.grm import Grm, GrmError, TrainedGrm, evaluate, fit_grm
from osmf_lib.grm.features import phrases

SCENES = ("a sunlit beach scene", "a rustic kitchen scene", "a misty forest scene", "a busy city street scene")
TONES = ("warm golden tones", "cool blue tones", "soft pastel tones")
# Log-odds each group adds for a phrase: group 0 wants beach and warm, group 1 kitchen and cool.
TASTE = {
    0: {"a sunlit beach scene": 0.8, "a rustic kitchen scene": -0.8, "warm golden tones": 0.6, "cool blue tones": -0.6},
    1: {"a sunlit beach scene": -0.8, "a rustic kitchen scene": 0.8, "warm golden tones": -0.6, "cool blue tones": 0.6},
}
PROMPTS = [f"{scene}, {tone}" for scene, tone in itertools.product(SCENES, TONES)]
# Shown in the logs; the other prompts are never logged, so they test generalisation.
LOGGED = PROMPTS[::2]
UNSEEN = PROMPTS[1::2]
PRODUCTS = 16
SPLIT = {**{i: "train" for i in range(12)}, 12: "validation", 13: "validation", 14: "test", 15: "test"}
SHOWN = 4000


def true_logit(group: int, prompt: str) -> float:
    return -3.0 + sum(TASTE[group].get(part, 0.0) for part in phrases(prompt))


def _world() -> dict[str, pd.DataFrame]:
    products = pd.DataFrame(
        {
            "product_id": [f"p{i:02d}" for i in range(PRODUCTS)],
            "title": [f"Ceramic Mug No. {i}" for i in range(PRODUCTS)],
            "category": "home",
            "image_uri": None,
        }
    )
    profiles = pd.DataFrame(
        [
            (pid, group, feature, share)
            for pid in products["product_id"]
            for group, gender in ((0, "female"), (1, "male"))
            for feature, share in ((f"gender={gender}", 1.0), ("interests=home", 0.5))
        ],
        columns=["product_id", "group_id", "feature", "share"],
    )
    cells, pairs = [], []
    for i, pid in enumerate(products["product_id"]):
        for group in (0, 1):
            ctr = {p: 1 / (1 + math.exp(-true_logit(group, p))) for p in LOGGED}
            cells += [(pid, group, p, SHOWN, round(SHOWN * rate), SPLIT[i]) for p, rate in ctr.items()]
            for a, b in itertools.permutations(LOGGED, 2):
                if ctr[a] > ctr[b] * 1.05:
                    flipped = true_logit(1 - group, a) < true_logit(1 - group, b)
                    pairs.append((pid, group, a, b, flipped, SPLIT[i]))
    return {
        "cells": pd.DataFrame(cells, columns=["product_id", "group_id", "prompt", "impressions", "clicks", "split"]),
        "pairs": pd.DataFrame(
            pairs, columns=["product_id", "group_id", "chosen_prompt", "rejected_prompt", "conflict", "split"]
        ),
        "profiles": profiles,
        "products": products,
    }


WORLD = _world()
SETTINGS = ("gpu.device=cpu", "grm.epochs=60", "grm.batch_size=32", "grm.learning_rate=0.003", "grm.dropout=0")


def _fit(cfg: Config, group_aware: bool, **changed: pd.DataFrame) -> TrainedGrm:
    data = {**WORLD, **changed}
    return fit_grm(data["cells"], data["pairs"], data["profiles"], data["products"], cfg, group_aware=group_aware)


@pytest.fixture(scope="module")
def grm_cfg(make_cfg: Callable[..., Config]) -> Config:
    return make_cfg(*SETTINGS)


@pytest.fixture(scope="module")
def trained(grm_cfg: Config) -> TrainedGrm:
    return _fit(grm_cfg, group_aware=True)


@pytest.fixture(scope="module")
def baseline(grm_cfg: Config) -> TrainedGrm:
    return _fit(grm_cfg, group_aware=False)


def test_only_the_group_aware_model_orders_conflict_pairs(trained: TrainedGrm, baseline: TrainedGrm) -> None:
    assert trained.metrics["test_conflict_pairs"] > 0
    assert trained.metrics["test_pair_accuracy"] >= 0.95
    assert trained.metrics["test_conflict_pair_accuracy"] >= 0.95
    # Each conflict pair is held in both directions; ignoring the group, a model gets exactly half.
    assert baseline.metrics["test_conflict_pair_accuracy"] == pytest.approx(0.5)
    assert trained.metrics["test_auroc"] > baseline.metrics["test_auroc"]
    assert trained.train_losses[-1] < trained.train_losses[0]


def test_prompts_never_logged_are_ranked_by_their_phrases(trained: TrainedGrm) -> None:
    for group in (0, 1):
        rows = pd.DataFrame({"product_id": "p14", "group_id": group, "prompt": UNSEEN})
        rho = spearmanr(trained.grm.score(rows), [true_logit(group, p) for p in UNSEEN]).statistic
        assert rho > 0.8, (group, rho)


def test_a_saved_model_scores_the_same_and_carries_its_nights_groups(trained: TrainedGrm, tmp_path: Path) -> None:
    trained.grm.save(tmp_path / "grm")
    loaded = Grm.load(tmp_path / "grm")
    rows = WORLD["cells"].head(7)
    np.testing.assert_allclose(loaded.score(rows), trained.grm.score(rows), atol=1e-6)
    assert not loaded.group_aware or loaded.model.config.group_aware


def test_dropout_draws_from_the_seed_not_from_what_ran_before(make_cfg: Callable[..., Config]) -> None:
    # Each task is a fresh process whose torch generator starts at a random seed; two draws of it
    # stand for two processes training the same night.
    cfg = make_cfg(*SETTINGS, "grm.epochs=2", "grm.dropout=0.5")
    weights = []
    for process_seed in (1, 2):
        torch.manual_seed(process_seed)
        weights.append([p.detach().clone() for p in _fit(cfg, group_aware=True).grm.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_a_prompt_over_the_token_limit_is_cut_and_counted(make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg(*SETTINGS, "grm.epochs=1", "grm.max_prompt_tokens=12")
    grm = _fit(cfg, group_aware=True).grm
    long = LOGGED[0] + ", " + ", ".join(["with a tall stack of antique leather books"] * 40)
    before = grm.truncated_prompts
    scores = grm.score(pd.DataFrame({"product_id": "p00", "group_id": 0, "prompt": [long, long]}))
    assert grm.truncated_prompts == before + 1  # one distinct prompt, cut once
    clipped = grm.featurizer.store.encoders.clip([long], 12)[0]
    assert long.startswith(clipped) and len(clipped) < len(long)
    assert scores[0] == pytest.approx(
        grm.score(pd.DataFrame({"product_id": ["p00"], "group_id": [0], "prompt": [clipped]}))[0]
    )


def test_a_group_with_a_single_creative_trains_and_scores(grm_cfg: Config) -> None:
    lonely = pd.DataFrame([("p00", 2, LOGGED[0], 500, 20, "train")], columns=WORLD["cells"].columns)
    profiles = pd.concat(
        [WORLD["profiles"], pd.DataFrame([("p00", 2, "gender=female", 1.0)], columns=WORLD["profiles"].columns)]
    )
    grm = _fit(grm_cfg, True, cells=pd.concat([WORLD["cells"], lonely]), profiles=profiles).grm
    assert np.isfinite(grm.score(lonely)).all()


def test_bad_input_is_named(grm_cfg: Config, trained: TrainedGrm) -> None:
    with pytest.raises(GrmError, match=r"products \['p99'\] of the cells are missing from the products table"):
        _fit(grm_cfg, True, cells=WORLD["cells"].assign(product_id="p99"))
    with pytest.raises(GrmError, match="no training pairs"):
        _fit(grm_cfg, True, pairs=WORLD["pairs"].assign(split="test"))
    nan = WORLD["profiles"].copy()
    nan.loc[3, "share"] = float("nan")
    with pytest.raises(GrmError, match=r"group profile of product p00 group 1 has no share for interests=home"):
        _fit(grm_cfg, True, profiles=nan)
    rows = WORLD["cells"].head(3).copy()
    rows.loc[1, "prompt"] = None
    with pytest.raises(GrmError, match="row 1 has no prompt"):
        trained.grm.score(rows)
    with pytest.raises(GrmError, match=r"no group profile for \['p00/7'\]"):
        trained.grm.score(rows.head(1).assign(group_id=7))


def test_metrics_without_data_are_nan_not_guesses(trained: TrainedGrm) -> None:
    empty = evaluate(trained.grm, WORLD["cells"].iloc[:0], WORLD["pairs"].iloc[:0], WORLD["profiles"])
    assert empty["pairs"] == 0 and all(math.isnan(empty[k]) for k in ("pair_accuracy", "auroc", "log_loss"))
    # In this world every pair flips between the two groups; marked otherwise, none is a conflict.
    no_conflict = WORLD["pairs"].assign(conflict=False)
    scores = evaluate(trained.grm, WORLD["cells"], no_conflict, WORLD["profiles"])
    assert math.isnan(scores["conflict_pair_accuracy"]) and scores["pair_accuracy"] > 0.9
