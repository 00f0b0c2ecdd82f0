"""What the G-MLLM reads: the prefix inputs (group profile, product features) and the text of its
four pre-training tasks (docs/design.md#g-mllm), one template each.

The group is read as the GRM reads it, by its attribute profile, for the same reason (see
osmf_lib.grm.features): anchor points live in one PAAG version's embedding space, and a generator
kept for `gmllm.fresh_days` nights must read groups that later PAAG versions made.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

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


MIN_WORDS = 3
PHRASE_SEPARATOR = ","
DescriptionRule = Literal["logged_phrases", "free_text"]  # gmllm.description_rule


def _tokens(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text.lower())


def phrases_of(text: str) -> list[str]:
    """A description's comma-separated phrases, whitespace collapsed."""
    return [" ".join(part.split()) for part in text.split(PHRASE_SEPARATOR) if part.strip()]


@dataclass(frozen=True)
class BackgroundRule:
    """When a written description is a well-formed background, fit to render.

    Always: finished before the token limit; at least MIN_WORDS words; no replacement character
    (U+FFFD, what a byte-level tokenizer decodes broken bytes to) or control character; no
    instruction label ("Background:", "Audience:"); no phrase twice; no two consecutive words of
    the product's title. With `phrases` (rule "logged_phrases", the default): every phrase is one
    the logged backgrounds hold, which keeps out every fragment of a title, a group description or
    another task's answer. A real language model writes phrases no log holds: its deployment sets
    gmllm.description_rule to "free_text", which keeps the checks above and drops the phrase list.
    """

    phrases: frozenset[str] = frozenset()

    @classmethod
    def of(cls, rule: DescriptionRule, logged: Iterable[str]) -> BackgroundRule:
        """The rule named by gmllm.description_rule, its phrases read off the logged backgrounds."""
        if rule == "free_text":
            return cls()
        return cls(frozenset(phrase for text in logged for phrase in phrases_of(text)))

    def problem(self, text: str, finished: bool, title: str = "") -> str | None:
        """Why `text` is not fit to render, or None when it is."""
        words = text.split()
        parts = phrases_of(text)
        named = set(itertools.pairwise(_tokens(title))) & set(itertools.pairwise(_tokens(text)))
        checks = (
            (not finished, "unfinished"),
            (len(words) < MIN_WORDS, "too short"),
            (any(c == "\ufffd" or (unicodedata.category(c) == "Cc" and not c.isspace()) for c in text), "broken bytes"),
            (any(w.endswith(":") for w in words), "an instruction label"),
            (len({p.lower() for p in parts}) < len(parts), "a repeated phrase"),
            (bool(named), "the title"),
            (bool(self.phrases) and any(p not in self.phrases for p in parts), "a phrase no logged background has"),
        )
        return next((why for bad, why in checks if bad), None)

    def usable(self, text: str, finished: bool, title: str = "") -> bool:
        return self.problem(text, finished, title) is None

    def to_json(self) -> list[str]:
        return sorted(self.phrases)

    @classmethod
    def from_json(cls, phrases: Sequence[str] | None) -> BackgroundRule:
        return cls(frozenset(phrases or ()))


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
