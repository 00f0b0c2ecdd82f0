"""The pretrain_gmllm and train_group_dpo stages on the lakehouse (docs/design.md#g-mllm, #group-dpo).

- **pretrain_gmllm** builds the four pre-training tasks from tonight's tables, trains the G-MLLM
  around the profile's language model and registers it as `osmf-gmllm-base`, the reference every
  later Group-DPO run starts from. Skipped, with a log line, while the base model for the night is
  younger than `gmllm.fresh_days`.
- **train_group_dpo** trains three generators from that base, on the same pairs and budget:
  Group-DPO (group prefix + contrast term), DPO with the prefix only, and one-size-fits-all DPO (no
  group input). Data: the logged training pairs, then `group_dpo.rounds` on-policy rounds whose
  samples the night's osmf-grm (pinned for the ds) labels. All three are logged in the run; the
  group-aware one with the higher validation reward (the mean GRM click probability of the greedy
  descriptions for the validation products' groups, an unusable one scoring 0) is registered as
  `osmf-gmllm` (tag osmf.gmllm_variant) and promoted by the one rule on that same reward.
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import date

import mlflow
import numpy as np
import pandas as pd
import torch

from osmf_lib import promotion, tables, tracking
from osmf_lib.config import Config
from osmf_lib.device import resolve_device
from osmf_lib.gmllm.base import base_checkpoint, new_gmllm
from osmf_lib.gmllm.dpo import NO_CONTRAST, PAIR_COLUMNS, frozen_copy, train_dpo
from osmf_lib.gmllm.features import BackgroundRule, Conditioning, GmllmError
from osmf_lib.gmllm.generator import Gmllm
from osmf_lib.gmllm.lora import merge_lora, with_lora
from osmf_lib.gmllm.registry import ARTIFACTS, TAG_BASE, TAG_GRM, TAG_VARIANT, load_gmllm, log_gmllm
from osmf_lib.gmllm.train import EVERYONE, encode, fit, pretraining_examples, stable_sample
from osmf_lib.grm import Grm
from osmf_lib.grm.features import ProfileVocab
from osmf_lib.inputs import (
    check_groups,
    dimension_versions,
    group_data_prints,
    night_grm,
    writer_data,
)
from osmf_lib.job import JobContext, StageResult
from osmf_lib.night import GMLLM, GMLLM_BASE, GRM
from osmf_lib.paag.features import Encoders, EncoderSpec, ProductStore
from osmf_lib.tables import GROUP_PREFERENCE_PAIRS

log = logging.getLogger(__name__)

MODEL_NAME = GMLLM.name
BASE_NAME = GMLLM_BASE.name
PRETRAIN_STAGE = "gmllm_pretrain"
DPO_STAGE = "group_dpo"
METRIC = "val_grm_reward"
# On a base version: the base_settings it was made with, as JSON.
TAG_BASE_SETTINGS = "osmf.base_settings"
# name -> (reads the group prefix, contrast weight taken from the config)
VARIANTS = {"group_dpo": (True, True), "prefix_dpo": (True, False), "onesize_dpo": (False, False)}


def corpus(data: dict[str, pd.DataFrame]) -> list[str]:
    """The text the tiny tokenizer learns: every task's instructions and answers (titles,
    categories and group descriptions among them) and every logged background."""
    examples = pretraining_examples(data["cells"], data["groups"], data["products"], Config())
    return [*examples["prompt"], *examples["completion"], *data["cells"]["prompt"]]


def conditioning(cfg: Config, profiles: pd.DataFrame, device: torch.device) -> Conditioning:
    store = ProductStore(Encoders(EncoderSpec.from_config(cfg), device), cfg.models.unreadable_image)
    return Conditioning(ProfileVocab.fit(profiles), store)


def _settings(cfg: Config) -> dict:
    return {"gmllm": cfg.gmllm.model_dump(mode="json"), "models": cfg.models.model_dump(mode="json")}


def base_settings(cfg: Config) -> dict:
    """What a pre-trained base is made of: its profile, language model, encoders, prefix sizes and
    the rule its descriptions are checked by. A base made otherwise is no base for this config."""
    g, m = cfg.gmllm, cfg.models
    language_model = {"tiny": g.tiny.model_dump(mode="json"), "small": g.small_checkpoint, "full": g.full_checkpoint}
    return {
        "profile": m.profile,
        "language_model": language_model[m.profile],
        "text_encoder": m.text_encoder,
        "vision_encoder": "tiny-vit" if m.profile == "tiny" else m.vision_encoder,
        "group_prefix_tokens": g.group_prefix_tokens,
        "product_tokens": g.product_tokens,
        "lora_rank": g.lora_rank,
        "description_rule": g.description_rule,
    }


def fresh_base(cfg: Config, ds: date) -> str | None:
    """The base model for ds when it is younger than gmllm.fresh_days and was made with this
    config's base_settings (else None, saying why when a young one was made otherwise)."""
    version = promotion.version_for_ds(BASE_NAME, ds)
    if version is None:
        return None
    tags = mlflow.MlflowClient().get_model_version(BASE_NAME, version).tags
    if (ds - date.fromisoformat(tags[promotion.TAG_CHAMPION_FROM])).days >= cfg.gmllm.fresh_days:
        return None
    made_with = json.loads(tags.get(TAG_BASE_SETTINGS, "{}"))
    wanted = base_settings(cfg)
    differ = sorted(key for key in wanted.keys() | made_with.keys() if made_with.get(key) != wanted.get(key))
    if differ:
        changes = ", ".join(f"{key}: {made_with.get(key)} -> {wanted.get(key)}" for key in differ)
        log.info(
            f"pretrain_gmllm: {BASE_NAME} v{version} is fresh but was made with other settings ({changes}): "
            "pre-training anew"
        )
        return None
    return version


def pretrain_gmllm(ctx: JobContext) -> StageResult:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    check_groups(spark, cfg, ds)
    fresh = fresh_base(cfg, ds)
    if fresh is not None:
        return StageResult(skipped=f"{BASE_NAME} v{fresh} is younger than gmllm.fresh_days={cfg.gmllm.fresh_days}")
    dimensions = dimension_versions(ctx)
    tags = promotion.training_tags(ds, group_data_prints(ctx, dimensions), _settings(cfg))
    reused = promotion.reusable_version(BASE_NAME, tags)
    if reused is not None:
        if promotion.TAG_CHAMPION_FROM not in reused.tags:  # a run stopped between registering and crowning it
            promotion.crown(BASE_NAME, reused.version, ds)
        return promotion.reused("pretrain_gmllm", reused, ds)
    data = writer_data(ctx, dimensions)
    examples = pretraining_examples(data["cells"], data["groups"], data["products"], cfg)
    if not (examples["task"] == "write_background").any():
        return StageResult(skipped=f"no group of a training product has a logged creative for ds={ds}")
    device = resolve_device(cfg.gpu.device)
    cond = conditioning(cfg, data["profiles"], device)
    product_dim = cond.products(data["products"]["product_id"].iloc[:1].tolist(), data["products"]).shape[1]
    model, tokenizer = new_gmllm(base_checkpoint(cfg, corpus(data)), cond.group_dim, product_dim, cfg)
    if cfg.models.profile != "tiny":  # a pretrained language model is tuned through LoRA
        with_lora(model, cfg.gmllm.lora_rank)
    model.to(device)
    encoded = encode(examples, tokenizer, cond, data["profiles"], data["products"], model.text_context)
    if encoded.too_long:
        log.info(f"pretrain_gmllm: {encoded.too_long} examples longer than the model's context were left out")
    losses = fit(model, tokenizer, encoded, cfg)
    merge_lora(model)
    gmllm = Gmllm(
        model,
        tokenizer,
        cond,
        data["profiles"],
        data["products"],
        cfg.gmllm.max_new_tokens,
        cfg.gmllm.generation_batch_size,
        BackgroundRule.of(cfg.gmllm.description_rule, data["cells"]["prompt"]),
    )
    counts = examples["task"].value_counts()
    mlflow.log_params({f"gmllm.examples.{task}": int(n) for task, n in counts.items()})
    for epoch, loss in enumerate(losses, start=1):
        mlflow.log_metric("gmllm.pretrain_loss", loss, step=epoch)
    uri = log_gmllm(gmllm, BASE_NAME, ds, examples[examples["group_id"] != EVERYONE])
    version = tracking.register(uri, BASE_NAME)
    client = mlflow.MlflowClient()
    for key, value in {**tags, TAG_BASE_SETTINGS: json.dumps(base_settings(cfg), sort_keys=True)}.items():
        client.set_model_version_tag(BASE_NAME, version, key, value)
    promotion.crown(BASE_NAME, version, ds)
    log.info(
        f"pretrain_gmllm: {BASE_NAME} v{version} on {len(examples)} examples "
        f"({', '.join(f'{t} {n}' for t, n in counts.items())}), loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    return StageResult(model=f"{BASE_NAME}/{version}", metrics={"examples": len(examples), "loss": losses[-1]})


# --- Group-DPO ----------------------------------------------------------------------------------


def logged_pairs(pairs: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Training-split pairs (PAIR_COLUMNS), a stable sample of at most group_dpo.max_logged_pairs;
    a pair's contrast group is one of the same product holding the opposite pair."""
    train = pairs[pairs["split"] == "train"]
    opposite = train.rename(
        columns={"chosen_prompt": "rejected_prompt", "rejected_prompt": "chosen_prompt", "group_id": "contrast_group"}
    )[["product_id", "chosen_prompt", "rejected_prompt", "contrast_group"]]
    joined = train.merge(opposite, on=["product_id", "chosen_prompt", "rejected_prompt"], how="left")
    joined = joined.drop_duplicates(["product_id", "group_id", "chosen_prompt", "rejected_prompt"])
    joined["contrast_group"] = joined["contrast_group"].fillna(NO_CONTRAST).astype("int64")
    key = ["product_id", "group_id", "chosen_prompt", "rejected_prompt"]
    return stable_sample(joined[list(PAIR_COLUMNS)], cfg.group_dpo.max_logged_pairs, key).reset_index(drop=True)


def one_group(pairs: pd.DataFrame) -> pd.DataFrame:
    """The same pairs with one group for everyone (one-size-fits-all): no group, no contrast."""
    return pairs.assign(group_id=EVERYONE, contrast_group=NO_CONTRAST)


def audience_scores(grm: Grm, rows: pd.DataFrame, groups: pd.DataFrame, profiles: pd.DataFrame) -> pd.DataFrame:
    """GRM logits of (product_id, prompt) rows for every group of the product: long rows of
    (row = the input's index, product_id, prompt, group_id, size, score)."""
    expanded = rows[["product_id", "prompt"]].reset_index(names="row").merge(groups[["product_id", "group_id", "size"]])
    expanded["score"] = grm.score(expanded, profiles)
    return expanded


def onpolicy_pairs(
    gmllm: Gmllm,
    grm: Grm,
    targets: pd.DataFrame,
    groups: pd.DataFrame,
    profiles: pd.DataFrame,
    products: pd.DataFrame,
    cfg: Config,
    seed: int,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Sample, let the GRM judge, pair the best samples of each target against its worst.

    targets: (product_id, group_id) rows; group_id EVERYONE asks for one-size-fits-all samples,
    judged by the member-weighted mean over the product's groups, with as many samples per product
    as the product has groups times samples_per_group (the same budget)."""
    d = cfg.group_dpo
    if gmllm.group_aware:
        samples = gmllm.write(targets, profiles, products, samples=d.samples_per_group, seed=seed)
    else:
        width = groups.groupby("product_id").size()
        one = targets.drop_duplicates("product_id").assign(group_id=EVERYONE)
        samples = pd.concat(
            [
                gmllm.write(part, profiles, products, samples=int(k) * d.samples_per_group, seed=seed + int(k))
                for k, part in one.groupby(one["product_id"].map(width))
            ],
            ignore_index=True,
        )
    good = samples[samples["usable"]].drop_duplicates(["product_id", "group_id", "prompt"]).reset_index(drop=True)
    stats = {
        "samples": float(len(samples)),
        "unusable_share": float(1 - samples["usable"].mean()) if len(samples) else 0.0,
    }
    scored = audience_scores(grm, good, groups, profiles)
    wide = scored.pivot_table(index="row", columns="group_id", values="score")
    weight = scored.assign(w=scored["size"] * scored["score"]).groupby("row")[["w", "size"]].sum()
    good["audience"] = (weight["w"] / weight["size"]).reindex(good.index)
    own = [
        wide.at[i, g] if g != EVERYONE else good.at[i, "audience"]
        for i, g in zip(good.index, good["group_id"], strict=True)
    ]
    good["own"] = own
    rows = []
    for (product_id, group_id), part in good.groupby(["product_id", "group_id"], sort=True):
        ranked = part.sort_values(["own", "prompt"], ascending=[False, True])
        # The i-th best against the i-th worst: disjoint pairs, the clearest first.
        for (best, high), (worst, low) in zip(
            ranked["own"].iloc[: len(ranked) // 2].items(), ranked["own"].iloc[::-1].items(), strict=False
        ):
            if high - low < d.min_margin:
                break
            rows.append((product_id, group_id, part.at[best, "prompt"], part.at[worst, "prompt"], NO_CONTRAST))
            if group_id != EVERYONE:
                # The other group of the product that most prefers the rejected sample, if any does.
                gaps = (wide.loc[best] - wide.loc[worst]).drop(group_id).dropna()
                if len(gaps) and gaps.min() < 0:
                    rows[-1] = (*rows[-1][:4], int(gaps.idxmin()))
    pairs = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    stats["pairs"] = float(len(pairs))
    stats["mean_own_score"] = float(good["own"].mean()) if len(good) else float("nan")
    return pairs, stats


def grm_reward(gmllm: Gmllm, grm: Grm, rows: pd.DataFrame, profiles: pd.DataFrame, products: pd.DataFrame) -> float:
    """Mean GRM click probability of the greedy descriptions for (product_id, group_id) rows; an
    unusable description scores 0 (it is never rendered). NaN without rows."""
    if not len(rows):
        return float("nan")
    written = gmllm.write(rows, profiles, products)
    probability = np.zeros(len(written))
    ok = written["usable"].to_numpy()
    if ok.any():
        probability[ok] = 1 / (1 + np.exp(-grm.score(written[ok], profiles)))
    return float(probability.mean())


def target_products(data: dict[str, pd.DataFrame], cfg: Config, splits: tuple[str, ...]) -> pd.DataFrame:
    """The night's (product, group) targets: every group of the top gmllm.target_products products
    by impressions in the look-back window, among the products of `splits`."""
    ranked = data["shown"].sort_values(["shown", "product_id"], ascending=[False, True])
    top = set(ranked["product_id"].head(cfg.gmllm.target_products))
    groups = data["groups"]
    chosen = groups["product_id"].isin(top) & groups["split"].isin(splits)
    return groups.loc[chosen, ["product_id", "group_id"]].reset_index(drop=True)


def night_base(cfg: Config, ds: date) -> tuple[str, Gmllm]:
    """The pre-trained G-MLLM for ds (the reference of every DPO variant); fails naming what is missing."""
    version = promotion.version_for_ds(BASE_NAME, ds)
    if version is None:
        raise GmllmError(f"no pre-trained {BASE_NAME} for ds={ds}: run pretrain_gmllm for this night first")
    device = resolve_device(cfg.gpu.device)
    return version, load_gmllm(f"models:/{BASE_NAME}/{version}", str(device), cfg.models.unreadable_image)


def train_variant(
    name: str,
    base: Gmllm,
    grm: Grm | None,
    logged: pd.DataFrame,
    targets: pd.DataFrame,
    data: dict[str, pd.DataFrame],
    cfg: Config,
) -> Gmllm:
    """One DPO variant from the base: logged pairs, then on-policy rounds judged by the GRM."""
    aware, contrast = VARIANTS[name]
    model = copy.deepcopy(base.model)
    model.config.group_aware = aware
    policy = Gmllm(
        model,
        base.tokenizer,
        base.conditioning,
        data["profiles"],
        data["products"],
        base.max_new_tokens,
        base.batch_size,
        base.rule,
    )
    reference = frozen_copy(model)
    if cfg.models.profile != "tiny":
        with_lora(model, cfg.gmllm.lora_rank)
    weight = cfg.group_dpo.contrast_weight if contrast else 0.0
    profiles, products = data["profiles"], data["products"]
    pairs = logged if aware else one_group(logged)
    result = train_dpo(policy, reference, pairs, profiles, products, cfg, weight)
    mlflow.log_metrics({f"{name}.logged.{k.replace('/', '_')}": float(v) for k, v in result.items() if _number(v)})
    for round_ in range(1, cfg.group_dpo.rounds + 1 if grm is not None else 1):
        fresh, stats = onpolicy_pairs(
            policy, grm, targets, data["groups"], profiles, products, cfg, seed=cfg.gmllm.seed + round_
        )
        mlflow.log_metrics({f"{name}.round.{k}": v for k, v in stats.items()}, step=round_)
        log.info(
            f"train_group_dpo: {name} round {round_}: {int(stats['samples'])} samples, "
            f"{stats['unusable_share']:.1%} unusable, {int(stats['pairs'])} pairs"
        )
        if len(fresh):
            train_dpo(policy, reference, fresh, profiles, products, cfg, weight)
    merge_lora(model)
    return policy


def _number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def train_group_dpo(ctx: JobContext) -> StageResult:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    check_groups(spark, cfg, ds)
    dimensions = dimension_versions(ctx)
    data = writer_data(ctx, dimensions)
    logged = logged_pairs(data["pairs"], cfg)
    if logged.empty:
        # Metrics an earlier run of this night stored no longer describe it.
        tables.write_metrics(spark, cfg, ds, DPO_STAGE, [], mlflow.active_run().info.run_id)
        return StageResult(skipped=f"no training pairs in {GROUP_PREFERENCE_PAIRS.name} for ds={ds}")
    base_version, base = night_base(cfg, ds)
    judged = night_grm(cfg, ds)
    inputs = {"base": base_version, "grm": judged[0] if judged else None, **group_data_prints(ctx, dimensions)}
    settings = {**_settings(cfg), "group_dpo": cfg.group_dpo.model_dump(mode="json")}
    tags = promotion.training_tags(ds, inputs, settings)
    reused = promotion.reusable_version(MODEL_NAME, tags)
    if reused is not None and promotion.TAG_DECISION in reused.tags:
        return promotion.reused("train_group_dpo", reused, ds)
    if judged is None:
        log.info(f"train_group_dpo: no {GRM.name} for ds={ds}: logged pairs only, no on-policy rounds")
    grm_version, grm = judged if judged is not None else (None, None)
    # On-policy practice on training products only: the validation products decide promotion and
    # the test products are the evaluation's, so neither is optimised against the GRM here.
    targets = target_products(data, cfg, splits=("train",))
    mlflow.log_params(
        {
            "gmllm_base_version": base_version,
            "grm_version": grm_version,
            "targets": len(targets),
            "logged_pairs": len(logged),
        }
    )
    models = {name: train_variant(name, base, grm, logged, targets, data, cfg) for name in VARIANTS}
    example = targets.head(3)
    uris = {name: log_gmllm(models[name], ARTIFACTS[name], ds, example) for name in VARIANTS}
    validation = data["groups"][data["groups"]["split"] == "validation"][["product_id", "group_id"]]
    rewards = (
        {}
        if grm is None
        else {
            name: grm_reward(model, grm, validation, data["profiles"], data["products"])
            for name, model in models.items()
        }
    )
    served = served_variant(rewards)
    version = tracking.register(uris[served], MODEL_NAME)
    client = mlflow.MlflowClient()
    for key, value in {**tags, TAG_BASE: base_version, TAG_GRM: grm_version or "", TAG_VARIANT: served}.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    if grm is None:
        log.info(f"train_group_dpo: {MODEL_NAME} v{version} ({served}) kept as challenger: no GRM to score it with")
        return StageResult(model=f"{MODEL_NAME}/{version}")
    tables.write_metrics(
        spark,
        cfg,
        ds,
        DPO_STAGE,
        [tables.Metric(METRIC, name, value) for name, value in rewards.items() if not np.isnan(value)],
        mlflow.active_run().info.run_id,
    )
    log.info("train_group_dpo: validation GRM reward " + ", ".join(f"{n} {v:.4f}" for n, v in rewards.items()))
    log.info(f"train_group_dpo: {MODEL_NAME} v{version} is {served}, the group-aware variant the validation prefers")

    def score(model_version: str) -> float:
        candidate = (
            models[served]
            if model_version == version
            else load_gmllm(f"models:/{MODEL_NAME}/{model_version}", unreadable_image=cfg.models.unreadable_image)
        )
        return grm_reward(candidate, grm, validation, data["profiles"], data["products"])

    champion = promotion.version_for_ds(MODEL_NAME, ds)
    return promotion.record(spark, cfg, ds, promotion.challenge(MODEL_NAME, METRIC, version, champion, score, cfg))


def served_variant(rewards: dict[str, float]) -> str:
    """The group-aware variant osmf-gmllm registers: the one with the higher validation GRM reward.
    The contrast weight is a setting like any other, so the night checks it against lambda = 0
    (prefix_dpo) on held-out groups; Group-DPO keeps ties and nights without a GRM to judge."""
    aware = {name: rewards.get(name, float("nan")) for name in ("group_dpo", "prefix_dpo")}
    if any(np.isnan(value) for value in aware.values()):
        return "group_dpo"
    return max(aware, key=lambda name: (aware[name], name == "group_dpo"))
