"""The G-MLLM network (docs/design.md#g-mllm): a causal language model read through a prefix of projected
group and product embeddings.

    [k group tokens][m product tokens][instruction, title, category ...][answer ...]

- **Group tokens.** `group_projector` maps the group's attribute profile (osmf_lib.grm.features:
  the share of members holding each attribute value) to `k` embeddings. A one-size-fits-all model
  (`group_aware=False`) sees zeros there: one group for everyone.
- **Product tokens.** `product_projector` maps the product's pooled vision and text features (the
  PAAG feature code: ViT patches of the cut-out, MiniLM tokens of title and category) to `m`
  embeddings.
- **Language model.** Any transformers causal LM built from `text_config`: a tiny Llama trained
  here, SmolLM2-135M, or a vision-language checkpoint such as Qwen2-VL (`language_model_class`).
  Only its language model reads the prefix (as `inputs_embeds`); a vision tower it carries is
  loaded and saved with it but stays unused (product images arrive as the product tokens).

The backbone (`GmllmModel.model`) returns hidden states for the text positions only, aligned
with `input_ids`, so trl's fused LM head (which reads `base_model` and the output embeddings)
scores completions exactly as it does for a plain causal LM, and the group inputs reach the
backbone as keyword arguments.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING


def language_model_class(config: PretrainedConfig) -> type:
    """The auto class that builds and loads this language model: AutoModelForCausalLM, or for a
    vision-language config it does not map (Qwen2-VL), AutoModelForImageTextToText."""
    return AutoModelForCausalLM if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING else AutoModelForImageTextToText


class GmllmConfig(PretrainedConfig):
    model_type = "osmf-gmllm"
    sub_configs: ClassVar[dict[str, type]] = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config: PretrainedConfig | dict[str, Any] | None = None,
        group_dim: int = 1,
        product_dim: int = 1,
        group_tokens: int = 4,
        product_tokens: int = 2,
        group_aware: bool = True,
        **kwargs,
    ) -> None:
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        self.text_config = text_config
        self.group_dim = group_dim
        self.product_dim = product_dim
        self.group_tokens = group_tokens
        self.product_tokens = product_tokens
        self.group_aware = group_aware
        if text_config is not None:
            kwargs.setdefault("tie_word_embeddings", text_config.tie_word_embeddings)
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        return self.text_config


class GmllmBackbone(nn.Module):
    """Prefix embeddings + the language model's decoder; hidden states of the text positions out."""

    def __init__(self, config: GmllmConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.text_config.get_text_config().hidden_size
        self.lm = language_model_class(config.text_config).from_config(config.text_config)
        self.group_projector = nn.Sequential(
            nn.Linear(config.group_dim, hidden), nn.GELU(), nn.Linear(hidden, config.group_tokens * hidden)
        )
        self.product_projector = nn.Sequential(
            nn.Linear(config.product_dim, hidden), nn.GELU(), nn.Linear(hidden, config.product_tokens * hidden)
        )

    @property
    def prefix_length(self) -> int:
        return self.config.group_tokens + self.config.product_tokens

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        group_features: torch.Tensor,
        product_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds with the prefix, its attention mask)."""
        if not self.config.group_aware:
            group_features = torch.zeros_like(group_features)
        batch = input_ids.shape[0]
        tokens = self.lm.get_input_embeddings()(input_ids)
        dtype = tokens.dtype
        group = self.group_projector(group_features.to(dtype)).view(batch, self.config.group_tokens, -1)
        product = self.product_projector(product_features.to(dtype)).view(batch, self.config.product_tokens, -1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix_mask = attention_mask.new_ones(batch, self.prefix_length)
        return torch.cat([group, product, tokens], dim=1), torch.cat([prefix_mask, attention_mask], dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        group_features: torch.Tensor,
        product_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        embeds, mask = self.embed(input_ids, attention_mask, group_features, product_features)
        kwargs.pop("use_cache", None)
        out = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, use_cache=False, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=out.last_hidden_state[:, self.prefix_length :])


class GmllmModel(PreTrainedModel):
    config_class = GmllmConfig
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["GmllmBackbone"]

    def __init__(self, config: GmllmConfig) -> None:
        super().__init__(config)
        self.model = GmllmBackbone(config)
        # The language model's own tying (e.g. SmolLM2's output layer is its input embedding),
        # declared here too: loading ties the parameters of the outermost model only.
        if config.text_config.tie_word_embeddings:
            tied = self.model.lm._tied_weights_keys or {}
            self._tied_weights_keys = {f"model.lm.{k}": f"model.lm.{v}" for k, v in tied.items()}
        self.post_init()
        # Generation settings are the language model's (trl sets their pad token).
        self.generation_config = self.model.lm.generation_config

    def _init_weights(self, module: nn.Module) -> None:
        # The language model initialises itself; the projectors use PyTorch's defaults.
        if isinstance(module, nn.Linear) and not any(module is m for m in self.model.lm.modules()):
            module.reset_parameters()

    @property
    def text_context(self) -> int:
        """Tokens of text the language model can read after the prefix."""
        return self.config.text_config.get_text_config().max_position_embeddings - self.model.prefix_length

    def get_input_embeddings(self) -> nn.Module:
        return self.model.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.model.lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        group_features: torch.Tensor,
        product_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        hidden = self.model(input_ids, group_features, product_features, attention_mask, **kwargs).last_hidden_state
        logits = self.get_output_embeddings()(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    @torch.no_grad()
    def write(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        group_features: torch.Tensor,
        product_features: torch.Tensor,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """The new tokens only, for left-padded inputs (the language model's own `generate`)."""
        embeds, mask = self.model.embed(input_ids, attention_mask, group_features, product_features)
        return self.model.lm.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
