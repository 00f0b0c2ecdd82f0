"""The GRM network (a transformers `PreTrainedModel`) and `Grm`, the trained scorer with its
feature vocabulary, product features and the groups of the night it was trained for.

    score(group, product, prompt) = taste(group, product) . style(prompt) + base(group, product)

`taste` and `base` come from one MLP over the group's attribute profile and the product's
features; `style` is a linear map of the prompt's phrase vector. The score is a click logit:
`base` carries how often the group clicks this product at all, the dot product which prompts it
prefers. The low-rank product form lets one weight matrix serve every group: a prompt is scored
by where its phrases sit, so prompts never logged are scored by the same weights as logged ones.

With `group_aware=False` the profile is zeroed before the MLP: the same network and data, knowing
only the product, is the group-agnostic baseline of the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from osmf_lib.device import resolve_device
from osmf_lib.grm.features import (
    PROFILE_COLUMNS,
    GrmError,
    ProfileVocab,
    PromptEncoder,
    group_keys,
    load_context,
    product_vectors,
    require_columns,
    save_context,
)
from osmf_lib.paag.features import Encoders, ProductStore

FORMAT = 1
SCORE_COLUMNS = ("product_id", "group_id", "prompt")


class GrmConfig(PretrainedConfig):
    model_type = "osmf-grm"

    def __init__(
        self,
        profile_dim: int = 1,
        product_dim: int = 1,
        prompt_dim: int = 1,
        hidden_dim: int = 64,
        rank: int = 16,
        dropout: float = 0.1,
        group_aware: bool = True,
        **kwargs,
    ) -> None:
        self.profile_dim = profile_dim
        self.product_dim = product_dim
        self.prompt_dim = prompt_dim
        self.hidden_dim = hidden_dim
        self.rank = rank
        self.dropout = dropout
        self.group_aware = group_aware
        super().__init__(**kwargs)


@dataclass
class GrmOutput(ModelOutput):
    logits: torch.Tensor | None = None


class GrmModel(PreTrainedModel):
    config_class = GrmConfig
    base_model_prefix = "grm"

    def __init__(self, config: GrmConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_dim
        self.context = nn.Sequential(
            nn.Linear(config.profile_dim + config.product_dim, hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.taste = nn.Linear(hidden, config.rank)
        self.base = nn.Linear(hidden, 1)
        self.style = nn.Linear(config.prompt_dim, config.rank)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's own initialisation: transformers' N(0, 0.02) is made for deep transformers and
        # starts a small MLP almost dead.
        if isinstance(module, nn.Linear):
            module.reset_parameters()

    def forward(
        self, group_profile: torch.Tensor, product_features: torch.Tensor, prompt_features: torch.Tensor, **_: object
    ) -> GrmOutput:
        if not self.config.group_aware:
            group_profile = torch.zeros_like(group_profile)
        hidden = self.context(torch.cat([group_profile, product_features], dim=-1))
        taste = (self.taste(hidden) * self.style(prompt_features)).sum(-1)
        return GrmOutput(logits=taste + self.base(hidden).squeeze(-1))


@dataclass(frozen=True)
class Inputs:
    """Encoded rows: each row indexes a group, a product and a prompt table (all on one device)."""

    profiles: torch.Tensor
    products: torch.Tensor
    prompts: torch.Tensor
    group: torch.Tensor
    product: torch.Tensor
    prompt: torch.Tensor

    def __len__(self) -> int:
        return len(self.group)

    def take(self, index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """GrmModel's keyword inputs for some rows."""
        return {
            "group_profile": self.profiles[self.group[index]],
            "product_features": self.products[self.product[index]],
            "prompt_features": self.prompts[self.prompt[index]],
        }


class Featurizer:
    """(product_id, group_id, prompt) rows -> Inputs, from group profiles, products and prompts."""

    def __init__(self, vocab: ProfileVocab, store: ProductStore, prompts: PromptEncoder) -> None:
        self.vocab = vocab
        self.store = store
        self.prompt_encoder = prompts

    @property
    def device(self) -> torch.device:
        return self.store.encoders.device

    def inputs(
        self, rows: pd.DataFrame, profiles: pd.DataFrame, products: pd.DataFrame | None = None, prompt: str = "prompt"
    ) -> Inputs:
        """Encode rows whose prompt is in column `prompt`; every (product, group) must be in `profiles`."""
        require_columns(rows, ("product_id", "group_id", prompt), "rows to score")
        if rows[prompt].isna().any():
            raise GrmError(f"row {int(np.flatnonzero(rows[prompt].isna())[0])} has no {prompt}")
        known, shares = self.vocab.matrix(profiles)
        keys = group_keys(rows)
        group = known.get_indexer(keys)
        if (group < 0).any():
            missing = sorted(set(keys[group < 0]))
            raise GrmError(f"no group profile for {missing[:5]} (product/group); pass that night's group profiles")
        product_ids, product = np.unique(rows["product_id"].astype(str).to_numpy(), return_inverse=True)
        if products is not None:
            self.store.ensure(products[products["product_id"].isin(product_ids)])
        texts, prompt_index = np.unique(rows[prompt].astype(str).to_numpy(), return_inverse=True)
        device = self.device
        return Inputs(
            profiles=torch.from_numpy(shares).to(device),
            products=product_vectors(self.store, product_ids.tolist()),
            prompts=self.prompt_encoder(texts.tolist()).to(device),
            group=torch.from_numpy(group.astype(np.int64)).to(device),
            product=torch.from_numpy(product.reshape(-1)).to(device),
            prompt=torch.from_numpy(prompt_index.reshape(-1)).to(device),
        )


class Grm:
    """A trained GRM: the network, its featurizer and the group profiles of the night it was trained for.

    `score` is safe to call from several threads (no grad, eval mode, locked caches).
    """

    def __init__(self, model: GrmModel, featurizer: Featurizer, profiles: pd.DataFrame, batch_size: int) -> None:
        self.model = model.eval()
        self.featurizer = featurizer
        self.profiles = profiles[list(PROFILE_COLUMNS)].reset_index(drop=True)
        self.batch_size = batch_size

    @property
    def group_aware(self) -> bool:
        return bool(self.model.config.group_aware)

    @property
    def truncated_prompts(self) -> int:
        """Distinct prompts so far cut at grm.max_prompt_tokens before scoring."""
        return self.featurizer.prompt_encoder.truncated

    @torch.no_grad()
    def logits(self, inputs: Inputs) -> torch.Tensor:
        parts = [slice(s, s + self.batch_size) for s in range(0, len(inputs), self.batch_size)]
        if not parts:
            return torch.empty(0, device=self.featurizer.device)
        return torch.cat([self.model(**inputs.take(p)).logits for p in parts])

    def score(
        self,
        rows: pd.DataFrame,
        profiles: pd.DataFrame | None = None,
        products: pd.DataFrame | None = None,
        prompt: str = "prompt",
    ) -> np.ndarray:
        """Click logits of (product_id, group_id, prompt) rows, row-aligned.

        Groups come from `profiles` (long rows: product_id, group_id, feature, share) or, without
        it, from the night the model was trained for; products from `products` (product_id, title,
        category, image_uri) or the ones the model has features for.
        """
        if not len(rows):
            return np.empty(0, dtype=np.float32)
        inputs = self.featurizer.inputs(rows, self.profiles if profiles is None else profiles, products, prompt)
        return self.logits(inputs).cpu().numpy()

    def prefers_chosen(
        self, pairs: pd.DataFrame, profiles: pd.DataFrame | None = None, products: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Per pair (product_id, group_id, chosen_prompt, rejected_prompt): is the chosen side scored higher?"""
        chosen = self.score(pairs, profiles, products, prompt="chosen_prompt")
        return chosen > self.score(pairs, profiles, products, prompt="rejected_prompt")

    def save(self, folder: Path) -> None:
        featurizer = self.featurizer
        save_context(
            folder,
            FORMAT,
            featurizer.store,
            featurizer.vocab,
            self.profiles,
            max_prompt_tokens=featurizer.prompt_encoder.max_tokens,
            batch_size=self.batch_size,
        )
        self.model.save_pretrained(folder / "model")

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu", unreadable_image: str = "fail") -> Grm:
        device = resolve_device(device)
        saved = load_context(folder, FORMAT, "GRM", GrmError, device, unreadable_image)
        prompts = PromptEncoder(saved.store.encoders, saved.meta["max_prompt_tokens"])
        model = GrmModel.from_pretrained(folder / "model").to(device)
        return cls(model, Featurizer(saved.vocab, saved.store, prompts), saved.profiles, saved.meta["batch_size"])


def build_featurizer(
    encoders: Encoders, profiles: pd.DataFrame, max_prompt_tokens: int, unreadable_image: str
) -> Featurizer:
    return Featurizer(
        ProfileVocab.fit(profiles), ProductStore(encoders, unreadable_image), PromptEncoder(encoders, max_prompt_tokens)
    )
