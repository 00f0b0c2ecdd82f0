"""How much more are the generated backgrounds clicked than one-size-fits-all? Graded against the
simulated world's oracle on the test products (never in a training pair), per (product, group):

| row | the background |
|---|---|
| best_logged | the group's best logged creative by smoothed CTR (no generation) |
| pretrained | the pre-trained G-MLLM that night's DPO runs started from |
| onesize_dpo | DPO with one group for everyone |
| prefix_dpo | DPO with the group prefix, no contrast term |
| group_dpo | Group-DPO: the group prefix and the contrast term |
| ceiling | the oracle's best prompt for the group's members |

Per row: `oracle_ctr` (the oracle's expected CTR for the group's members, each weighted by their
impressions of the product in the look-back window, groups weighted by their impressions),
`lift_vs_onesize`, `headroom_captured` ((ctr - best_logged) / (ceiling - best_logged)),
`grm_probability` (the night's osmf-grm on the same backgrounds) and `grm_lift_vs_onesize`, the
`hacking_gap` (GRM lift minus oracle lift: a judge pleased more than the world is), the
`unusable_share` of descriptions (replaced by the best logged creative, as the platform would) and
`distinct_share`, how often the groups of one product get different backgrounds.

Only evaluation may read the oracle; results go to `eval_metrics` (stage "gmllm_oracle") and MLflow.
"""

from __future__ import annotations

import logging
from datetime import date

import numpy as np
import pandas as pd

from osmf_lib import promotion, tables, tracking
from osmf_lib.config import Config
from osmf_lib.evaluation.oracle import held_out_audiences, writer_inputs
from osmf_lib.gmllm.generator import Gmllm
from osmf_lib.gmllm.registry import ARTIFACTS, TAG_BASE, TAG_GRM, TAG_VARIANT, load_gmllm
from osmf_lib.grm import Grm, load_grm
from osmf_lib.job import JobContext
from osmf_lib.night import GMLLM, GMLLM_BASE, GRM
from osmf_lib.synth.oracle import Oracle
from osmf_lib.tables import CREATIVES, GROUP_CREATIVE_CTR, Metric

log = logging.getLogger(__name__)

STAGE = "gmllm_oracle"
ONESIZE = "onesize_dpo"


def night_generators(cfg: Config, ds: date) -> tuple[dict[str, Gmllm], Grm | None] | None:
    """The generators of ds's train_group_dpo run (pre-trained and the three DPO variants) and the
    GRM that judged them; None when none was trained for ds."""
    import mlflow

    tracking.configure(cfg)
    newest = promotion.trained_for_ds(GMLLM.name, ds)
    if newest is None:
        return None
    unreadable = cfg.models.unreadable_image
    served = newest.tags.get(TAG_VARIANT, "group_dpo")
    mlflow.log_params(
        {"gmllm_version": newest.version, "gmllm_base_version": newest.tags[TAG_BASE], "gmllm_variant": served}
    )
    log.info(f"evaluate_gmllm: {GMLLM.name} v{newest.version} serves {served}")
    generators = {
        "pretrained": load_gmllm(f"models:/{GMLLM_BASE.name}/{newest.tags[TAG_BASE]}", unreadable_image=unreadable)
    }
    for name, artifact in ARTIFACTS.items():
        generators[name] = load_gmllm(f"runs:/{newest.run_id}/{artifact}", unreadable_image=unreadable)
    grm_version = newest.tags.get(TAG_GRM)
    grm = load_grm(f"models:/{GRM.name}/{grm_version}", unreadable_image=unreadable) if grm_version else None
    return generators, grm


def grade(
    written: dict[str, pd.DataFrame],
    audiences: pd.Series,
    weights: pd.Series,
    oracle: Oracle,
    grm: Grm | None,
    profiles: pd.DataFrame,
) -> list[Metric]:
    """written: per row name, one background per (product_id, group_id) (index) with `usable`;
    audiences: the members' user ids per group (repeated by impressions); weights: per group."""
    if not len(weights):  # no test product with a logged creative tonight: nothing to compare
        return [Metric("groups", "test", 0.0)]
    ctr, grm_p = {}, {}
    w = weights.to_numpy(dtype=float)
    for name, frame in written.items():
        values = np.array(
            [oracle.expected_ctr(p, prompt, audiences[(p, g)]) for (p, g), prompt in frame["prompt"].items()]
        )
        ctr[name] = float(np.average(values, weights=w))
        if grm is not None:
            rows = frame.reset_index()[["product_id", "group_id", "prompt"]]
            grm_p[name] = float(np.average(1 / (1 + np.exp(-grm.score(rows, profiles))), weights=w))
    metrics = [
        Metric("groups", "test", float(len(weights))),
        Metric("products", "test", float(weights.index.get_level_values(0).nunique())),
    ]
    floor, ceiling = ctr["best_logged"], ctr["ceiling"]
    for name, value in ctr.items():
        metrics.append(Metric("oracle_ctr", name, value))
        metrics.append(Metric("lift_vs_onesize", name, value / ctr[ONESIZE] - 1))
        if ceiling > floor:
            metrics.append(Metric("headroom_captured", name, (value - floor) / (ceiling - floor)))
        if name in grm_p:
            grm_lift = grm_p[name] / grm_p[ONESIZE] - 1
            metrics += [
                Metric("grm_probability", name, grm_p[name]),
                Metric("grm_lift_vs_onesize", name, grm_lift),
                Metric("hacking_gap", name, grm_lift - (value / ctr[ONESIZE] - 1)),
            ]
        frame = written[name]
        metrics.append(Metric("unusable_share", name, float(1 - frame["usable"].mean())))
        per_product = frame.groupby(level=0)["prompt"].agg(["nunique", "size"])
        several = per_product[per_product["size"] > 1]
        if len(several):
            metrics.append(Metric("distinct_share", name, float((several["nunique"] > 1).mean())))
    return metrics


def evaluate(ctx: JobContext, generators: dict[str, Gmllm], grm: Grm | None, oracle: Oracle) -> list[Metric]:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    members, audiences, weights = held_out_audiences(spark, cfg, ds)
    chosen = members.select("product_id").distinct()
    profiles, products = writer_inputs(spark, cfg, ds, members)
    prompts = tables.read(spark, CREATIVES, cfg, as_of=ds).select("product_id", "creative_id", "prompt")
    best = (
        tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds)
        .join(chosen, "product_id")
        .join(prompts, ["product_id", "creative_id"])
        .select("product_id", "group_id", "creative_id", "prompt", "ctr_smoothed")
        .toPandas()
        .sort_values(["ctr_smoothed", "creative_id"], ascending=[False, True])
        .drop_duplicates(["product_id", "group_id"])
        .set_index(["product_id", "group_id"])["prompt"]
        .reindex(audiences.index)
    )
    keys = audiences.index.to_frame(index=False)
    written = {"best_logged": pd.DataFrame({"prompt": best, "usable": best.notna()})}
    for name, gmllm in generators.items():
        out = gmllm.write(keys, profiles, products).set_index(["product_id", "group_id"])
        # An unusable description is never rendered: the platform falls back to the best logged one.
        written[name] = out.assign(prompt=out["prompt"].where(out["usable"], best.reindex(out.index)))
    written["ceiling"] = pd.DataFrame(
        {"prompt": [oracle.best_prompt(p, audiences[(p, g)]) for p, g in audiences.index], "usable": True},
        index=audiences.index,
    )
    known = written["best_logged"]["prompt"].notna()
    if not known.all():
        keep = known[known].index
        written = {name: frame.loc[keep] for name, frame in written.items()}
        audiences, weights = audiences.loc[keep], weights.loc[keep]
    return grade(written, audiences, weights, oracle, grm, profiles)
