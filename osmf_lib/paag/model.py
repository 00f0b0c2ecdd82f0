"""The PAAG network and `Paag`, the trained encoder with its vocabularies and product features.

User attributes -> one embedding per attribute (interests: the mean of the user's interests) ->
each scaled, dimension by dimension, by a modulation computed from the product's text token
features and image patch features -> summed -> a linear map to the `d`-dim embedding. The click
head is the dot product of that embedding with the creative's projected prompt vector, plus
click rates of the creative, the product and the whole log. K-Means then groups users exactly
where the product makes their taste differ. A product without a picture is modulated by its text
alone: the image half of its context is zero (see features.py for when a picture counts as missing).

This departs from the founding form (an MLP query with cross-attention over the product's
tokens), which measured no better than the product-agnostic baseline on segment recovery
(docs/results.md#grouping has the figures). The likely reason: there, the product entered only
after an MLP had mixed the attributes into one query, so "which attributes matter for this
product" had to be learnt as a three-way interaction in the head; here the product scales each
attribute directly, as in the logistic regression on category x attribute x style that showed
the world rewards it.

The embedding is not L2-normalised: on the unit sphere the head could not learn how segments
differ in taste. Grouping is per product, so the embedding's scale differing between products
or model versions is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from osmf_lib import tables
from osmf_lib.device import resolve_device
from osmf_lib.paag.features import (
    Encoders,
    EncoderSpec,
    PaagError,
    ProductFeatures,
    ProductStore,
    UnreadableImage,
)
from osmf_lib.tables import SINGLE_VALUED_ATTRIBUTES, USER_ATTRIBUTES

# The users contract decides what describes a user; interests is its one multi-valued attribute.
(INTERESTS,) = tables.MULTI_VALUED_ATTRIBUTES
# The vocabulary entry of the trained products (the click head's per-product bias).
PRODUCT = "product_id"
# Pairs may carry their product's text and image, so a model on its own can embed any product.
PAIR_PRODUCT_COLUMNS = {"product_title": "title", "product_category": "category", "product_image_uri": "image_uri"}
UNKNOWN = 0  # every vocabulary's index for a missing or never-seen value
FORMAT = 3
ATTRIBUTE_INIT_STD = 0.02


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str, error: type[PaagError] = PaagError) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise error(f"{what} lack columns {missing}; expected {list(columns)}")


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def interest_list(value: Any) -> list:
    """An interests cell as a list: Spark hands over arrays, pandas None or NaN for a missing one,
    and a request may send one value instead of a list."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str) or not isinstance(value, Iterable):
        return [value]
    return list(value)


@dataclass(frozen=True)
class Vocab:
    """Known values per user column and the trained products, seen in training; index i + 1 for
    values[i], UNKNOWN otherwise."""

    values: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, examples: pd.DataFrame) -> Vocab:
        values = {
            c: tuple(sorted(examples[c].dropna().astype(str).unique())) for c in (*SINGLE_VALUED_ATTRIBUTES, PRODUCT)
        }
        values[INTERESTS] = tuple(sorted({str(v) for cell in examples[INTERESTS] for v in interest_list(cell)}))
        return cls(values)

    def size(self, column: str) -> int:
        return len(self.values[column]) + 1

    def lookup(self, column: str) -> dict[str, int]:
        return {v: i + 1 for i, v in enumerate(self.values[column])}

    def index(self, column: str, values: Sequence[str]) -> torch.Tensor:
        lookup = self.lookup(column)
        return torch.tensor([lookup.get(v, UNKNOWN) for v in values], dtype=torch.int64)

    def encode(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, attributes) indices, and (n, max interests) interest indices padded with -1."""
        attrs = np.stack(
            [frame[c].map(self.lookup(c)).fillna(UNKNOWN).to_numpy(dtype=np.int64) for c in SINGLE_VALUED_ATTRIBUTES],
            axis=1,
        )
        interest = self.lookup(INTERESTS)
        rows = [[interest.get(v, UNKNOWN) for v in interest_list(cell)] for cell in frame[INTERESTS]]
        interests = np.full((len(rows), max([1, *map(len, rows)])), -1, dtype=np.int64)
        for i, row in enumerate(rows):
            interests[i, : len(row)] = row
        return torch.from_numpy(attrs), torch.from_numpy(interests)

    def to_json(self) -> dict[str, list[str]]:
        return {c: list(vs) for c, vs in self.values.items()}

    @classmethod
    def from_json(cls, data: dict[str, list[str]]) -> Vocab:
        return cls({c: tuple(vs) for c, vs in data.items()})


@dataclass(frozen=True)
class NetDims:
    attribute_sizes: tuple[int, ...]
    interest_size: int
    text_dim: int
    image_dim: int
    creative_dim: int
    hidden_dim: int
    embedding_dim: int
    product_aware: bool
    product_count: int


class PaagNet(nn.Module):
    def __init__(self, dims: NetDims) -> None:
        super().__init__()
        self.dims = dims
        hidden, width = dims.hidden_dim, dims.hidden_dim // 2
        self.attributes = nn.ModuleList(nn.Embedding(size, width) for size in dims.attribute_sizes)
        self.interests = nn.Embedding(dims.interest_size, width)
        for embedding in (*self.attributes, self.interests):
            # Small, not N(0, 1): an attribute then moves the embedding only as far as clicks push
            # it, so attributes that do not matter for a product add no spread for K-Means to split.
            nn.init.normal_(embedding.weight, std=ATTRIBUTE_INIT_STD)
        # Built for the baseline too (and left unused), so both start from identical weights
        # for every part they share: the comparison isolates the product context.
        self.text_proj = nn.Linear(dims.text_dim, hidden)
        self.image_proj = nn.Linear(dims.image_dim, hidden)
        self.modulation = nn.Linear(2 * hidden, (len(dims.attribute_sizes) + 1) * width)
        # Zero: training starts from the baseline, and the product context earns every change.
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.out = nn.Linear(width, dims.embedding_dim)
        self.creative_proj = nn.Linear(dims.creative_dim, dims.embedding_dim)
        self.creative_bias = nn.Linear(dims.creative_dim, 1)
        self.intercept = nn.Parameter(torch.zeros(()))
        # A product's own click rate is no property of its users: a bias per trained product keeps
        # it out of the embedding (a product the model never saw gets none).
        self.product_bias = nn.Embedding(dims.product_count, 1, padding_idx=UNKNOWN)
        nn.init.zeros_(self.product_bias.weight)

    def embed(
        self, attrs: torch.Tensor, interests: torch.Tensor, products: ProductFeatures, product: torch.Tensor
    ) -> torch.Tensor:
        """Product-aware user embeddings (B, embedding_dim).

        `products` holds the features of the batch's distinct products and `product` each row's
        index into them: the modulation is computed once per product, not once per row.
        """
        parts = [embedding(attrs[:, i]) for i, embedding in enumerate(self.attributes)]
        known = (interests >= 0).unsqueeze(-1)
        summed = (self.interests(interests.clamp(min=0)) * known).sum(1)
        parts.append(summed / known.sum(1).clamp(min=1))
        slots = torch.stack(parts, dim=1)  # (B, attributes + 1, width)
        if self.dims.product_aware:
            scale = 1 + self.modulation(self.context(products))
            # index_select, not scale[product]: indexing's backward accumulates into the rows with
            # atomic adds across CPU threads, so two runs of the same seed summed in different orders.
            slots = slots * scale.index_select(0, product).view_as(slots)
        return self.out(slots.sum(1))

    def context(self, products: ProductFeatures) -> torch.Tensor:
        """(U, 2 * hidden): the mean of each product's real text tokens and of its image patches,
        the latter zero for a product without a picture, so that its modulation is its text's."""
        real = products.mask.unsqueeze(-1).to(products.tokens.dtype)
        text = (self.text_proj(products.tokens) * real).sum(1) / real.sum(1).clamp(min=1)
        image = self.image_proj(products.patches).mean(1) * products.image.unsqueeze(-1).to(text.dtype)
        return torch.cat([text, image], dim=-1)

    def click_logit(self, embedding: torch.Tensor, creative: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
        """Click logits from embeddings, creative prompt vectors and product vocabulary indices."""
        # Only the dot product depends on the user: a user's taste is their embedding's direction
        # against the creative's, which is what K-Means compares.
        taste = (embedding * self.creative_proj(creative)).sum(-1)
        return (
            taste + self.creative_bias(creative).squeeze(-1) + self.intercept + self.product_bias(product).squeeze(-1)
        )


@dataclass(frozen=True)
class Rows:
    """Encoded rows on the model's device; product and creative columns index shared tables."""

    attrs: torch.Tensor
    interests: torch.Tensor
    product: torch.Tensor
    features: ProductFeatures
    product_vocab: torch.Tensor  # per product of `features`, its index in the model's product vocabulary
    creative: torch.Tensor | None = None
    creative_vectors: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.attrs)

    def take(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, ProductFeatures, torch.Tensor]:
        """PaagNet.embed's inputs for some rows, with only the products those rows show."""
        used, product = torch.unique(self.product[index], return_inverse=True)
        return self.attrs[index], self.interests[index], self.features.select(used), product

    def creatives(self, index: torch.Tensor | slice) -> torch.Tensor:
        assert self.creative is not None and self.creative_vectors is not None
        return self.creative_vectors[self.creative[index]]

    def products(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.product_vocab[self.product[index]]


@dataclass(frozen=True)
class Featurizer:
    """Turns pandas rows into model inputs: vocabulary indices and product/creative feature tables."""

    vocab: Vocab
    store: ProductStore

    @property
    def device(self) -> torch.device:
        return self.store.encoders.device

    def rows(self, frame: pd.DataFrame, products: pd.DataFrame | None = None) -> Rows:
        """Encode (product, user) rows; products come from `products`, product_* columns or the store."""
        require_columns(frame, ("product_id", *USER_ATTRIBUTES), "pairs")
        ids, index = np.unique(frame["product_id"].to_numpy(dtype=str), return_inverse=True)
        catalog = products if products is not None else _catalog_in(frame)
        if catalog is not None:
            self.store.ensure(catalog[catalog["product_id"].isin(ids)])
        attrs, interests = self.vocab.encode(frame)
        return Rows(
            attrs.to(self.device),
            interests.to(self.device),
            torch.from_numpy(index.reshape(-1)).to(self.device),
            self.store.stack(ids.tolist()),
            self.vocab.index(PRODUCT, ids.tolist()).to(self.device),
        )

    def with_creatives(self, rows: Rows, examples: pd.DataFrame, creatives: pd.DataFrame) -> Rows:
        """`rows` plus the MiniLM sentence embedding of each row's creative prompt."""
        require_columns(examples, ("creative_id",), "examples")
        require_columns(creatives, ("creative_id", "prompt"), "creatives")
        ids, index = np.unique(examples["creative_id"].to_numpy(dtype=str), return_inverse=True)
        prompts = creatives.drop_duplicates("creative_id", keep="last").set_index("creative_id")["prompt"]
        unknown = sorted(set(ids) - set(prompts.index))
        if unknown:
            raise PaagError(f"creatives {unknown[:5]} have no prompt in the creatives table")
        return replace(
            rows,
            creative=torch.from_numpy(index.reshape(-1)).to(self.device),
            creative_vectors=self.store.encoders.sentences(prompts.loc[ids].astype(str).tolist()),
        )


class Paag:
    """A trained PAAG encoder: network, vocabularies and the product feature store.

    `embed` is safe to call from several threads at once (no grad, eval mode, a locked store).
    """

    def __init__(self, net: PaagNet, featurizer: Featurizer, batch_size: int) -> None:
        self.net = net.eval()
        self.featurizer = featurizer
        self.batch_size = batch_size

    @property
    def product_aware(self) -> bool:
        return self.net.dims.product_aware

    @property
    def embedding_dim(self) -> int:
        return self.net.dims.embedding_dim

    @property
    def unreadable_images(self) -> list[str]:
        """Products so far described by their text alone because their image could not be read."""
        return self.featurizer.store.unreadable_images

    @torch.no_grad()
    def embed(self, pairs: pd.DataFrame, products: pd.DataFrame | None = None) -> np.ndarray:
        """Embeddings (n, embedding_dim) of (product, user) pairs, row-aligned with `pairs`.

        `pairs`: product_id and the user columns, plus optionally product_title, product_category
        and product_image_uri. Products not among those columns, `products` (product_id, title,
        category, image_uri) or the ones the model was trained on raise a PaagError.
        """
        out = np.empty((len(pairs), self.embedding_dim), dtype=np.float32)
        if len(pairs):
            rows = self.featurizer.rows(pairs, products)
            for part in batches(len(rows), self.batch_size):
                out[part] = self.net.embed(*rows.take(part)).cpu().numpy()
        return out

    @torch.no_grad()
    def click_logits(self, rows: Rows) -> torch.Tensor:
        parts = batches(len(rows), self.batch_size)
        return torch.cat(
            [self.net.click_logit(self.net.embed(*rows.take(p)), rows.creatives(p), rows.products(p)) for p in parts]
        )

    def click_probability(
        self, examples: pd.DataFrame, creatives: pd.DataFrame, products: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Predicted click probabilities of impressions (pairs plus creative_id), e.g. for offline AUROC."""
        if not len(examples):
            return np.empty(0, dtype=np.float32)
        rows = self.featurizer.with_creatives(self.featurizer.rows(examples, products), examples, creatives)
        return torch.sigmoid(self.click_logits(rows)).cpu().numpy()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        store = self.featurizer.store
        meta = {
            "format": FORMAT,
            "dims": asdict(self.net.dims),
            "encoders": store.encoders.save(folder, store.encoders.spec.to_json()),
            "batch_size": self.batch_size,
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        (folder / "vocab.json").write_text(json.dumps(self.featurizer.vocab.to_json(), indent=1, ensure_ascii=False))
        torch.save({k: v.cpu() for k, v in self.net.state_dict().items()}, folder / "weights.pt")
        torch.save(store.state(), folder / "products.pt")

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu", unreadable_image: UnreadableImage = "fail") -> Paag:
        """Read a saved model; the encoders stay unloaded until a product needs new features.

        `unreadable_image` (models.unreadable_image) applies to products it has no features for yet.
        """
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise PaagError(f"{folder} holds PAAG format {meta.get('format')}, this code reads {FORMAT}")
        device = resolve_device(device)
        dims = meta["dims"]
        net = PaagNet(NetDims(**{**dims, "attribute_sizes": tuple(dims["attribute_sizes"])}))
        net.load_state_dict(torch.load(folder / "weights.pt", map_location=device, weights_only=True))
        store = ProductStore(Encoders(EncoderSpec.from_json(meta["encoders"], folder), device), unreadable_image)
        store.restore(torch.load(folder / "products.pt", map_location=device, weights_only=True))
        vocab = Vocab.from_json(json.loads((folder / "vocab.json").read_text()))
        return cls(net.to(device), Featurizer(vocab, store), meta["batch_size"])


def _catalog_in(pairs: pd.DataFrame) -> pd.DataFrame | None:
    present = [c for c in PAIR_PRODUCT_COLUMNS if c in pairs.columns]
    if not present:
        return None
    require_columns(pairs, list(PAIR_PRODUCT_COLUMNS), "pairs with product columns")
    return pairs[["product_id", *PAIR_PRODUCT_COLUMNS]].rename(columns=PAIR_PRODUCT_COLUMNS)
