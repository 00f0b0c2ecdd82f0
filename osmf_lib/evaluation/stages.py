"""The night's grading tasks: each grades its stage against the simulated world's oracle with the
module of the same name beside this one, writes `eval_metrics`, and on a night of real logs (no
landing manifest, so no answer key) records a skip instead (docs/design.md#answer-key-isolation).

    evaluate_grouping   the groups: segment recovery (ARI) and distinctness, PAAG against its baseline
    evaluate_grm        the GRM: pair direction and unseen-prompt ranking, against its baseline
    evaluate_gmllm      the prompt writers: oracle CTR of their backgrounds, best logged to ceiling
"""

from __future__ import annotations

import logging

from osmf_lib import tables, tracking
from osmf_lib.evaluation import gmllm, grm, grouping
from osmf_lib.evaluation.oracle import grade_night
from osmf_lib.inputs import world_of
from osmf_lib.job import JobContext, StageResult
from osmf_lib.night import GMLLM, GRM
from osmf_lib.synth.oracle import Oracle
from osmf_lib.tables import GROUP_PREFERENCE_PAIRS, USER_GROUPS

log = logging.getLogger(__name__)


def evaluate_grouping(ctx: JobContext) -> StageResult:
    import mlflow

    world = world_of(ctx.spark, ctx.cfg, ctx.ds)
    reason = None
    if world is None:
        # Real logs have no answer key: say so, and leave no metrics of an earlier run of this ds.
        reason = f"ds={ctx.ds} was not simulated (no landing manifest): there is no answer key to grade against"
        metrics = []
    else:
        seed, scale = world
        mlflow.log_params({"world.seed": seed, "world.scale": scale})
        metrics = grouping.evaluate(ctx, Oracle.of_world(seed, scale))
    tables.write_metrics(ctx.spark, ctx.cfg, ctx.ds, grouping.STAGE, metrics, mlflow.active_run().info.run_id)
    for m in metrics:
        log.info(f"evaluate_grouping: {m.metric:<9} {m.slice:<28} {m.value:.4f}")
    graded = {f"{m.metric}.{m.slice}".replace("=", "_"): m.value for m in metrics}
    mlflow.log_metrics(graded)
    tracking.log_table_input(ctx.spark, USER_GROUPS, ctx.cfg, context="evaluation")
    return StageResult(skipped=reason, metrics=graded)


def evaluate_grm(ctx: JobContext) -> StageResult:
    missing = f"train_grm trained no {GRM.name} for ds={ctx.ds} (a night without pairs)"
    result = grade_night(
        ctx,
        grm.STAGE,
        grm.night_models(ctx.cfg, ctx.ds),
        missing,
        lambda models, oracle: grm.evaluate(ctx, models, oracle),
    )
    tracking.log_table_input(ctx.spark, GROUP_PREFERENCE_PAIRS, ctx.cfg, context="evaluation")
    return result


def evaluate_gmllm(ctx: JobContext) -> StageResult:
    missing = f"train_group_dpo trained no {GMLLM.name} for ds={ctx.ds} (a night without pairs)"
    return grade_night(
        ctx,
        gmllm.STAGE,
        gmllm.night_generators(ctx.cfg, ctx.ds),
        missing,
        lambda night, oracle: gmllm.evaluate(ctx, *night, oracle),
    )
