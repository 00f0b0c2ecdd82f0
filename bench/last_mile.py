"""Where the generator's gain goes between its greedy description and the served creative.

    make demo && OSMF_CONFIG=conf/demo.yaml OMP_NUM_THREADS=2 .venv/bin/python bench/last_mile.py

Reads a finished night (the demo's by default) and writes, with the night's served osmf-gmllm,
for the held-out groups of the products rendering covers: its greedy description and
`render.candidates` samples per group at several temperatures. Every candidate is scored by the
night's GRM and by its group-agnostic baseline (logged in the same train_grm run), and each way
of picking one per group is compared:

- validation groups: what the pipeline itself can know: the GRM's and the group-agnostic GRM's
  mean click probability of the pick, and how many distinct candidates a group gets (the choices
  best-of-N and exploration have). This is what the rendering rule is chosen on.
- test groups, a simulated world only: the oracle CTR of the pick for the group's members against
  its best logged creative, impression-weighted, and the share of the greedy description's lift it
  keeps; this reports, it chooses nothing.

Also: what the night actually served on the same test groups (`serving_creatives`).
"""

from __future__ import annotations

import argparse
from datetime import date

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from osmf_lib import promotion, tables, tracking
from osmf_lib.config import load_config
from osmf_lib.evaluation.oracle import held_out_audiences
from osmf_lib.gmllm.registry import load_gmllm
from osmf_lib.gmllm.stages import target_products
from osmf_lib.grm import load_grm
from osmf_lib.grm.registry import BASELINE_ARTIFACT
from osmf_lib.inputs import dimension_versions, night_grm, world_of, writer_data
from osmf_lib.job import JobContext
from osmf_lib.night import GMLLM, GRM
from osmf_lib.render.stages import seed_of
from osmf_lib.spark import get_spark
from osmf_lib.synth.oracle import Oracle
from osmf_lib.tables import GROUP_PROFILES, SERVING_CREATIVES

KEY = ["product_id", "group_id"]


def candidates(writer, rows, profiles, products, ds, samples: int, temperature: float) -> pd.DataFrame:
    """The greedy description (sample -1) and `samples` drawn ones per group, seeded per product."""
    greedy = writer.write(rows, profiles, products).assign(sample=-1)
    drawn = [
        writer.write(part, profiles, products, samples=samples, seed=seed_of(ds, p), temperature=temperature)
        for p, part in rows.groupby("product_id", sort=False)
    ]
    return pd.concat([greedy, *drawn], ignore_index=True)


class Grade:
    """The oracle's impression-weighted CTR over the test groups of `frame` that have an audience."""

    def __init__(self, oracle: Oracle, audiences: pd.Series, weights: pd.Series, frame: pd.DataFrame) -> None:
        present = set(map(tuple, frame[KEY].to_numpy()))
        self.keep = [k for k in audiences.index if k in present]
        self.oracle, self.audiences, self.weights = oracle, audiences, weights.loc[self.keep].to_numpy(dtype=float)

    def ctr(self, prompts: pd.Series) -> float:
        values = [self.oracle.expected_ctr(p, prompts.loc[(p, g)], self.audiences[(p, g)]) for p, g in self.keep]
        return float(np.average(values, weights=self.weights))


def picks(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One row per group for each rule."""
    usable = frame[frame["usable"]]
    samples = usable[usable["sample"] >= 0]

    def best(rows: pd.DataFrame, by: str) -> pd.DataFrame:
        return rows.sort_values([by, "sample"], ascending=[False, True]).drop_duplicates(KEY).set_index(KEY)

    return {
        "greedy": frame[frame["sample"] == -1].set_index(KEY),
        "a sample": samples.drop_duplicates(KEY).set_index(KEY),
        "GRM's best sample": best(samples, "grm"),
        "GRM's best of greedy + samples": best(usable, "grm"),
        "both GRMs' best of greedy + samples": best(usable, "both"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ds", type=date.fromisoformat, help="the night (default: the newest grouped)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3])
    parser.add_argument("--samples", type=int, help="samples per group (default: render.candidates)")
    args = parser.parse_args()
    cfg = load_config()
    tracking.configure(cfg)
    ds = args.ds or tables.read(get_spark(cfg), GROUP_PROFILES, cfg).agg({"ds": "max"}).first()[0]
    ctx = JobContext("last_mile", cfg, ds, "bench")
    samples = args.samples or cfg.render.candidates
    data = writer_data(ctx, dimension_versions(ctx))
    version = promotion.version_for_ds(GMLLM.name, ds)
    writer = load_gmllm(f"models:/{GMLLM.name}/{version}")
    grm_version, grm = night_grm(cfg, ds)
    run_id = MlflowClient().get_model_version(GRM.name, grm_version).run_id
    agnostic = load_grm(f"runs:/{run_id}/{BASELINE_ARTIFACT}")
    profiles, products = data["profiles"], data["products"]
    targets = target_products(data, cfg, splits=("validation", "test"))
    targets = targets.merge(data["groups"][[*KEY, "split"]], on=KEY)

    world = world_of(ctx.spark, cfg, ds)
    _, audiences, weights = held_out_audiences(ctx.spark, cfg, ds)
    oracle = Oracle.of_world(*world) if world else None
    best_logged = (
        data["cells"]
        .sort_values(["ctr_smoothed", "creative_id"], ascending=[False, True])
        .drop_duplicates(KEY)
        .set_index(KEY)["prompt"]
    )
    # The groups' best: the creatives explored beside them are not what best-of-N chose.
    served = tables.read(ctx.spark, SERVING_CREATIVES, cfg, ds=ds).where("selected").toPandas().set_index(KEY)

    def probability(model, frame):
        return 1 / (1 + np.exp(-model.score(frame.reset_index()[[*KEY, "prompt"]], profiles)))

    print(f"\nnight {ds}: {GMLLM.name} v{version}, osmf-grm v{grm_version}; {samples} samples a group\n")
    for temperature in args.temperatures:
        frame = candidates(writer, targets[KEY], profiles, products, ds, samples, temperature)
        frame = frame.merge(targets, on=KEY)
        frame["grm"] = grm.score(frame, profiles)
        frame["agnostic"] = agnostic.score(frame, profiles)
        frame["both"] = (frame["grm"] + frame["agnostic"]) / 2
        validation = frame[frame["split"] == "validation"]
        distinct = validation[validation["usable"]].groupby(KEY)["prompt"].nunique().mean()
        print(
            f"T = {temperature}: validation {validation[KEY].drop_duplicates().shape[0]} groups, "
            f"{distinct:.2f} distinct usable candidates a group (of {samples + 1}), "
            f"usable samples {frame.loc[frame['sample'] >= 0, 'usable'].mean():.1%}"
        )
        test = frame[frame["split"] == "test"]
        grade = Grade(oracle, audiences, weights, test) if oracle else None
        if grade is not None and not grade.keep:
            grade = None
        if grade is not None:
            floor, greedy = grade.ctr(best_logged), grade.ctr(picks(test)["greedy"]["prompt"])
            print(
                f"  test {len(grade.keep)} groups: best logged {floor:.4f}, greedy {greedy:.4f} "
                f"({greedy / floor - 1:+.1%}); what the night served {grade.ctr(served['prompt']):.4f}"
            )
        print("  | rule | val P(click) GRM | val P(click) agnostic | test oracle CTR | lift kept |")
        print("  |---|---:|---:|---:|---:|")
        test_picks = picks(test)
        for rule, picked in picks(validation).items():
            oracle_ctr = kept = ""
            if grade is not None:
                value = grade.ctr(test_picks[rule]["prompt"].reindex(grade.keep).fillna(best_logged))
                oracle_ctr, kept = f"{value:.4f}", f"{(value - floor) / (greedy - floor):.0%}"
            print(
                f"  | {rule} | {probability(grm, picked).mean():.4f} | {probability(agnostic, picked).mean():.4f} "
                f"| {oracle_ctr} | {kept} |"
            )
        print()


if __name__ == "__main__":
    main()
