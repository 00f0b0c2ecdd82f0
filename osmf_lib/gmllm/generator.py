"""`Gmllm`: a trained G-MLLM with what it needs to write for a (product, group): its tokenizer, the
feature code of its prefix, the products it knows and the groups of the night it was trained for.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from osmf_lib.device import resolve_device
from osmf_lib.gmllm.features import PHRASE_SEPARATOR, BackgroundRule, Conditioning, GmllmError, answer, write_background
from osmf_lib.gmllm.model import GmllmModel
from osmf_lib.grm.features import PROFILE_COLUMNS, load_context, require_columns, save_context

FORMAT = 1
PRODUCT_COLUMNS = ("product_id", "title", "category", "image_uri")
WRITE_COLUMNS = ("product_id", "group_id")


class Gmllm:
    def __init__(
        self,
        model: GmllmModel,
        tokenizer: PreTrainedTokenizerBase,
        conditioning: Conditioning,
        profiles: pd.DataFrame,
        products: pd.DataFrame,
        max_new_tokens: int,
        batch_size: int,
        rule: BackgroundRule,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.conditioning = conditioning
        self.profiles = profiles[list(PROFILE_COLUMNS)].reset_index(drop=True)
        self.products = products[list(PRODUCT_COLUMNS)].drop_duplicates("product_id").reset_index(drop=True)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.rule = rule

    @property
    def group_aware(self) -> bool:
        return bool(self.model.config.group_aware)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _known_products(self, products: pd.DataFrame | None) -> pd.DataFrame:
        if products is None:
            return self.products
        require_columns(products, PRODUCT_COLUMNS, "products")
        return pd.concat([products[list(PRODUCT_COLUMNS)], self.products]).drop_duplicates("product_id")

    @cached_property
    def foreign_tokens(self) -> list[int]:
        """Tokens no logged background phrase is written with, kept out of every description when
        the rule has a phrase list. Why: the pre-training tasks share one vocabulary, and without
        this a description drifted into a title, a group description or a click answer ("with into
        yes"), or into half a multi-byte character; the rule then threw the whole description away.
        """
        if not self.rule.phrases:
            return []
        allowed = {self.tokenizer.eos_token_id}
        for phrase in self.rule.phrases:
            # As a phrase is written inside a description: after a space, before a separator.
            allowed.update(self.tokenizer(answer(phrase) + PHRASE_SEPARATOR, add_special_tokens=False)["input_ids"])
        return sorted(set(range(self.model.get_output_embeddings().weight.shape[0])) - allowed)

    def _titles(self, rows: pd.DataFrame, products: pd.DataFrame | None) -> pd.DataFrame:
        """Title and category per row."""
        known = self._known_products(products).set_index("product_id")
        missing = sorted(set(rows["product_id"]) - set(known.index))
        if missing:
            raise GmllmError(f"no title or category for products {missing[:5]}; pass them in `products`")
        return known.loc[rows["product_id"], ["title", "category"]]

    def instructions(self, rows: pd.DataFrame, products: pd.DataFrame | None = None) -> list[str]:
        found = self._titles(rows, products)
        return [write_background(t, c) for t, c in zip(found["title"], found["category"], strict=True)]

    def prefix_inputs(
        self, rows: pd.DataFrame, profiles: pd.DataFrame | None = None, products: pd.DataFrame | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(group features, product features) of (product_id, group_id) rows."""
        require_columns(rows, WRITE_COLUMNS, "rows to write for")
        groups = self.conditioning.groups(
            rows, self.profiles if profiles is None else profiles, everyone=not self.group_aware
        )
        known = self._known_products(products)
        return groups, self.conditioning.products(rows["product_id"].tolist(), known)

    @torch.no_grad()
    def write(
        self,
        rows: pd.DataFrame,
        profiles: pd.DataFrame | None = None,
        products: pd.DataFrame | None = None,
        samples: int = 0,
        seed: int = 0,
        temperature: float = 1.0,
    ) -> pd.DataFrame:
        """Background descriptions for (product_id, group_id) rows: the most likely one
        (`samples=0`, greedy) or `samples` drawn ones per row (seeded, at `temperature`: 1 reads
        the model's own distribution, lower draws closer to its mode). One row out per description:
        product_id, group_id, sample, prompt, usable (a description fit to render by the model's
        BackgroundRule; an unusable one keeps its text for counting and must not be passed on)."""
        rows = rows[list(WRITE_COLUMNS)].reset_index(drop=True)
        if samples:
            rows = rows.loc[rows.index.repeat(samples)].reset_index(drop=True)
        out = rows.assign(sample=rows.groupby(list(WRITE_COLUMNS)).cumcount() if samples else 0)
        if not len(rows):
            return out.assign(prompt=pd.Series(dtype=str), usable=pd.Series(dtype=bool))
        texts = self.instructions(rows, products)
        groups, product_features = self.prefix_inputs(rows, profiles, products)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        # An instruction too long for the context keeps its end ("...Background:"), where the answer starts.
        self.tokenizer.truncation_side = "left"
        room = self.model.text_context - self.max_new_tokens
        eos = self.tokenizer.eos_token_id
        prompts, finished = [], []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(rows), self.batch_size):
                part = slice(start, start + self.batch_size)
                batch = self.tokenizer(
                    texts[part], return_tensors="pt", padding=True, truncation=True, max_length=room
                ).to(self.device)
                new = self.model.write(
                    batch["input_ids"],
                    batch["attention_mask"],
                    groups[part].to(self.device),
                    product_features[part].to(self.device),
                    max_new_tokens=self.max_new_tokens,
                    # No top-k or nucleus cut: the temperature alone says how far from the mode to draw.
                    **(
                        {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": temperature}
                        if samples
                        else {"do_sample": False}
                    ),
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=eos,
                    suppress_tokens=self.foreign_tokens or None,
                )
                finished += (new == eos).any(dim=1).tolist()
                prompts += [" ".join(t.split()) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        titles = self._titles(rows, products)["title"]
        fit = [self.rule.usable(p, done, t) for p, done, t in zip(prompts, finished, titles, strict=True)]
        return out.assign(prompt=prompts, usable=fit)

    def save(self, folder: Path) -> None:
        conditioning = self.conditioning
        save_context(
            folder,
            FORMAT,
            conditioning.store,
            conditioning.vocab,
            self.profiles,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            background_phrases=self.rule.to_json(),
        )
        self.model.save_pretrained(folder / "model")
        self.tokenizer.save_pretrained(folder / "model")
        self.products.to_parquet(folder / "products.parquet", index=False)

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu", unreadable_image: str = "fail") -> Gmllm:
        device = resolve_device(device)
        saved = load_context(folder, FORMAT, "G-MLLM", GmllmError, device, unreadable_image)
        return cls(
            GmllmModel.from_pretrained(folder / "model").to(device),
            AutoTokenizer.from_pretrained(folder / "model"),
            Conditioning(saved.vocab, saved.store),
            saved.profiles,
            pd.read_parquet(folder / "products.parquet"),
            saved.meta["max_new_tokens"],
            saved.meta["batch_size"],
            # A model saved before descriptions had a phrase list checks them as free text.
            BackgroundRule.from_json(saved.meta.get("background_phrases")),
        )
