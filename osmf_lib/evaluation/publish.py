"""What the ad server ships, graded against the simulated world's oracle (stage "publish_oracle").

The audience is the next day's traffic on a stable sample of held-out (test-split) products, as the
world's logging policy draws it: every impression is placed by the night's osmf-serving exactly as
the ad server places it (a member by its group, anyone else by its attributes), and gets the
creative served to that group. Per group and audience, the oracle CTR of that creative is set
against the group's best logged one and against the ceiling, the oracle's best prompt for the
group's audience, weighted by impressions: `headroom_captured` = (served - best logged) /
(ceiling - best logged). Each impression is graded with the creative osmf-serving drew for it, so
the grade is weighted by the traffic shares, exploration included. Slices: `members` (users the night
grouped), `newcomers` (placed by their attributes), `generated` (groups served a generated
creative) and everyone (no suffix). A method that wins for members and loses for newcomers shows it
here. `greedy_lift_kept`: the share of the lift of the served generator's greedy descriptions (of
the same groups, over the same audience) that what is served keeps, over everyone and over the
generated part: what best-of-N, rendering and falling back lose, every night. After a closed loop
the best logged creative may be one an earlier night generated, so `headroom_over_original` keeps
the floor fixed at the group's best creative of the ad server's own; `selected` and
`best_candidate` split the gap to the ceiling into what exploring, picking and generating cost
(`grade_served`). A logged skip on real logs.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from osmf_lib import promotion
from osmf_lib.evaluation.oracle import grade_night, held_out_members, writer_inputs
from osmf_lib.gmllm.registry import load_gmllm
from osmf_lib.inputs import first_day_of
from osmf_lib.job import JobContext, StageResult
from osmf_lib.night import GMLLM
from osmf_lib.serving.model import ServingNight
from osmf_lib.synth import day_requests
from osmf_lib.synth.oracle import Oracle
from osmf_lib.tables import ASSIGNED, GENERATED, GROUP_PROFILES, MEMBER, Metric

STAGE = "publish_oracle"
KEY = list(GROUP_PROFILES.keys)
AUDIENCES = {MEMBER: "members", ASSIGNED: "newcomers"}


def next_day_audience(ctx: JobContext, night: ServingNight, oracle: Oracle) -> pd.DataFrame:
    """The next day's impressions of the held-out sample, one row each, with what osmf-serving
    answered for them (OUTPUT_COLUMNS) and the product_id and user_id."""
    world = oracle.world
    first = first_day_of(ctx.spark, ctx.cfg, (world.seed, world.scale_name))
    products = held_out_members(ctx.spark, ctx.cfg, ctx.ds).select("product_id").distinct().toPandas()
    requests = day_requests(world, first, ctx.ds + timedelta(days=1))
    requests = requests[requests["product_id"].isin(products["product_id"])].reset_index(drop=True)
    return pd.concat([requests[["product_id", "user_id"]], night.assign(requests)], axis=1)


def _oracle_ctr(oracle: Oracle, shown: pd.DataFrame, column: str) -> float:
    """Impression-weighted oracle CTR of each (product, group)'s `column` prompt for its users."""
    cells = shown.groupby([*KEY, column])["user_id"].agg(list)
    ctr = [oracle.expected_ctr(product, prompt, users) for (product, _, prompt), users in cells.items()]
    return float(np.average(ctr, weights=cells.map(len)))


def greedy_descriptions(ctx: JobContext, keys: pd.DataFrame) -> pd.Series | None:
    """The night's osmf-gmllm's greedy description per (product_id, group_id) of `keys`, None
    where it is unusable; None without a generator for the night."""
    version = promotion.version_for_ds(GMLLM.name, ctx.ds)
    if version is None:
        return None
    writer = load_gmllm(f"models:/{GMLLM.name}/{version}", unreadable_image=ctx.cfg.models.unreadable_image)
    members = held_out_members(ctx.spark, ctx.cfg, ctx.ds).join(
        ctx.spark.createDataFrame(keys[["product_id"]].drop_duplicates()), "product_id"
    )
    written = writer.write(keys, *writer_inputs(ctx.spark, ctx.cfg, ctx.ds, members)).set_index(KEY)
    return written["prompt"].where(written["usable"])


def _lift_kept(oracle: Oracle, rows: pd.DataFrame, served: float, floor: float) -> float:
    """The share of the greedy descriptions' lift over the best logged that what is served keeps."""
    greedy = _oracle_ctr(oracle, rows.assign(greedy=rows["greedy"].fillna(rows["best_logged"])), "greedy")
    return (served - floor) / (greedy - floor) if greedy != floor else float("nan")


def candidate_prompts(oracle: Oracle, audiences: pd.Series, creatives: pd.DataFrame, logged: pd.Series) -> pd.DataFrame:
    """Per (product_id, group_id) of `audiences` (its users): `selected`, the prompt of the
    creative with the largest traffic share, and `best_candidate`, the prompt among its creatives
    and its best logged one (`logged`) that the oracle rates best for those users. creatives: the
    serving model's GROUP_COLUMNS rows."""
    rows = creatives.dropna(subset=["prompt"]).astype({"group_id": "int64"})
    rows = rows.sort_values(["traffic_share", "creative_id"], ascending=[False, True])
    prompts = rows.groupby(KEY, sort=False)["prompt"].agg(list).reindex(audiences.index)
    out = pd.DataFrame({"selected": prompts.str[0].fillna(logged.reindex(audiences.index))})
    out["best_candidate"] = [
        max(
            {*(served if isinstance(served, list) else []), logged[key]},
            key=lambda prompt: (oracle.expected_ctr(key[0], prompt, users), prompt),
        )
        for (key, users), served in zip(audiences.items(), prompts, strict=True)
    ]
    return out


def grade_served(
    ctx: JobContext, night: ServingNight, logged: pd.DataFrame, original: pd.DataFrame, oracle: Oracle
) -> list[Metric]:
    """Oracle CTR of what is served against the best logged creative, over the next day's audience;
    and against the served generator's greedy descriptions of the same groups: over everyone (the
    mix of generated and logged creatives) and over the groups served a generated one.

    Two floors: `best_logged` (the group's best creative in the logs, which after a closed loop may
    be one an earlier night generated: what tonight adds) and `best_original` (its best creative
    of origin logged, the ad server's own: what OSMF adds, the same floor every night);
    `headroom_captured` is over the first, `headroom_over_original` over the second. Between the
    floor and the ceiling, `selected` (every impression on the group's largest-share creative: what
    exploring cost) and `best_candidate` (on the one of its creatives and its best logged one the
    oracle rates best: what picking cost) split the gap; what is left is what generating cost."""
    shown = next_day_audience(ctx, night, oracle)
    best = logged.set_index(KEY)["prompt"].rename("best_logged")
    shown = shown[shown["reason"].isin(AUDIENCES)].astype({"group_id": "int64"})
    shown = shown.join(best, on=KEY, how="inner")
    if shown.empty:
        return [Metric("impressions", "test", 0.0)]
    # A group whose own creatives were never shown in the window keeps the best logged as its floor.
    shown = shown.join(original.set_index(KEY)["prompt"].rename("best_original"), on=KEY)
    shown["best_original"] = shown["best_original"].fillna(shown["best_logged"])
    audiences = shown.groupby(KEY)["user_id"].agg(list)
    ceiling = pd.Series([oracle.best_prompt(p, users) for (p, _), users in audiences.items()], index=audiences.index)
    shown = shown.join(ceiling.rename("ceiling"), on=KEY)
    shown = shown.join(candidate_prompts(oracle, audiences, night.groups, best), on=KEY)
    greedy = greedy_descriptions(ctx, shown[KEY].drop_duplicates().reset_index(drop=True))
    if greedy is not None:
        shown = shown.join(greedy.rename("greedy"), on=KEY)
    metrics = [
        Metric("groups", "test", float(len(shown.groupby(KEY)))),
        Metric("generated_share", "test", float((shown["origin"] == GENERATED).mean())),
    ]
    slices = (
        ("", shown),
        *((f".{name}", shown[shown["reason"] == r]) for r, name in AUDIENCES.items()),
        (".generated", shown[shown["origin"] == GENERATED]),
    )
    for suffix, rows in slices:
        if rows.empty:
            continue
        ctr = {
            name: _oracle_ctr(oracle, rows, column)
            for name, column in (
                ("served", "prompt"),
                ("selected", "selected"),
                ("best_candidate", "best_candidate"),
                ("best_logged", "best_logged"),
                ("best_original", "best_original"),
                ("ceiling", "ceiling"),
            )
        }
        metrics += [
            Metric("impressions", f"test{suffix}", float(len(rows))),
            *(Metric("oracle_ctr", f"{name}{suffix}", value) for name, value in ctr.items()),
            Metric("lift_vs_best_logged", f"served{suffix}", ctr["served"] / ctr["best_logged"] - 1),
        ]
        floors = {"headroom_captured": ctr["best_logged"], "headroom_over_original": ctr["best_original"]}
        for metric, floor in floors.items():
            if ctr["ceiling"] > floor:
                metrics += [
                    Metric(metric, f"{name}{suffix}", (ctr[name] - floor) / (ctr["ceiling"] - floor))
                    for name in ("served", "selected", "best_candidate")
                ]
        if greedy is not None and suffix in ("", ".generated"):
            kept = _lift_kept(oracle, rows, ctr["served"], ctr["best_logged"])
            metrics.append(Metric("greedy_lift_kept", f"served{suffix}", kept))
    return metrics


def grade_served_day(
    ctx: JobContext, served: pd.DataFrame, logged: pd.DataFrame, original: pd.DataFrame, night: ServingNight
) -> StageResult:
    """served: the night's serving_creatives rows; logged and original: the best logged creative
    per group, of any origin and of origin logged; night: the night's osmf-serving model."""
    missing = f"ds={ctx.ds} served nothing"
    return grade_night(
        ctx,
        STAGE,
        night if len(served) else None,
        missing,
        lambda model, oracle: grade_served(ctx, model, logged, original, oracle),
    )
