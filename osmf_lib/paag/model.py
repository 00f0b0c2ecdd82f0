"""The PAAG network and `Paag`, the trained encoder with its vocabularies and product features.

User attributes -> embeddings -> MLP -> a query that attends over the product's text tokens and
then over its image patches -> the embedding. The click head reads that same embedding with the
creative's prompt, so training shapes exactly the space K-Means and the anchors use downstream.

The embedding is deliberately not L2-normalised: on the unit sphere the head could not learn how
segments differ in taste for styles, even when handed the true segment (validation AUROC 0.577
with, 0.598 without; a logistic regression on the true segment x style gets 0.608). Grouping is
per product, so the embedding's scale differing between products or model versions is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from osmf_lib import tables
from osmf_lib.paag.features import Encoders, EncoderSpec, PaagError, ProductFeatures, ProductStore

# The users contract decides what describes a user; interests is the one multi-valued attribute.
INTERESTS = "interests"
USER_COLUMNS = tables.USER_ATTRIBUTES
USER_ATTRIBUTES = tuple(c for c in USER_COLUMNS if c != INTERESTS)
# The vocabulary entry of the trained products (the click head's per-product bias).
PRODUCT = "product_id"
# Pairs may carry their product's text and image, so a model on its own can embed any product.
PAIR_PRODUCT_COLUMNS = {"product_title": "title", "product_category": "category", "product_image_uri": "image_uri"}
UNKNOWN = 0  # every vocabulary's index for a missing or never-seen value
FORMAT = 2
ATTRIBUTE_INIT_STD = 0.02


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PaagError(f"{what} lack columns {missing}; expected {list(columns)}")


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def interest_list(value: Any) -> list:
    """An interests cell as a list: Spark hands over arrays, pandas None or NaN for a missing one."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


@dataclass(frozen=True)
class Vocab:
    """Known values per user column and the trained products, seen in training; index i + 1 for
    values[i], UNKNOWN otherwise."""

    values: dict[str, tuple[str, ...]]

    @classmethod
    def fit(cls, examples: pd.DataFrame) -> Vocab:
        values = {c: tuple(sorted(examples[c].dropna().astype(str).unique())) for c in (*USER_ATTRIBUTES, PRODUCT)}
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
            [frame[c].map(self.lookup(c)).fillna(UNKNOWN).to_numpy(dtype=np.int64) for c in USER_ATTRIBUTES], axis=1
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
    attention_heads: int
    embedding_dim: int
    product_aware: bool
    product_count: int


class PaagNet(nn.Module):
    def __init__(self, dims: NetDims) -> None:
        super().__init__()
        self.dims = dims
        hidden, width, out = dims.hidden_dim, dims.hidden_dim // 2, dims.embedding_dim
        self.attributes = nn.ModuleList(nn.Embedding(size, width) for size in dims.attribute_sizes)
        self.interests = nn.Embedding(dims.interest_size, width)
        for embedding in (*self.attributes, self.interests):
            # Small, not N(0, 1): an attribute then moves the embedding only as far as clicks push
            # it, so attributes that do not matter for a product add no spread for K-Means to split.
            nn.init.normal_(embedding.weight, std=ATTRIBUTE_INIT_STD)
        self.query = nn.Sequential(
            nn.Linear(width * (len(dims.attribute_sizes) + 1), hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        # Built for the baseline too (and left unused), so both start from identical weights
        # for every part they share: the comparison isolates the product context.
        self.text_proj = nn.Linear(dims.text_dim, hidden)
        self.text_attn = nn.MultiheadAttention(hidden, dims.attention_heads, batch_first=True)
        self.text_norm = nn.LayerNorm(hidden)
        self.image_proj = nn.Linear(dims.image_dim, hidden)
        self.image_attn = nn.MultiheadAttention(hidden, dims.attention_heads, batch_first=True)
        self.image_norm = nn.LayerNorm(hidden)
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out))
        self.creative_proj = nn.Linear(dims.creative_dim, out)
        # The product u * c lets "this user likes this style" be read off directly.
        self.head = nn.Sequential(nn.Linear(3 * out, hidden), nn.GELU(), nn.Linear(hidden, 1))
        # A product's own click rate is no property of its users: a bias per trained product keeps
        # it out of the embedding (a product the model never saw gets none).
        self.product_bias = nn.Embedding(dims.product_count, 1, padding_idx=UNKNOWN)
        nn.init.zeros_(self.product_bias.weight)

    def embed(
        self, attrs: torch.Tensor, interests: torch.Tensor, products: ProductFeatures, product: torch.Tensor
    ) -> torch.Tensor:
        """Product-aware user embeddings (B, embedding_dim).

        `products` holds the features of the batch's distinct products and `product` each row's
        index into them: keys and values are projected once per product, not once per row.
        """
        parts = [embedding(attrs[:, i]) for i, embedding in enumerate(self.attributes)]
        known = (interests >= 0).unsqueeze(-1)
        summed = (self.interests(interests.clamp(min=0)) * known).sum(1)
        parts.append(summed / known.sum(1).clamp(min=1))
        query = self.query(torch.cat(parts, dim=-1))
        if self.dims.product_aware:
            text = self.text_proj(products.tokens)
            query = _attend(query, text, product, products.mask, self.text_attn, self.text_norm)
            image = self.image_proj(products.patches)
            query = _attend(query, image, product, None, self.image_attn, self.image_norm)
        return self.out(query)

    def click_logit(self, embedding: torch.Tensor, creative: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
        """Click logits from embeddings, creative prompt vectors and product vocabulary indices."""
        c = self.creative_proj(creative)
        interaction = self.head(torch.cat([embedding, c, embedding * c], dim=-1))
        return (interaction + self.product_bias(product)).squeeze(-1)


def _attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    index: torch.Tensor,
    real: torch.Tensor | None,
    attention: nn.MultiheadAttention,
    norm: nn.LayerNorm,
) -> torch.Tensor:
    """nn.MultiheadAttention's computation (one query per row, no dropout), with its key and value
    projections applied to each product's tokens (U, T, h) before they are gathered per row."""
    width, heads = attention.embed_dim, attention.num_heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)

    def split(x: torch.Tensor) -> torch.Tensor:  # (..., T, h) -> (..., heads, T, h / heads)
        return x.unflatten(-1, (heads, width // heads)).transpose(-3, -2)

    k, v = split(F.linear(keys, w_k, b_k))[index], split(F.linear(keys, w_v, b_v))[index]
    q = split(F.linear(query, w_q, b_q).unsqueeze(1))
    mask = None if real is None else real[index][:, None, None, :]
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(1)
    return norm(query + attention.out_proj(attended))


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
        features = ProductFeatures(self.features.tokens[used], self.features.mask[used], self.features.patches[used])
        return self.attrs[index], self.interests[index], features, product

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
        require_columns(frame, ("product_id", *USER_COLUMNS), "pairs")
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
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> Paag:
        """Read a saved model; the encoders stay unloaded until a product needs new features."""
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise PaagError(f"{folder} holds PAAG format {meta.get('format')}, this code reads {FORMAT}")
        device = resolve_device(device)
        dims = meta["dims"]
        net = PaagNet(NetDims(**{**dims, "attribute_sizes": tuple(dims["attribute_sizes"])}))
        net.load_state_dict(torch.load(folder / "weights.pt", map_location=device, weights_only=True))
        store = ProductStore(Encoders(EncoderSpec.from_json(meta["encoders"], folder), device))
        store.restore(torch.load(folder / "products.pt", map_location=device, weights_only=True))
        vocab = Vocab.from_json(json.loads((folder / "vocab.json").read_text()))
        return cls(net.to(device), Featurizer(vocab, store), meta["batch_size"])


def _catalog_in(pairs: pd.DataFrame) -> pd.DataFrame | None:
    present = [c for c in PAIR_PRODUCT_COLUMNS if c in pairs.columns]
    if not present:
        return None
    require_columns(pairs, list(PAIR_PRODUCT_COLUMNS), "pairs with product columns")
    return pairs[["product_id", *PAIR_PRODUCT_COLUMNS]].rename(columns=PAIR_PRODUCT_COLUMNS)


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" picks CUDA when present; asking for CUDA without it is an error, not a silent CPU run."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PaagError("gpu.device is 'cuda' but no CUDA device is available")
    return device
