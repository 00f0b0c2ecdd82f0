"""What the G-MLLM reads: the prefix inputs (group profile, product features) and the text of its
four pre-training tasks (DESIGN §6.6), one template each.

The group is read as the GRM reads it, by its attribute profile, for the same reason (see
osmf_lib.grm.features): anchor points live in one PAAG version's embedding space, and a generator
kept for `gmllm.fresh_days` nights must read groups that later PAAG versions made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from osmf_lib.grm.features import ProfileVocab, group_keys, product_vectors
from osmf_lib.paag.features import PaagError, ProductStore


class GmllmError(PaagError):
    """Input the G-MLLM stages cannot use (a StageError: the job reports it as one line)."""


# Every answer follows its instruction after ":" and a space, so the tokenized instruction is a
# prefix of the tokenized instruction + answer (trl splits completions where the two diverge).
def product_line(title: str, category: str) -> str:
    return f"Product: {title} ({category})"


def write_background(title: str, category: str) -> str:
    """Prompt generation: the instruction whose answer is a background description."""
    return f"Write the ad background.\n{product_line(title, category)}\nBackground:"


def describe_group(title: str, category: str) -> str:
    return f"Describe the audience.\n{product_line(title, category)}\nAudience:"


def predict_click(title: str, category: str, background: str) -> str:
    return f"Will the audience click?\n{product_line(title, category)}\nBackground: {background}\nClick:"


def describe_product() -> str:
    # The title is the answer here, so the instruction names nothing: the product tokens must.
    return "Describe the product.\nProduct:"


def answer(text: str) -> str:
    return " " + " ".join(str(text).split())


def usable(text: str, finished: bool, min_words: int = 3) -> bool:
    """A background description worth rendering: finished before the token limit, with at least
    `min_words` words, and not a copy of the instruction's lines."""
    words = text.split()
    return finished and len(words) >= min_words and not any(w.endswith(":") for w in words)


@dataclass
class Conditioning:
    """Prefix inputs: attribute profiles over a fixed vocabulary, pooled product features."""

    vocab: ProfileVocab
    store: ProductStore

    @property
    def group_dim(self) -> int:
        return len(self.vocab.features)

    def groups(self, rows: pd.DataFrame, profiles: pd.DataFrame, everyone: bool = False) -> torch.Tensor:
        """(n, group_dim) profiles of (product_id, group_id) rows; zeros for `everyone`."""
        if everyone:
            return torch.zeros(len(rows), self.group_dim)
        known, shares = self.vocab.matrix(profiles)
        index = known.get_indexer(group_keys(rows))
        if (index < 0).any():
            missing = sorted(set(group_keys(rows)[index < 0]))
            raise GmllmError(f"no group profile for {missing[:5]} (product/group)")
        return torch.from_numpy(shares[index])

    def products(self, product_ids: Sequence[str], products: pd.DataFrame | None = None) -> torch.Tensor:
        """(n, product_dim) features, computed once per product (products: the dimension rows)."""
        ids = [str(p) for p in product_ids]
        unique, inverse = np.unique(np.asarray(ids, dtype=object), return_inverse=True)
        if products is not None:
            self.store.ensure(products[products["product_id"].isin(unique)])
        return product_vectors(self.store, unique.tolist()).cpu()[torch.from_numpy(inverse.reshape(-1))]
