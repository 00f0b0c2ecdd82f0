"""Training PAAG on impressions: predict the click from the product-aware user embedding and the
creative's prompt, so that what matters for clicking on *this* product shapes the embedding."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from osmf_lib.config import Config
from osmf_lib.device import resolve_device
from osmf_lib.paag.features import Encoders, EncoderSpec, PaagError, ProductStore, image_path
from osmf_lib.paag.model import (
    INTERESTS,
    PAIR_PRODUCT_COLUMNS,
    PRODUCT,
    SINGLE_VALUED_ATTRIBUTES,
    UNKNOWN,
    USER_ATTRIBUTES,
    Featurizer,
    NetDims,
    Paag,
    PaagNet,
    Rows,
    Vocab,
    interest_list,
    require_columns,
)

EXAMPLE_COLUMNS = ("user_id", "product_id", "creative_id", "clicked", *USER_ATTRIBUTES)
# Share of attribute values replaced by UNKNOWN while training: the unknown index must learn
# "average user", or unseen values at inference would land on an untrained random vector.
UNKNOWN_RATE = 0.05
SIGNATURE_ROWS = 5


@dataclass
class TrainedPaag:
    paag: Paag
    # initial_val_loss (before the first step), val_loss and val_auroc (after the last epoch)
    metrics: dict[str, float]
    train_losses: list[float]  # mean training loss per epoch
    train_rows: int
    validation_rows: int
    validation_users: int
    example: pd.DataFrame  # a few rows in the MLflow model's input layout


def validation_users(user_ids: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Which rows belong to held-out users: a hash of the id, so a user stays held out every night."""
    bucket = {u: zlib.crc32(f"{seed}:{u}".encode()) / 2**32 for u in user_ids.unique()}
    return user_ids.map(bucket).to_numpy() < fraction


def _cap(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    if len(frame) <= limit:
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=limit, replace=False))
    return frame.iloc[keep]


def _evaluate(paag: Paag, held_out: tuple[Rows, torch.Tensor] | None) -> tuple[float, float]:
    """Validation (loss, AUROC); NaN without held-out rows, AUROC NaN when they hold a single class."""
    if held_out is None:
        return math.nan, math.nan
    rows, labels = held_out
    paag.net.eval()
    logits = paag.click_logits(rows)
    loss = F.binary_cross_entropy_with_logits(logits, labels).item()
    clicked = labels.cpu().numpy()
    auroc = roc_auc_score(clicked, logits.cpu().numpy()) if 0 < clicked.sum() < len(clicked) else math.nan
    return loss, float(auroc)


def _hide(indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    hidden = torch.rand(indices.shape, generator=generator, device=indices.device) < UNKNOWN_RATE
    return indices.masked_fill(hidden & (indices >= 0), UNKNOWN)


def _pyfunc_example(frame: pd.DataFrame, products: pd.DataFrame) -> pd.DataFrame:
    catalog = products.drop_duplicates("product_id", keep="last").set_index("product_id")
    example = frame.head(SIGNATURE_ROWS)[["product_id", "user_id", *USER_ATTRIBUTES]].reset_index(drop=True)
    example[INTERESTS] = [[str(v) for v in interest_list(cell)] for cell in example[INTERESTS]]
    for column, source in PAIR_PRODUCT_COLUMNS.items():
        # A product without a picture keeps a null image_uri, not the text "None".
        as_input = image_path if source == "image_uri" else str
        example[column] = catalog.loc[example["product_id"], source].map(as_input).to_numpy()
    return example


def fit_paag(
    examples: pd.DataFrame,
    products: pd.DataFrame,
    creatives: pd.DataFrame,
    cfg: Config,
    product_aware: bool = True,
) -> TrainedPaag:
    """Train PAAG (or, with product_aware=False, the product-agnostic baseline) on impressions.

    examples: user_id, product_id, creative_id, clicked and the user columns; products:
    product_id, title, category, image_uri (null for a product without a picture); creatives:
    creative_id, prompt. Products whose image could not be read (models.unreadable_image) are
    listed in the result's `paag.unreadable_images`.
    """
    pc = cfg.paag
    require_columns(examples, EXAMPLE_COLUMNS, "examples")
    device = resolve_device(cfg.gpu.device)
    # Spark hands rows over in no fixed order; sorting makes sampling and batches independent of it.
    examples = examples.sort_values(["user_id", "product_id", "creative_id", "clicked"], kind="stable")
    held_out = validation_users(examples["user_id"], pc.validation_fraction, pc.seed)
    train = _cap(examples[~held_out], pc.max_train_rows, pc.seed)
    share = pc.validation_fraction / (1.0 - pc.validation_fraction)
    val = _cap(examples[held_out], math.ceil(pc.max_train_rows * share), pc.seed)
    if not train["clicked"].any() or train["clicked"].all():
        raise PaagError(f"PAAG needs clicked and unclicked training rows; got {len(train)} rows, all alike")
    unknown = sorted(set(examples["product_id"]) - set(products["product_id"]))
    if unknown:
        raise PaagError(f"products {unknown[:5]} of the examples are missing from the products table")

    store = ProductStore(Encoders(EncoderSpec.from_config(cfg), device), cfg.models.unreadable_image)
    featurizer = Featurizer(Vocab.fit(train), store)

    def encode(frame: pd.DataFrame) -> tuple[Rows, torch.Tensor]:
        rows = featurizer.with_creatives(featurizer.rows(frame, products), frame, creatives)
        return rows, torch.from_numpy(frame["clicked"].to_numpy(dtype=np.float32)).to(device)

    train_rows, train_labels = encode(train)
    held_out = encode(val) if len(val) else None
    net = _build_net(featurizer.vocab, train_rows, cfg, product_aware)
    with torch.no_grad():
        # Start at the base click rate: early steps then shape the embedding, not the bias.
        rate = train_labels.mean().item()
        net.intercept.fill_(math.log(rate / (1.0 - rate)))
    paag = Paag(net.to(device), featurizer, pc.inference_batch_size)
    initial_loss, _ = _evaluate(paag, held_out)
    train_losses = _fit(net, train_rows, train_labels, cfg)
    val_loss, val_auroc = _evaluate(paag, held_out)
    return TrainedPaag(
        paag=paag,
        metrics={"initial_val_loss": initial_loss, "val_loss": val_loss, "val_auroc": val_auroc},
        train_losses=train_losses,
        train_rows=len(train),
        validation_rows=len(val),
        validation_users=int(val["user_id"].nunique()),
        example=_pyfunc_example(val if len(val) else train, products),
    )


def _build_net(vocab: Vocab, rows: Rows, cfg: Config, product_aware: bool) -> PaagNet:
    assert rows.creative_vectors is not None
    dims = NetDims(
        attribute_sizes=tuple(vocab.size(c) for c in SINGLE_VALUED_ATTRIBUTES),
        interest_size=vocab.size(INTERESTS),
        text_dim=rows.features.tokens.shape[-1],
        image_dim=rows.features.patches.shape[-1],
        creative_dim=rows.creative_vectors.shape[-1],
        hidden_dim=cfg.paag.hidden_dim,
        embedding_dim=cfg.paag.embedding_dim,
        product_aware=product_aware,
        product_count=vocab.size(PRODUCT),
    )
    # A private RNG state: the same seed gives the same weights whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.paag.seed)
        return PaagNet(dims)


def _fit(net: PaagNet, rows: Rows, labels: torch.Tensor, cfg: Config) -> list[float]:
    """Minimise the click loss; return the mean training loss of each epoch."""
    pc = cfg.paag
    optimizer = torch.optim.AdamW(net.parameters(), lr=pc.learning_rate)
    generator = torch.Generator(device=labels.device).manual_seed(pc.seed)
    losses = []
    net.train()
    for epoch in range(pc.epochs):
        order = torch.randperm(len(rows), generator=generator, device=labels.device)
        total, progress = 0.0, tqdm(order.split(pc.batch_size), desc=f"PAAG epoch {epoch + 1}/{pc.epochs}")
        for step, index in enumerate(progress, start=1):
            attrs, interests, features, product = rows.take(index)
            embedding = net.embed(_hide(attrs, generator), _hide(interests, generator), features, product)
            logits = net.click_logit(embedding, rows.creatives(index), rows.products(index))
            loss = F.binary_cross_entropy_with_logits(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            if step % 20 == 0:
                progress.set_postfix(loss=f"{total / min(step * pc.batch_size, len(rows)):.4f}")
        losses.append(total / len(rows))
    net.eval()
    return losses
