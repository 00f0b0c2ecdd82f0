"""What the ad server ships, graded against the simulated world's oracle (stage "publish_oracle"):
per held-out (test-split) group, the oracle CTR of its served creative against its best logged
one, each group weighted by its impressions; a logged skip on real logs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from osmf_lib.evaluate_oracle import grade_night, held_out_audiences
from osmf_lib.job import JobContext
from osmf_lib.synth.oracle import Oracle
from osmf_lib.tables import GENERATED, SERVING_CREATIVES, Metric

STAGE = "publish_oracle"
KEY = list(SERVING_CREATIVES.keys)


def grade_served(ctx: JobContext, served: pd.DataFrame, logged: pd.DataFrame, oracle: Oracle) -> list[Metric]:
    """Oracle CTR of what is served against the best logged creative, on held-out groups."""
    _, audiences, weights = held_out_audiences(ctx.spark, ctx.cfg, ctx.ds)
    prompts = {
        "served": served.set_index(KEY)["prompt"],
        "best_logged": logged.set_index(KEY)["prompt"],
    }
    keys = audiences.index.intersection(prompts["served"].index).intersection(prompts["best_logged"].index)
    if not len(keys):
        return [Metric("groups", "test", 0.0)]
    w = weights.loc[keys].to_numpy(dtype=float)
    ctr = {
        name: float(
            np.average([oracle.expected_ctr(p, prompt.loc[(p, g)], audiences[(p, g)]) for p, g in keys], weights=w)
        )
        for name, prompt in prompts.items()
    }
    generated = served.set_index(KEY).loc[keys, "origin"].eq(GENERATED)
    return [
        Metric("groups", "test", float(len(keys))),
        Metric("generated_share", "test", float(generated.mean())),
        *(Metric("oracle_ctr", name, value) for name, value in ctr.items()),
        Metric("lift_vs_best_logged", "served", ctr["served"] / ctr["best_logged"] - 1),
    ]


def run(ctx: JobContext, served: pd.DataFrame, logged: pd.DataFrame) -> None:
    """served: the night's serving_creatives rows; logged: the best logged creative per group."""
    missing = f"ds={ctx.ds} served nothing"
    grade_night(ctx, STAGE, served if len(served) else None, missing,
                lambda night, oracle: grade_served(ctx, night, logged, oracle))  # fmt: skip
