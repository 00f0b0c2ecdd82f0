"""Pre-training the G-MLLM on the four tasks of docs/design.md#g-mllm, built from the night's tables:

- group analysis: "Describe the audience." + the product -> group_profiles.description, per
  (product, group);
- behaviour prediction: "Will the audience click?" + the product + a logged background -> " yes"
  when the group's smoothed CTR of it is above the group's median for the product, per (product,
  group, creative) of the training products;
- product comprehension: "Describe the product." (the product tokens say which) -> title
  (category, price band), per product, with an empty group part of the prefix;
- prompt generation: "Write the ad background." + the product -> the group's best logged
  background by smoothed CTR, per (product, group) of the training products.

Click-derived answers come from training products only, so the held-out products' best logged
creatives (a row of the evaluation) were never shown. Each task is capped at
`gmllm.max_examples_per_task` rows by a stable hash, so a big cell table cannot drown the rest.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from osmf_lib.config import Config
from osmf_lib.gmllm import features as text
from osmf_lib.gmllm.features import Conditioning
from osmf_lib.gmllm.model import GmllmModel

EVERYONE = -1  # group_id of an example whose prefix has no group (product comprehension)
EXAMPLE_COLUMNS = ("task", "product_id", "group_id", "prompt", "completion")


def stable_sample(frame: pd.DataFrame, cap: int, key: list[str]) -> pd.DataFrame:
    """At most `cap` rows, chosen by a hash of `key`: the same rows on every run."""
    if len(frame) <= cap:
        return frame
    order = frame[key].astype(str).agg("/".join, axis=1).map(lambda k: zlib.crc32(k.encode()))
    return frame.loc[order.sort_values(kind="stable").index[:cap]]


def pretraining_examples(
    cells: pd.DataFrame, groups: pd.DataFrame, products: pd.DataFrame, cfg: Config
) -> pd.DataFrame:
    """The four tasks' rows (EXAMPLE_COLUMNS).

    cells: product_id, group_id, creative_id, prompt, ctr_smoothed, split; groups: product_id,
    group_id, description; products: product_id, title, category, price_band.
    """
    named = products.set_index("product_id")

    def about(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.join(named[["title", "category"]], on="product_id")

    train = about(cells[cells["split"] == "train"])
    median = train.groupby(["product_id", "group_id"])["ctr_smoothed"].transform("median")
    behaviour = train.assign(
        task="predict_click",
        prompt=[
            text.predict_click(t, c, p)
            for t, c, p in zip(train["title"], train["category"], train["prompt"], strict=True)
        ],
        completion=np.where(train["ctr_smoothed"] > median, " yes", " no"),
    )
    best = train.sort_values(["ctr_smoothed", "creative_id"], ascending=[False, True]).drop_duplicates(
        ["product_id", "group_id"]
    )
    generation = best.assign(
        task="write_background",
        prompt=[text.write_background(t, c) for t, c in zip(best["title"], best["category"], strict=True)],
        completion=best["prompt"].map(text.answer),
    )
    described = about(groups[groups["description"].notna()])
    analysis = described.assign(
        task="describe_group",
        prompt=[text.describe_group(t, c) for t, c in zip(described["title"], described["category"], strict=True)],
        completion=described["description"].map(text.answer),
    )
    comprehension = products.assign(
        task="describe_product",
        group_id=EVERYONE,
        prompt=text.describe_product(),
        completion=[
            text.answer(f"{t} ({c}, {b})" if isinstance(b, str) else f"{t} ({c})")
            for t, c, b in zip(products["title"], products["category"], products["price_band"], strict=True)
        ],
    )
    cap = cfg.gmllm.max_examples_per_task
    parts = [
        stable_sample(frame[list(EXAMPLE_COLUMNS)], cap, ["task", "product_id", "group_id", "prompt"])
        for frame in (analysis, behaviour, comprehension, generation)
    ]
    return pd.concat(parts, ignore_index=True).astype({"group_id": "int64"})


@dataclass(frozen=True)
class Encoded:
    input_ids: list[list[int]]
    labels: list[list[int]]
    groups: torch.Tensor
    products: torch.Tensor
    too_long: int  # examples left out: longer than the model's context


def encode(
    examples: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    conditioning: Conditioning,
    profiles: pd.DataFrame,
    products: pd.DataFrame,
    context: int,
) -> Encoded:
    """Token ids with the answer (and EOS) as the only labelled positions, and the prefix inputs;
    an example longer than `context` tokens is left out and counted."""
    prompts = tokenizer(examples["prompt"].tolist())["input_ids"]
    answers = tokenizer(examples["completion"].tolist(), add_special_tokens=False)["input_ids"]
    fits = np.array([len(p) + len(a) + 1 <= context for p, a in zip(prompts, answers, strict=True)], dtype=bool)
    examples = examples[fits]
    prompts = [p for p, ok in zip(prompts, fits, strict=True) if ok]
    answers = [a for a, ok in zip(answers, fits, strict=True) if ok]
    eos = tokenizer.eos_token_id
    ids = [p + a + [eos] for p, a in zip(prompts, answers, strict=True)]
    labels = [[-100] * len(p) + a + [eos] for p, a in zip(prompts, answers, strict=True)]
    everyone = (examples["group_id"] == EVERYONE).to_numpy()
    groups = torch.zeros(len(examples), len(conditioning.vocab.features))
    if (~everyone).any():
        groups[torch.from_numpy(~everyone)] = conditioning.groups(examples[~everyone], profiles)
    features = conditioning.products(examples["product_id"].tolist(), products)
    return Encoded(ids, labels, groups, features, int((~fits).sum()))


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def batch_loss(model: GmllmModel, data: Encoded, index: list[int], pad_id: int) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = _pad([data.input_ids[i] for i in index], pad_id).to(device)
    labels = _pad([data.labels[i] for i in index], -100).to(device)
    return model(
        ids,
        data.groups[index].to(device),
        data.products[index].to(device),
        attention_mask=(labels != -100) | (ids != pad_id),
        labels=labels,
    ).loss


def fit(model: GmllmModel, tokenizer: PreTrainedTokenizerBase, data: Encoded, cfg: Config) -> list[float]:
    """Supervised training on the encoded examples; the mean loss per epoch."""
    g = cfg.gmllm
    generator = torch.Generator().manual_seed(g.seed)
    steps = g.epochs * math.ceil(len(data.input_ids) / g.batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=g.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=g.learning_rate, total_steps=max(steps, 1))
    model.train()
    losses = []
    with tqdm(total=steps, desc="pretrain_gmllm", unit="step", mininterval=5) as bar:
        for _ in range(g.epochs):
            order = torch.randperm(len(data.input_ids), generator=generator).tolist()
            total = 0.0
            for start in range(0, len(order), g.batch_size):
                index = order[start : start + g.batch_size]
                loss = batch_loss(model, data, index, tokenizer.pad_token_id)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                schedule.step()
                total += loss.item() * len(index)
                bar.update()
            losses.append(total / len(order))
    model.eval()
    return losses


@torch.no_grad()
def mean_loss(model: GmllmModel, tokenizer: PreTrainedTokenizerBase, data: Encoded, batch_size: int) -> float:
    """Mean answer loss (nats per batch, averaged) on held-out examples; NaN without any."""
    n = len(data.input_ids)
    if not n:
        return float("nan")
    losses = [
        batch_loss(model, data, list(range(s, min(s + batch_size, n))), tokenizer.pad_token_id).item()
        * min(batch_size, n - s)
        for s in range(0, n, batch_size)
    ]
    return float(sum(losses) / n)
