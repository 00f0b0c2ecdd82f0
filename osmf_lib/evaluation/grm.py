"""How good is the night's GRM? Graded against the simulated world's oracle, next to its
group-agnostic baseline (the same model and data without the group input, logged in the same run).

- **Pair direction.** On the test products' logged pairs: how often each model orders a pair as the
  oracle does for the group's members, over all pairs and over conflict pairs; and how often the
  logged pair itself does (the ceiling noisy labels set: a pair is a measurement, not the truth).
- **Unseen prompts**, the GRM's real job (Group-DPO samples and rendering candidates were never
  shown). Per test (product, group), UNSEEN_PROMPTS random style prompts the product never logged:
  Spearman correlation of the model's scores with the oracle's CTR for the group's members (median
  over groups), and top-1 regret: how much lower the oracle CTR of the model's favourite is than
  the best of the candidates, relative to that best (mean over groups).

Only evaluation may read the oracle; results go to `eval_metrics` (stage "grm_oracle") and MLflow.
"""

from __future__ import annotations

import zlib
from datetime import date

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from scipy.stats import spearmanr

from osmf_lib import promotion, tables, tracking
from osmf_lib.config import Config
from osmf_lib.evaluation.oracle import held_out_members
from osmf_lib.grm import Grm, load_grm
from osmf_lib.grm.registry import BASELINE_ARTIFACT
from osmf_lib.inputs import attribute_profiles
from osmf_lib.job import JobContext
from osmf_lib.night import GRM
from osmf_lib.synth.oracle import Oracle
from osmf_lib.synth.vocab import STYLE_ATTRIBUTES, STYLE_VALUES, compose_prompt
from osmf_lib.tables import CREATIVES, GROUP_PREFERENCE_PAIRS, USERS, Metric

STAGE = "grm_oracle"
UNSEEN_PROMPTS = 50
MODELS = ("group_aware", "group_agnostic")


def unseen_prompts(product_id: str, group_id: int, logged: set[str], count: int = UNSEEN_PROMPTS) -> list[str]:
    """`count` distinct random style prompts (one value per attribute) the product never logged;
    the same ones on every run for the same group."""
    rng = np.random.default_rng(zlib.crc32(f"{product_id}/{group_id}".encode()))
    found: list[str] = []
    while len(found) < count:
        prompt = compose_prompt({a: STYLE_VALUES[a][rng.integers(len(STYLE_VALUES[a]))] for a in STYLE_ATTRIBUTES})
        if prompt not in logged and prompt not in found:
            found.append(prompt)
    return found


def ranking_quality(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(Spearman of scores with the true CTRs, relative top-1 regret of the best-scored candidate)."""
    best = truth.max()
    regret = float((best - truth[int(np.argmax(scores))]) / best)
    return float(spearmanr(scores, truth).statistic), regret


def pair_directions(pairs: pd.DataFrame, members: pd.Series, oracle: Oracle) -> np.ndarray:
    """Whether the oracle agrees with each logged pair: chosen truly beats rejected for the group."""
    agree = []
    for row in pairs.itertuples(index=False):
        users = members[(row.product_id, row.group_id)]
        chosen = oracle.expected_ctr(row.product_id, row.chosen_prompt, users)
        agree.append(chosen > oracle.expected_ctr(row.product_id, row.rejected_prompt, users))
    return np.array(agree, dtype=bool)


def grade(
    models: dict[str, Grm],
    pairs: pd.DataFrame,
    profiles: pd.DataFrame,
    members: pd.Series,
    logged: dict[str, set[str]],
    oracle: Oracle,
) -> list[Metric]:
    """Every metric of the module docstring, for test pairs and test groups (members: user ids per
    (product_id, group_id); logged: prompts per product)."""
    metrics = []
    truth = pair_directions(pairs, members, oracle)
    conflict = pairs["conflict"].to_numpy(dtype=bool)
    metrics += [Metric("pairs", "test", float(len(pairs))), Metric("conflict_pairs", "test", float(conflict.sum()))]
    if len(pairs):
        metrics.append(Metric("label_agreement", "all", float(truth.mean())))
    if conflict.any():
        # What a model that knew the truth would score against the logged conflict labels.
        metrics.append(Metric("label_agreement", "conflict", float(truth[conflict].mean())))
    for name, grm in models.items():
        if len(pairs):
            ordered = grm.prefers_chosen(pairs, profiles)
            right = ordered == truth
            metrics.append(Metric("oracle_pair_accuracy", name, float(right.mean())))
            if conflict.any():
                metrics.append(Metric("oracle_conflict_pair_accuracy", name, float(right[conflict].mean())))
        spearman, regret = [], []
        for (product_id, group_id), users in members.items():
            prompts = unseen_prompts(product_id, group_id, logged.get(product_id, set()))
            rows = pd.DataFrame({"product_id": product_id, "group_id": group_id, "prompt": prompts})
            true_ctr = np.array([oracle.expected_ctr(product_id, p, users) for p in prompts])
            rho, lost = ranking_quality(grm.score(rows, profiles), true_ctr)
            spearman.append(rho)
            regret.append(lost)
        if spearman:
            metrics += [
                Metric("unseen_spearman_median", name, float(np.nanmedian(spearman))),
                Metric("unseen_top1_regret", name, float(np.mean(regret))),
            ]
    metrics.append(Metric("groups", "test", float(len(members))))
    return metrics


def night_models(cfg: Config, ds: date) -> dict[str, Grm] | None:
    """The osmf-grm version trained for ds (promoted or not) and the baseline logged in its run;
    None when train_grm trained none for ds (it skips a night without pairs)."""
    import mlflow

    tracking.configure(cfg)
    newest = promotion.trained_for_ds(GRM.name, ds)
    if newest is None:
        return None
    unreadable = cfg.models.unreadable_image
    baseline_uri = f"runs:/{newest.run_id}/{BASELINE_ARTIFACT}"
    mlflow.log_params({"grm_version": newest.version})
    return {
        "group_aware": load_grm(f"models:/{GRM.name}/{newest.version}", unreadable_image=unreadable),
        "group_agnostic": load_grm(baseline_uri, unreadable_image=unreadable),
    }


def evaluate(ctx: JobContext, models: dict[str, Grm], oracle: Oracle) -> list[Metric]:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    test = F.col("split") == "test"
    pairs = tables.read(spark, GROUP_PREFERENCE_PAIRS, cfg, ds=ds).where(test)
    members = held_out_members(spark, cfg, ds)
    chosen = members.select("product_id").distinct()
    users = tables.read(spark, USERS, cfg, as_of=ds)
    profiles = attribute_profiles(members, users).toPandas()
    creatives = tables.read(spark, CREATIVES, cfg, as_of=ds).join(chosen, "product_id").toPandas()
    ids = members.groupBy("product_id", "group_id").agg(F.sort_array(F.collect_list("user_id")).alias("users"))
    by_group = ids.toPandas().set_index(["product_id", "group_id"])["users"].map(list).sort_index()
    return grade(
        models,
        pairs.join(chosen, "product_id").toPandas(),
        profiles,
        by_group,
        {product: set(rows["prompt"]) for product, rows in creatives.groupby("product_id")},
        oracle,
    )
