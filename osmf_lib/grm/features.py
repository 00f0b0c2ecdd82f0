"""What the GRM reads, as fixed-size vectors: the group's attribute profile, the product's pooled
text and image features, and the prompt's phrase features.

**Group.** A group is described by its *attribute profile*: the share of its members holding each
attribute value ("gender=female" 0.93, "interests=sports" 0.41, ...), over the values seen in
training. docs/design.md#grm's founding form names the group's anchor points as input; we do not use them, because they
are points in the embedding space of one osmf-paag version: a GRM fed them could not score the
groups of a night whose groups came from another PAAG version, so the like-for-like promotion rule
could not score the champion on tonight's data after any PAAG change, and a GRM pinned for an old
night could not score tonight's groups. The profile says the same thing about who is in the group
(K-Means groups users by the product-aware embedding of exactly these attributes) in terms every
version shares. `group_profiles.attribute_summary` is its readable top few; the GRM reads all of it.

**Product.** The PAAG feature code (osmf_lib.paag.features): MiniLM text tokens of title and
category and ViT patches of the product cut-out, each mean-pooled, plus a has-picture flag.

**Prompt.** Background prompts are comma-separated lists of phrases ("a sunlit beach scene, warm
golden tones, ..."), the convention of diffusion prompts. A prompt's vector is the mean of its
phrases' MiniLM sentence embeddings, so a prompt never logged but made of phrases that were (the
Group-DPO samples and rendering candidates the GRM mostly scores) lands where its parts say. A
prompt longer than `grm.max_prompt_tokens` tokens is cut there first, and counted.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from osmf_lib.paag import model as paag_model
from osmf_lib.paag.features import Encoders, EncoderSpec, PaagError, ProductStore

PROFILE_COLUMNS = ("product_id", "group_id", "feature", "share")
_PHRASE_BREAK = re.compile(r"[,;\n]+")


class GrmError(PaagError):
    """Input the GRM cannot use: a missing column, group, product or prompt (a StageError, so a job
    reports it as one line)."""


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    paag_model.require_columns(frame, columns, what, GrmError)


def phrases(prompt: str) -> list[str]:
    """The prompt's phrases; a prompt without separators is one phrase, an empty one none."""
    return [part.strip() for part in _PHRASE_BREAK.split(prompt) if part.strip()]


def group_keys(frame: pd.DataFrame) -> pd.Series:
    """One "product_id/group_id" key per row, the index of group profiles."""
    return frame["product_id"].astype(str) + "/" + frame["group_id"].astype(int).astype(str)


@dataclass(frozen=True)
class ProfileVocab:
    """The attribute values ("attribute=value") a GRM knows; a value it never saw is left out."""

    features: tuple[str, ...]

    @classmethod
    def fit(cls, profiles: pd.DataFrame) -> ProfileVocab:
        return cls(tuple(sorted(profiles["feature"].astype(str).unique())))

    def matrix(self, profiles: pd.DataFrame) -> tuple[pd.Index, np.ndarray]:
        """(group keys, shares (groups, features)) of long profile rows (PROFILE_COLUMNS)."""
        require_columns(profiles, PROFILE_COLUMNS, "group profiles")
        if profiles["share"].isna().any():
            bad = profiles[profiles["share"].isna()].iloc[0]
            raise GrmError(
                f"group profile of product {bad['product_id']} group {bad['group_id']} has no share "
                f"for {bad['feature']}"
            )
        keys = group_keys(profiles)
        wide = (
            profiles.assign(key=keys)
            .pivot_table(index="key", columns="feature", values="share", aggfunc="sum", fill_value=0.0)
            .reindex(columns=list(self.features), fill_value=0.0)
        )
        return wide.index, wide.to_numpy(dtype=np.float32)


def product_vectors(store: ProductStore, product_ids: Sequence[str]) -> torch.Tensor:
    """(n, text_dim + image_dim + 1): mean real text token, mean patch (zero without a picture), flag."""
    features = store.stack(list(product_ids))
    real = features.mask.unsqueeze(-1).to(features.tokens.dtype)
    text = (features.tokens * real).sum(1) / real.sum(1).clamp(min=1)
    shown = features.image.to(text.dtype).unsqueeze(-1)
    return torch.cat([text, features.patches.mean(1) * shown, shown], dim=-1)


class PromptEncoder:
    """Prompt vectors (mean phrase embedding), cached per prompt; counts the prompts it had to cut."""

    def __init__(self, encoders: Encoders, max_tokens: int) -> None:
        self.encoders = encoders
        self.max_tokens = max_tokens
        self.truncated = 0
        self._lock = threading.Lock()
        self._vectors: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        todo = sorted(set(prompts) - self._vectors.keys())
        if todo:
            clipped = self.encoders.clip(todo, self.max_tokens)
            split = [phrases(text) for text in clipped]
            empty = [prompt for prompt, parts in zip(todo, split, strict=True) if not parts]
            if empty:
                raise GrmError(f"prompts without any text to score: {empty[:3]}")
            embedded = self.encoders.sentences([part for parts in split for part in parts])
            vectors, start = {}, 0
            for prompt, parts in zip(todo, split, strict=True):
                vectors[prompt] = embedded[start : start + len(parts)].mean(0)
                start += len(parts)
            with self._lock:
                self.truncated += sum(a != b for a, b in zip(todo, clipped, strict=True))
                self._vectors.update(vectors)
        return torch.stack([self._vectors[prompt] for prompt in prompts])


# ---------------------------------------------------------------------------------------------
# What a group-conditioned model (GRM, G-MLLM) saves next to its weights


@dataclass(frozen=True)
class SavedContext:
    """A saved model's meta.json, product features, attribute vocabulary and the night's group profiles."""

    meta: dict
    store: ProductStore
    vocab: ProfileVocab
    profiles: pd.DataFrame


def save_context(
    folder: Path, fmt: int, store: ProductStore, vocab: ProfileVocab, profiles: pd.DataFrame, **meta: object
) -> None:
    """Write the encoders, product features and group profiles; `meta` joins meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": fmt,
        "encoders": store.encoders.save(folder, store.encoders.spec.to_json()),
        "profile_features": list(vocab.features),
        **meta,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    torch.save(store.state(), folder / "products.pt")
    profiles.to_parquet(folder / "group_profiles.parquet", index=False)


def load_context(
    folder: Path, fmt: int, what: str, error: type[PaagError], device: torch.device, unreadable_image: str
) -> SavedContext:
    """Read what save_context wrote; `error` names `what` when the folder holds none or another format."""
    meta_file = folder / "meta.json"
    if not meta_file.exists():
        raise error(f"{folder} holds no {what} (no meta.json)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != fmt:
        raise error(f"{folder} holds {what} format {meta.get('format')}, this code reads {fmt}")
    store = ProductStore(Encoders(EncoderSpec.from_json(meta["encoders"], folder), device), unreadable_image)
    store.restore(torch.load(folder / "products.pt", map_location=device, weights_only=True))
    vocab = ProfileVocab(tuple(meta["profile_features"]))
    return SavedContext(meta, store, vocab, pd.read_parquet(folder / "group_profiles.parquet"))
