"""Training the GRM on a night's group-wise CTRs and preference pairs, and its held-out metrics.

Loss per step = Bradley-Terry on a batch of pairs, -log sigmoid(s_chosen - s_rejected), plus
`grm.pointwise_weight` x the binomial negative log-likelihood per impression of a batch of
(group, creative) cells. CAIG's point-wise term is an MSE on CTRs; with counts this small (median
7 clicks a cell) the binomial likelihood is the honest one: a cell of 1,000 impressions says more
than a cell of 50, and an MSE on raw CTRs cannot tell them apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from osmf_lib.config import Config
from osmf_lib.device import resolve_device
from osmf_lib.grm.features import GrmError, require_columns
from osmf_lib.grm.model import Featurizer, Grm, GrmConfig, GrmModel, Inputs, build_featurizer
from osmf_lib.paag.features import Encoders, EncoderSpec

CELL_COLUMNS = ("product_id", "group_id", "prompt", "impressions", "clicks", "split")
PAIR_COLUMNS = ("product_id", "group_id", "chosen_prompt", "rejected_prompt", "conflict", "split")
SIGNATURE_ROWS = 5


@dataclass
class TrainedGrm:
    grm: Grm
    metrics: dict[str, float]  # held-out metrics (evaluate) of the validation and test products
    train_losses: list[float]  # mean training loss per epoch
    train_cells: int
    train_pairs: int
    example: pd.DataFrame  # a few rows in the pyfunc's input layout


@dataclass(frozen=True)
class Encoded:
    cells: Inputs
    clicks: torch.Tensor
    impressions: torch.Tensor
    chosen: Inputs
    rejected: Inputs


def _encode(featurizer: Featurizer, cells: pd.DataFrame, pairs: pd.DataFrame, profiles: pd.DataFrame) -> Encoded:
    device = featurizer.device

    def counts(column: str) -> torch.Tensor:
        return torch.from_numpy(cells[column].to_numpy(dtype=np.float32)).to(device)

    return Encoded(
        cells=featurizer.inputs(cells, profiles),
        clicks=counts("clicks"),
        impressions=counts("impressions"),
        chosen=featurizer.inputs(pairs, profiles, prompt="chosen_prompt"),
        rejected=featurizer.inputs(pairs, profiles, prompt="rejected_prompt"),
    )


def binomial_nll(logits: torch.Tensor, clicks: torch.Tensor, impressions: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per impression of `clicks` out of `impressions` at click logit `logits`."""
    nll = -(clicks * F.logsigmoid(logits) + (impressions - clicks) * F.logsigmoid(-logits))
    return nll.sum() / impressions.sum().clamp(min=1)


def evaluate(
    grm: Grm, cells: pd.DataFrame, pairs: pd.DataFrame, profiles: pd.DataFrame, products: pd.DataFrame | None = None
) -> dict[str, float]:
    """Pair accuracy (all, conflict), AUROC and log-loss per impression on the given held-out rows
    (profiles: the night's groups; products: for products the model has no features for).

    A metric without data (no pairs, no conflict pairs, a single class) is NaN, never a guess.
    """
    nan = float("nan")
    metrics = {"pairs": float(len(pairs)), "conflict_pairs": float(pairs["conflict"].sum()) if len(pairs) else 0.0}
    if len(pairs):
        right = grm.prefers_chosen(pairs, profiles, products)
        conflict = pairs["conflict"].to_numpy(dtype=bool)
        metrics["pair_accuracy"] = float(right.mean())
        metrics["conflict_pair_accuracy"] = float(right[conflict].mean()) if conflict.any() else nan
    else:
        metrics["pair_accuracy"] = metrics["conflict_pair_accuracy"] = nan
    metrics["auroc"] = metrics["log_loss"] = nan
    if len(cells):
        logits = grm.score(cells, profiles, products)
        clicks, impressions = (cells[c].to_numpy(dtype=np.float64) for c in ("clicks", "impressions"))
        # Every impression of a cell gets the cell's score: clicks positives, the rest negatives.
        labels = np.r_[np.ones(len(cells)), np.zeros(len(cells))]
        weights = np.r_[clicks, impressions - clicks]
        if 0 < clicks.sum() < impressions.sum():
            metrics["auroc"] = float(roc_auc_score(labels, np.r_[logits, logits], sample_weight=weights))
        metrics["log_loss"] = float(
            binomial_nll(*(torch.as_tensor(x, dtype=torch.float64) for x in (logits, clicks, impressions)))
        )
    return metrics


def held_out_metrics(grm: Grm, cells: pd.DataFrame, pairs: pd.DataFrame, profiles: pd.DataFrame) -> dict[str, float]:
    """`evaluate` on the validation and the test products, as val_* and test_* metrics."""
    out = {}
    for split, prefix in (("validation", "val"), ("test", "test")):
        scores = evaluate(grm, cells[cells["split"] == split], pairs[pairs["split"] == split], profiles)
        out |= {f"{prefix}_{key}": value for key, value in scores.items()}
    return out


def fit_grm(
    cells: pd.DataFrame,
    pairs: pd.DataFrame,
    profiles: pd.DataFrame,
    products: pd.DataFrame,
    cfg: Config,
    group_aware: bool = True,
) -> TrainedGrm:
    """Train the GRM (or, with group_aware=False, its group-agnostic baseline) on the train split.

    cells: product_id, group_id, prompt, impressions, clicks, split (group_creative_ctr with the
    creatives' prompts); pairs: product_id, group_id, chosen_prompt, rejected_prompt, conflict,
    split; profiles: product_id, group_id, feature, share; products: product_id, title, category,
    image_uri.
    """
    gc = cfg.grm
    require_columns(cells, CELL_COLUMNS, "cells")
    require_columns(pairs, PAIR_COLUMNS, "pairs")
    # Spark hands rows over in no fixed order; sorting makes batches independent of it.
    cells = cells.sort_values(["product_id", "group_id", "prompt"], kind="stable").reset_index(drop=True)
    pairs = pairs.sort_values(
        ["product_id", "group_id", "chosen_prompt", "rejected_prompt"], kind="stable"
    ).reset_index(drop=True)
    train_cells, train_pairs = cells[cells["split"] == "train"], pairs[pairs["split"] == "train"]
    if train_pairs.empty:
        raise GrmError("no training pairs: the GRM learns group preferences from pairs")
    unknown = sorted(set(cells["product_id"]) - set(products["product_id"]))
    if unknown:
        raise GrmError(f"products {unknown[:5]} of the cells are missing from the products table")

    device = resolve_device(cfg.gpu.device)
    encoders = Encoders(EncoderSpec.from_config(cfg), device)
    featurizer = build_featurizer(encoders, profiles, gc.max_prompt_tokens, cfg.models.unreadable_image)
    featurizer.store.ensure(products[products["product_id"].isin(set(cells["product_id"]))])
    data = _encode(featurizer, train_cells, train_pairs, profiles)
    config = GrmConfig(
        profile_dim=len(featurizer.vocab.features),
        product_dim=data.cells.products.shape[-1],
        prompt_dim=data.cells.prompts.shape[-1],
        hidden_dim=gc.hidden_dim,
        rank=gc.rank,
        dropout=gc.dropout,
        group_aware=group_aware,
    )
    # A private RNG state: the same seed gives the same initial weights and the same dropout masks
    # whatever ran before. torch seeds a fresh process's generator at random, so dropout drawn
    # from it trained a different model in every process from the same night.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(gc.seed)
        model = GrmModel(config).to(device)
        with torch.no_grad():
            # Start at the base click rate: early steps then learn preferences, not the intercept.
            rate = (data.clicks.sum() / data.impressions.sum()).clamp(1e-4, 1 - 1e-4).item()
            model.base.bias.fill_(math.log(rate / (1 - rate)))
        losses = _fit(model, data, cfg)
    grm = Grm(model.eval(), featurizer, profiles, gc.inference_batch_size)
    return TrainedGrm(
        grm=grm,
        metrics=held_out_metrics(grm, cells, pairs, profiles),
        train_losses=losses,
        train_cells=len(train_cells),
        train_pairs=len(train_pairs),
        example=cells.head(SIGNATURE_ROWS)[["product_id", "group_id", "prompt"]].reset_index(drop=True),
    )


def _fit(model: GrmModel, data: Encoded, cfg: Config) -> list[float]:
    """Minimise the loss; an epoch is one pass over the cells, pairs are cycled alongside."""
    gc = cfg.grm
    optimizer = torch.optim.AdamW(model.parameters(), lr=gc.learning_rate, weight_decay=gc.weight_decay)
    device = data.clicks.device
    generator = torch.Generator(device=device).manual_seed(gc.seed)
    cells, pairs = len(data.cells), len(data.chosen)
    steps = math.ceil(cells / gc.batch_size)
    pair_batch = math.ceil(pairs / steps)
    losses = []
    model.train()
    for _ in tqdm(range(gc.epochs), desc="GRM epochs"):
        cell_order = torch.randperm(cells, generator=generator, device=device).split(gc.batch_size)
        # Pairs are cycled so that every step of the epoch has its share, however few they are.
        rounds = math.ceil(steps * pair_batch / pairs)
        pair_order = torch.cat([torch.randperm(pairs, generator=generator, device=device) for _ in range(rounds)])
        total = 0.0
        for cell_index, pair_index in zip(cell_order, pair_order.split(pair_batch), strict=False):
            margin = model(**data.chosen.take(pair_index)).logits - model(**data.rejected.take(pair_index)).logits
            pairwise = -F.logsigmoid(margin).mean()
            logits = model(**data.cells.take(cell_index)).logits
            pointwise = binomial_nll(logits, data.clicks[cell_index], data.impressions[cell_index])
            loss = pairwise + gc.pointwise_weight * pointwise
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / steps)
    model.eval()
    return losses
