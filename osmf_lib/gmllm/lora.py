"""LoRA for the small and full profiles' G-MLLM: adapters on the language model's attention
projections, trained with both prefix projectors; everything else stays frozen.

The adapters are injected into the language model's decoder in place (peft's
`inject_adapter_in_model`), so the G-MLLM stays a plain `GmllmModel` to trl: `base_model` is still
the backbone and `get_output_embeddings()` the language model's (frozen, possibly tied) output
layer, which is what trl's fused LM head reads. Only the decoder is adapted, so a vision tower
that a full checkpoint carries (e.g. Qwen2-VL's) gets no adapters even where its layers share the
names.

`merge_lora` folds the adapters into the weights they adapt and puts the plain layers back, so
`save_pretrained` writes (and `from_pretrained` reads) the same keys as a model never adapted.
Save only merged models.
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from osmf_lib.gmllm.features import GmllmError
from osmf_lib.gmllm.model import GmllmModel

# Query, key, value and output projections: their names in Llama (SmolLM2, the tiny model) and
# Qwen2 (Qwen2-VL's language model) alike.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _decoder(model: GmllmModel) -> nn.Module:
    return model.model.lm.get_decoder()


def lora_layers(model: GmllmModel) -> list[str]:
    """Names (under the decoder) of the layers that carry adapters; empty for a plain model."""
    return [name for name, module in _decoder(model).named_modules() if isinstance(module, BaseTunerLayer)]


def with_lora(model: GmllmModel, rank: int, alpha: float | None = None) -> GmllmModel:
    """Adapt `model` in place and return it: LoRA of `rank` (scale alpha/rank, alpha = 2 * rank by
    default) on every attention projection of the language model's decoder. Trainable afterwards:
    the adapters and both projectors, nothing else (embeddings and output layer included)."""
    if lora_layers(model):
        raise GmllmError("the G-MLLM already has LoRA adapters; merge_lora it first")
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(ATTENTION_PROJECTIONS),
    )
    model.requires_grad_(False)
    try:
        inject_adapter_in_model(config, _decoder(model))
    except ValueError as err:  # no layer of those names: an architecture this list does not cover
        raise GmllmError(f"no attention projections named {ATTENTION_PROJECTIONS} to adapt: {err}") from None
    for name, param in _decoder(model).named_parameters():
        param.requires_grad_("lora_" in name)
    model.model.group_projector.requires_grad_(True)
    model.model.product_projector.requires_grad_(True)
    return model


def merge_lora(model: GmllmModel) -> GmllmModel:
    """Fold the adapters into their layers and put the plain layers back, in place; every parameter
    trainable again, as after `from_pretrained`. A model without adapters is returned unchanged."""
    decoder = _decoder(model)
    names = lora_layers(model)
    if not names:
        return model
    for name in names:
        layer = decoder.get_submodule(name)
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(decoder.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(decoder, "peft_config"):
        del decoder.peft_config
    return model.requires_grad_(True)
