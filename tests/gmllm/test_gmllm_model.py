"""The G-MLLM on a small world whose answer is known: two groups of every product want opposite
backgrounds, so only a generator that reads its group prefix can write each its own."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from trl import DPOConfig

from osmf_lib.config import Config, load_config
from osmf_lib.gmllm import features as text
from osmf_lib.gmllm.base import build_tiny, new_gmllm
from osmf_lib.gmllm.dpo import (
    NO_CONTRAST,
    GroupDPOConfig,
    GroupDPOTrainer,
    GroupPreferenceCollator,
    balanced_weights,
    dpo_args,
    frozen_copy,
    preference_data,
    train_dpo,
)
from osmf_lib.gmllm.features import Conditioning, GmllmError
from osmf_lib.gmllm.generator import Gmllm
from osmf_lib.gmllm.model import GmllmModel
from osmf_lib.gmllm.train import EVERYONE, encode, fit, pretraining_examples
from osmf_lib.grm.features import ProfileVocab
from osmf_lib.paag.features import Encoders, EncoderSpec, ProductStore

WANTS = {0: "a sunlit beach scene, warm golden tones", 1: "a misty forest scene, cool blue tones"}
OTHER = "a busy city street scene, soft pastel tones"
PRODUCTS = [f"p{i:02d}" for i in range(8)]


def _cfg(tmp: Path, *more: str) -> Config:
    return load_config(
        overrides=[f"models.dir={tmp}", "gmllm.epochs=30", "gmllm.batch_size=16", "gmllm.max_new_tokens=16", *more],
        base_file=None,
    )


def _world() -> dict[str, pd.DataFrame]:
    products = pd.DataFrame(
        {
            "product_id": PRODUCTS,
            "title": [f"Oak Vase No. {i}" for i in range(len(PRODUCTS))],
            "category": "home",
            "price_band": "budget",
            "image_uri": None,
        }
    )
    profiles = pd.DataFrame(
        [(pid, group, f"gender={gender}", 1.0) for pid in PRODUCTS for group, gender in ((0, "female"), (1, "male"))],
        columns=["product_id", "group_id", "feature", "share"],
    )
    cells = pd.DataFrame(
        [
            (pid, group, f"c{k}", prompt, 0.05 if prompt == WANTS[group] else 0.02, "train")
            for pid in PRODUCTS
            for group in (0, 1)
            for k, prompt in enumerate((*WANTS.values(), OTHER))
        ],
        columns=["product_id", "group_id", "creative_id", "prompt", "ctr_smoothed", "split"],
    )
    groups = pd.DataFrame(
        [(pid, g, d) for pid in PRODUCTS for g, d in ((0, "women"), (1, "men"))],
        columns=["product_id", "group_id", "description"],
    )
    return {"products": products, "profiles": profiles, "cells": cells, "groups": groups}


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    return _world()


@pytest.fixture(scope="module")
def pretrained(world, tmp_path_factory) -> tuple[Gmllm, Config]:
    torch.manual_seed(0)
    cfg = _cfg(tmp_path_factory.mktemp("models"))
    examples = pretraining_examples(world["cells"], world["groups"], world["products"], cfg)
    folder = build_tiny([*examples["prompt"], *examples["completion"]], cfg)
    store = ProductStore(Encoders(EncoderSpec.from_config(cfg), torch.device("cpu")))
    cond = Conditioning(ProfileVocab.fit(world["profiles"]), store)
    model, tokenizer = new_gmllm(folder, cond.group_dim, cond.products(PRODUCTS[:1], world["products"]).shape[1], cfg)
    data = encode(examples, tokenizer, cond, world["profiles"], world["products"], model.text_context)
    losses = fit(model, tokenizer, data, cfg)
    assert losses[-1] < losses[0] / 3
    rule = text.BackgroundRule.of("logged_phrases", world["cells"]["prompt"])
    return Gmllm(model, tokenizer, cond, world["profiles"], world["products"], 16, 64, rule), cfg


def _rows(products=PRODUCTS) -> pd.DataFrame:
    return pd.DataFrame([(p, g) for p in products for g in (0, 1)], columns=["product_id", "group_id"])


def test_the_four_tasks_come_from_the_tables_and_clicks_only_from_training_products(world):
    cells = world["cells"].assign(split=lambda f: f["product_id"].map(lambda p: "test" if p == "p07" else "train"))
    examples = pretraining_examples(cells, world["groups"], world["products"], Config())
    assert set(examples["task"]) == {"describe_group", "predict_click", "describe_product", "write_background"}
    click_derived = examples[examples["task"].isin(["predict_click", "write_background"])]
    assert "p07" not in set(click_derived["product_id"])
    best = examples[examples["task"] == "write_background"].set_index(["product_id", "group_id"])["completion"]
    assert best[("p00", 0)] == " " + WANTS[0] and best[("p00", 1)] == " " + WANTS[1]
    assert (examples.loc[examples["task"] == "describe_product", "group_id"] == EVERYONE).all()
    capped = pretraining_examples(
        cells,
        world["groups"],
        world["products"],
        load_config(overrides=["gmllm.max_examples_per_task=5"], base_file=None),
    )
    assert capped["task"].value_counts().max() == 5


def test_the_tiny_base_is_built_once_per_text_and_its_tokenizer_keeps_answers_on_token_boundaries(tmp_path):
    cfg = _cfg(tmp_path)
    first = build_tiny(["Write the ad background.", WANTS[0]], cfg)
    assert build_tiny([WANTS[0], "Write the ad background."], cfg) == first
    assert build_tiny(["another corpus", WANTS[1]], cfg) != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    _, tokenizer = new_gmllm(first, 3, 5, cfg)
    prompt = text.write_background("Oak Vase", "home")
    whole = tokenizer(prompt + text.answer(WANTS[0]))["input_ids"]
    assert whole[: len(tokenizer(prompt)["input_ids"])] == tokenizer(prompt)["input_ids"]
    assert whole[0] == tokenizer.bos_token_id
    with pytest.raises(GmllmError, match="no text"):
        build_tiny([], cfg)


def test_each_group_gets_its_own_background_after_pretraining(pretrained):
    gmllm, _ = pretrained
    written = gmllm.write(_rows()).set_index(["product_id", "group_id"])
    assert written["usable"].all()
    for (_, group), prompt in written["prompt"].items():
        assert prompt == WANTS[group]


def test_a_one_size_model_ignores_the_group(pretrained, world):
    gmllm, _ = pretrained
    one = copy.deepcopy(gmllm.model)
    one.config.group_aware = False
    ids = gmllm.tokenizer(["Write the ad background."], return_tensors="pt")["input_ids"]
    product = torch.zeros(1, gmllm.model.config.product_dim)
    a, b = torch.zeros(1, gmllm.model.config.group_dim), torch.ones(1, gmllm.model.config.group_dim)
    assert torch.equal(one(ids, a, product).logits, one(ids, b, product).logits)
    assert not torch.equal(gmllm.model(ids, a, product).logits, gmllm.model(ids, b, product).logits)


def test_save_and_load_give_the_same_descriptions(pretrained, tmp_path):
    gmllm, _ = pretrained
    gmllm.save(tmp_path / "g")
    again = Gmllm.load(tmp_path / "g")
    rows = _rows(PRODUCTS[:2])
    assert again.write(rows)["prompt"].tolist() == gmllm.write(rows)["prompt"].tolist()
    sampled = gmllm.write(rows, samples=3, seed=5)
    assert len(sampled) == 12 and sorted(sampled["sample"].unique()) == [0, 1, 2]
    assert sampled["prompt"].tolist() == gmllm.write(rows, samples=3, seed=5)["prompt"].tolist()
    with pytest.raises(GmllmError, match="no meta.json"):
        Gmllm.load(tmp_path / "nothing")


def test_bad_input_is_named(pretrained, world):
    gmllm, _ = pretrained
    with pytest.raises(GmllmError, match="no group profile"):
        gmllm.write(pd.DataFrame({"product_id": ["p00"], "group_id": [7]}))
    with pytest.raises(GmllmError, match="no title or category"):
        gmllm.write(
            pd.DataFrame({"product_id": ["nope"], "group_id": [0]}),
            profiles=world["profiles"].assign(product_id="nope"),
        )
    # An instruction longer than the context keeps its end and still gets an answer.
    huge = world["products"].head(1).assign(product_id="huge", title="Vase " * 400, image_uri=None)
    profiles = world["profiles"].head(1).assign(product_id="huge")
    out = gmllm.write(pd.DataFrame({"product_id": ["huge"], "group_id": [0]}), profiles, huge)
    assert len(out) == 1


# What the demo night of e61d138 served (issue 31), with the product each was written for.
GARBLED = {
    "a cozy living room scene, vivid\ufffdWeather Running Shoes (electronics, bright daylight": (
        "Stride All-Weather Running Shoes",
        "broken bytes",
    ),
    "a clean white studio tier-3/tier-4 cities, low purchase power, into3 cities": ("", "a phrase no logged"),
    "a rustic kitchen scene, bright daylight, minimalist style, muted earthy tones, with into yes": ("", "a phrase no"),
    "a busy city street scene, Velvet Dinosaur city street scene": ("Tumble Velvet Dinosaur", "the title"),
    "a sunlit beach scene, dramatic spotlight, dramatic spotlight": ("", "a repeated phrase"),
}
LOGGED = (
    "a cozy living room scene, vivid saturated colours, bright daylight",
    "a clean white studio scene, minimalist style, with potted plants",
    "a rustic kitchen scene, bright daylight, minimalist style, muted earthy tones",
    "a busy city street scene, dramatic spotlight",
    "a sunlit beach scene, warm golden tones, dramatic spotlight",
)


def test_a_usable_description_is_a_finished_background_made_of_logged_phrases():
    rule = text.BackgroundRule.of("logged_phrases", LOGGED)
    assert rule.usable("a busy city street scene, bright daylight, with potted plants", finished=True)
    assert rule.problem(WANTS[0], finished=False) == "unfinished"
    assert rule.problem("a beach", finished=True) == "too short"
    assert rule.problem("Write the ad background. Background: beach scene", True) == "an instruction label"
    for garbled, (title, why) in GARBLED.items():
        assert rule.problem(garbled, True, title).startswith(why), garbled


def test_free_text_drops_the_phrase_list_and_keeps_the_rest():
    rule = text.BackgroundRule.of("free_text", LOGGED)
    assert rule.usable("a moonlit rooftop garden, silver tones", finished=True)
    caught = {g: rule.problem(g, True, title) for g, (title, _) in GARBLED.items()}
    assert [why for why in caught.values() if why] == ["broken bytes", "the title", "a repeated phrase"]
    assert rule.problem("a scene\x07 with a bell, soft light", True) == "broken bytes"
    assert text.BackgroundRule.from_json(rule.to_json()) == rule
    phrases = text.BackgroundRule.of("logged_phrases", LOGGED)
    assert text.BackgroundRule.from_json(phrases.to_json()) == phrases


def test_with_a_phrase_list_a_description_is_written_only_with_the_logged_phrases_tokens(pretrained):
    gmllm, _ = pretrained
    logged = {word for prompt in (*WANTS.values(), OTHER) for word in text.phrases_of(prompt)}
    free = Gmllm(
        gmllm.model, gmllm.tokenizer, gmllm.conditioning, gmllm.profiles, gmllm.products, 16, 64, text.BackgroundRule()
    )
    # Far from the mode, where the other tasks' words (titles, "women", " yes") come up.
    hot = {"samples": 8, "seed": 3, "temperature": 4.0}

    def words(written: pd.DataFrame) -> set[str]:
        return set(" ".join(written["prompt"]).replace(text.PHRASE_SEPARATOR, " ").split())

    vocabulary = set(" ".join(logged).split())
    assert not words(free.write(_rows(), **hot)) <= vocabulary
    assert free.foreign_tokens == []
    assert words(gmllm.write(_rows(), **hot)) <= vocabulary


def _pairs(chosen_group: int, products=PRODUCTS) -> pd.DataFrame:
    """Pairs that ask every group for the other group's background (so DPO has to move it)."""
    return pd.DataFrame(
        [(p, g, WANTS[1 - g], WANTS[g], 1 - g if chosen_group < 0 else NO_CONTRAST) for p in products for g in (0, 1)],
        columns=["product_id", "group_id", "chosen_prompt", "rejected_prompt", "contrast_group"],
    )


def _batch(gmllm: Gmllm, pairs: pd.DataFrame, world) -> dict[str, torch.Tensor]:
    """The pairs as one training batch, tokenized as trl tokenizes them."""
    dataset, collator = preference_data(gmllm, pairs, world["profiles"], world["products"])
    tok = gmllm.tokenizer
    rows = [
        {
            "prompt_ids": tok(e["prompt"])["input_ids"],
            "chosen_ids": tok(e["chosen"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
            "rejected_ids": tok(e["rejected"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
            "row": e["row"],
            "weight": e["weight"],
            "has_contrast": e["has_contrast"],
        }
        for e in dataset
    ]
    return collator(rows)


def _margin(gmllm: Gmllm, pairs: pd.DataFrame, world) -> float:
    """Mean log pi(chosen) - log pi(rejected) of the pairs."""
    batch = _batch(gmllm, pairs, world)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        logits = gmllm.model(
            batch["input_ids"], batch["group_features"], batch["product_features"], batch["attention_mask"]
        ).logits
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    sums = (logp * (labels[:, 1:] != -100)).sum(1)
    n = len(pairs)
    return float((sums[:n] - sums[n:]).mean())


def test_the_collator_stacks_chosen_before_rejected_with_each_rows_prefix(pretrained, world):
    gmllm, _ = pretrained
    pairs = _pairs(-1, PRODUCTS[:2])
    dataset, collator = preference_data(gmllm, pairs, world["profiles"], world["products"])
    assert isinstance(collator, GroupPreferenceCollator)
    examples = [
        {
            "prompt_ids": [1, 5],
            "chosen_ids": [6],
            "rejected_ids": [7, 8],
            **{k: e[k] for k in ("row", "weight", "has_contrast")},
        }
        for e in dataset
    ]
    batch = collator(examples)
    n = len(pairs)
    assert batch["group_features"].shape[0] == 2 * n
    assert torch.equal(batch["group_features"][:n], batch["group_features"][n:])
    assert torch.equal(batch["input_ids"][n, :3], torch.tensor([1, 5, 7]))
    # Row 0 is group 0 of p00; its contrast is group 1, whose profile differs.
    assert not torch.equal(batch["contrast_features"][0], batch["group_features"][0])
    assert batch["has_contrast"].all()


def test_balanced_weights_give_every_group_the_same_total():
    pairs = pd.DataFrame({"product_id": ["a", "a", "a", "b"], "group_id": [0, 0, 0, 1]})
    weights = balanced_weights(pairs)
    assert weights.iloc[:3].sum() == pytest.approx(weights.iloc[3]) and weights.mean() == pytest.approx(1.0)


def test_training_off_cuda_runs_in_fp32(pretrained, tmp_path):
    # trl defaults to bf16, and bf16 autocast on a CPU without bf16 units made each step 4.8x slower.
    gmllm, cfg = pretrained
    args = dpo_args(str(tmp_path), gmllm, cfg)
    assert args.use_cpu and not args.bf16 and not args.fp16


@pytest.mark.parametrize("contrast", [0.0, 1.0])
def test_group_dpo_moves_each_group_to_its_chosen_answer_and_never_the_reference(pretrained, world, contrast):
    base, cfg = pretrained
    cfg = load_config(
        overrides=[f"models.dir={cfg.models.dir}", "group_dpo.epochs=6", "group_dpo.batch_size=8"], base_file=None
    )
    policy = Gmllm(
        copy.deepcopy(base.model), base.tokenizer, base.conditioning, base.profiles, base.products, 16, 64, base.rule
    )
    reference = frozen_copy(base.model)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    pairs = _pairs(-1)
    start = _margin(policy, pairs, world)
    logs = train_dpo(policy, reference, pairs, world["profiles"], world["products"], cfg, contrast)
    assert _margin(policy, pairs, world) > start + 1.0
    written = policy.write(_rows()).set_index(["product_id", "group_id"])
    assert written["usable"].all()  # still writing finished descriptions, now the other group's
    assert all(prompt == WANTS[1 - group] for (_, group), prompt in written["prompt"].items())
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert ("loss/contrast" in logs) == (contrast > 0) and "loss/sft" in logs
    assert not any(p.requires_grad for p in reference.parameters())


def test_the_contrast_term_moves_the_answer_under_its_own_group_only(pretrained, world, tmp_path):
    # The other group's pass is a fixed target: no gradient may reach it (or lower y_w under g').
    base, cfg = pretrained
    policy = copy.deepcopy(base.model).train()
    gmllm = Gmllm(policy, base.tokenizer, base.conditioning, base.profiles, base.products, 16, 64, base.rule)
    trainer = GroupDPOTrainer(
        model=policy,
        ref_model=frozen_copy(base.model),
        args=dpo_args(str(tmp_path), gmllm, cfg, contrast_weight=1.0),
        train_dataset=preference_data(gmllm, _pairs(-1, PRODUCTS[:2]), world["profiles"], world["products"])[0],
        processing_class=base.tokenizer,
    )
    batch = _batch(gmllm, _pairs(-1, PRODUCTS[:2]), world)
    own, other = batch["group_features"].requires_grad_(), batch["contrast_features"].requires_grad_()
    trainer.compute_loss(policy, batch).backward()
    assert trainer._metrics["train"]["loss/contrast"]
    assert own.grad is not None and own.grad.abs().sum() > 0
    assert other.grad is None


@pytest.mark.parametrize(
    "option",
    [{"loss_type": ["ipo"]}, {"label_smoothing": 0.1}, {"f_divergence_type": "js_divergence"}, {"use_weighting": True}],
    ids=lambda option: next(iter(option)),
)
def test_group_dpo_refuses_the_dpo_options_its_loss_would_ignore(pretrained, tmp_path, option):
    base, cfg = pretrained
    args = replace(dpo_args(str(tmp_path), base, cfg), **option)
    with pytest.raises(ValueError, match=f"would ignore {next(iter(option))}="):
        GroupDPOTrainer(model=base.model, ref_model=frozen_copy(base.model), args=args)


def test_group_dpo_reads_its_weights_from_its_config(pretrained, tmp_path):
    base, cfg = pretrained
    args = dpo_args(str(tmp_path), base, cfg, contrast_weight=0.25)
    assert isinstance(args, GroupDPOConfig) and args.contrast_weight == 0.25
    assert args.sft_weight == cfg.group_dpo.sft_weight
    assert all(GroupDPOConfig.__dataclass_fields__[f].metadata["help"] for f in ("contrast_weight", "sft_weight"))
    plain = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(TypeError, match="GroupDPOConfig"):
        GroupDPOTrainer(model=base.model, ref_model=frozen_copy(base.model), args=plain)
    with pytest.raises(ValueError, match="contrast_weight must be >= 0"):
        replace(args, contrast_weight=-1.0)


def test_a_model_saved_with_tied_embeddings_loads_tied(pretrained, tmp_path):
    gmllm, _ = pretrained
    gmllm.model.save_pretrained(tmp_path)
    again = GmllmModel.from_pretrained(tmp_path)
    lm = again.model.lm
    assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
