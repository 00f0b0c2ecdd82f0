"""Benchmark: GRM training and scoring against a plain logistic regression on the same features.

    OMP_NUM_THREADS=2 .venv/bin/python bench/grm.py                  # CPU, demo-sized night
    .venv/bin/python bench/grm.py --device cuda --rows 2000000       # the same on a GPU

A synthetic night the size of the demo lakehouse's (500 products, 2-3 groups each, 8 logged
prompts per product made of the world's style phrases, ~180 impressions a cell, clicks drawn from
a taste per group), turned into cells and pairs by the pipeline's own `osmf_lib.pairs`. Both
models see the same features (group attribute profile, product vector, prompt phrase vector):
the GRM through its network, scikit-learn's LogisticRegression as one concatenated row, fitted on
the cells' impressions (clicks as positives, the rest as negatives, by weight).

Reported per model: training time and training examples per second (GRM: cells + pairs per
epoch x epochs; LR: cells, weighted), scoring rows per second (the same rows for both, feature
assembly included, prompts already encoded: MiniLM runs once per distinct phrase, and its cost
is reported on its own line), and validation pair accuracy, for orientation. Target: scoring
>= 20k rows/s on the 2-core CPU machine (best-of-N and on-policy DPO score every candidate).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from osmf_lib.config import load_config
from osmf_lib.grm import evaluate, fit_grm
from osmf_lib.grm.features import PromptEncoder
from osmf_lib.paag.features import Encoders, EncoderSpec
from osmf_lib.pairs.preference import product_pairs, smooth_product
from osmf_lib.synth.vocab import STYLE, STYLE_ATTRIBUTES, compose_prompt

PROFILE_FEATURES = 40
CREATIVES = 8
MEAN_IMPRESSIONS = 180
NEW_PROMPTS = 500


def synthetic_night(products: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Cells, pairs, profiles and products of a demo-sized night with a known taste per group."""
    rng = np.random.default_rng(seed)
    phrase_index = {(a, v): i for i, (a, v) in enumerate((a, v) for a in STYLE_ATTRIBUTES for v in STYLE[a])}
    # A group's taste over the style phrases is a fixed linear function of its attribute profile.
    taste_map = rng.normal(0.0, 0.6, size=(PROFILE_FEATURES, len(phrase_index)))
    profiles, cells, catalog = [], [], []
    for p in range(products):
        pid = f"p{p:05d}"
        catalog.append((pid, f"Product {p}", f"category {p % 8}", None))
        styles = [{a: rng.choice(list(STYLE[a])) for a in STYLE_ATTRIBUTES} for _ in range(CREATIVES)]
        prompts = [compose_prompt(s) for s in styles]
        for g in range(int(rng.integers(2, 4))):
            share = rng.dirichlet(np.full(PROFILE_FEATURES, 0.3))
            profiles += [(pid, g, f"attribute={f}", float(s)) for f, s in enumerate(share) if s > 1e-3]
            taste = share @ taste_map
            for c, (style, prompt) in enumerate(zip(styles, prompts, strict=True)):
                logit = -3.0 + sum(taste[phrase_index[(a, v)]] for a, v in style.items()) / 2
                shown = int(rng.poisson(MEAN_IMPRESSIONS)) + 10
                clicks = int(rng.binomial(shown, 1 / (1 + np.exp(-logit))))
                cells.append((pid, g, f"{pid}-c{c}", prompt, shown, clicks))
    cells = pd.DataFrame(cells, columns=["product_id", "group_id", "creative_id", "prompt", "impressions", "clicks"])
    cells["split"] = np.where(cells["product_id"].str[-1].isin(["0"]), "validation", "train")
    lineage = {"paag_version": "bench", "groups_ds": None}
    pairs = []
    cfg = load_config().pairs
    for _, rows in cells.assign(**lineage).groupby("product_id"):
        smoothed = smooth_product(rows.drop(columns=["prompt", "split"]))
        found = product_pairs(smoothed, cfg)
        prompt = rows.drop_duplicates("creative_id").set_index("creative_id")["prompt"]
        pairs.append(
            found.assign(
                chosen_prompt=found["chosen_creative_id"].map(prompt),
                rejected_prompt=found["rejected_creative_id"].map(prompt),
                split=rows["split"].iloc[0],
            )
        )
    return {
        "cells": cells,
        "pairs": pd.concat(pairs, ignore_index=True),
        "profiles": pd.DataFrame(profiles, columns=["product_id", "group_id", "feature", "share"]),
        "products": pd.DataFrame(catalog, columns=["product_id", "title", "category", "image_uri"]),
    }


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=500)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per scoring call")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cfg = load_config(overrides=[f"gpu.device={args.device}"])
    night = synthetic_night(args.products)
    cells, pairs, profiles, products = (night[k] for k in ("cells", "pairs", "profiles", "products"))
    groups = len(profiles[["product_id", "group_id"]].drop_duplicates())
    print(f"night: {len(cells):,} cells, {len(pairs):,} pairs, {groups:,} groups")

    start = time.perf_counter()
    trained = fit_grm(cells, pairs, profiles, products, cfg)
    grm_train = time.perf_counter() - start
    grm = trained.grm
    train = cells["split"] == "train"
    grm_examples = (train.sum() + (pairs["split"] == "train").sum()) * cfg.grm.epochs

    rng = np.random.default_rng(1)
    rows = cells.iloc[rng.integers(0, len(cells), args.rows)][["product_id", "group_id", "prompt"]]
    # Prompts the GRM never saw, through a fresh encoder: every phrase goes through MiniLM.
    cold = PromptEncoder(Encoders(EncoderSpec.from_config(cfg), grm.featurizer.device), cfg.grm.max_prompt_tokens)
    cold(["warm-up"])
    new_prompts = sorted(set(cells["prompt"]))[:NEW_PROMPTS]
    encoder_rate = len(new_prompts) / best_of(1, lambda: cold(new_prompts))
    grm.score(rows.head(1000))  # warm-up
    grm_score = best_of(args.repeats, lambda: grm.score(rows))

    def features(frame: pd.DataFrame) -> np.ndarray:
        inputs = grm.featurizer.inputs(frame, profiles)
        return torch.cat(list(inputs.take(slice(None)).values()), dim=-1).cpu().numpy()

    x = features(cells[train])
    n, k = (cells.loc[train, c].to_numpy(dtype=float) for c in ("impressions", "clicks"))
    start = time.perf_counter()
    lr = LogisticRegression(max_iter=500).fit(
        np.r_[x, x], np.r_[np.ones(len(x)), np.zeros(len(x))], sample_weight=np.r_[k, n - k]
    )
    lr_train = time.perf_counter() - start
    lr_score = best_of(args.repeats, lambda: lr.decision_function(features(rows)))
    validation = pairs[pairs["split"] == "validation"]

    def lr_accuracy() -> float:
        chosen = lr.decision_function(features(validation.assign(prompt=validation["chosen_prompt"])))
        rejected = lr.decision_function(features(validation.assign(prompt=validation["rejected_prompt"])))
        return float((chosen > rejected).mean())

    grm_accuracy = evaluate(grm, cells.iloc[:0], validation, profiles)["pair_accuracy"]
    table = [
        ("GRM (torch, " + args.device + ")", grm_train, grm_examples / grm_train, args.rows / grm_score, grm_accuracy),
        ("logistic regression (scikit-learn)", lr_train, train.sum() / lr_train, args.rows / lr_score, lr_accuracy()),
    ]
    header = ("model", "train s", "train examples/s", "score rows/s", "ratio vs LR (score)", "val pair accuracy")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, seconds, train_rate, score_rate, accuracy in table:
        ratio = score_rate / table[1][3]
        print(f"| {name} | {seconds:.1f} | {train_rate:,.0f} | {score_rate:,.0f} | {ratio:.2f}x | {accuracy:.3f} |")
    print(f"\nprompts never seen, through MiniLM phrase by phrase (cold cache): {encoder_rate:,.0f} prompts/s")


if __name__ == "__main__":
    main()
