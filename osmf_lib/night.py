"""The night's tasks, declared once: what each runs on, how long it may take, what it reads and
what it writes. The DAG (dags/osmf_nightly.py) builds its tasks and their order from this list,
and the task table of the DAG's page and of the README is rendered from it.

Order comes from data: a task runs after every task that writes what it reads. `reads` is what a
task needs from *tonight's* run, so a task's own earlier partitions (ingestion's deduplication
against stored days, a gate comparing with the previous night) make no edge, and neither do two
tasks writing one table: each replaces only its own rows (`tables.write_metrics` replaces a
stage's rows of eval_metrics; a lost commit race is retried).

Imports nothing heavy: the DAG reads this at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Literal

from osmf_lib.tables import (
    CREATIVES,
    EVAL_METRICS,
    GENERATED_CREATIVES,
    GROUP_CREATIVE_CTR,
    GROUP_PREFERENCE_PAIRS,
    GROUP_PROFILES,
    IMPRESSIONS,
    LANDING_MANIFESTS,
    PAAG_EMBEDDINGS,
    PRODUCTS,
    REJECTED_EVENTS,
    SERVING_ASSIGNMENTS,
    SERVING_CREATIVES,
    USER_GROUPS,
    USERS,
    Table,
)


@dataclass(frozen=True)
class Model:
    """A model the night registers in MLflow; a task reads the version pinned for its night."""

    name: str


Resource = Table | Model
Engine = Literal["spark", "gpu"]

PAAG = Model("osmf-paag")
GRM = Model("osmf-grm")
GMLLM_BASE = Model("osmf-gmllm-base")
GMLLM = Model("osmf-gmllm")
SERVING = Model("osmf-serving")


@dataclass(frozen=True)
class Task:
    """One task of the night, run by jobs/<name>.py: a spark-submit application, or a torch job
    in the gpu pool. `shards` names the setting that fans the task out over that many instances."""

    name: str
    engine: Engine
    timeout: timedelta
    does: str
    reads: tuple[Resource, ...] = ()
    writes: tuple[Resource, ...] = ()
    shards: str | None = None


HOUR = timedelta(hours=1)
DIMENSIONS = (USERS, PRODUCTS, CREATIVES)
# The night's groups as a pair: every stage after grouping checks they agree (inputs.check_groups).
GROUPS = (USER_GROUPS, GROUP_PROFILES)
# What the GRM trains on (inputs.group_data); the G-MLLM and rendering load the same plus each
# product's impressions of the window (inputs.writer_data).
GRM_INPUTS = (*GROUPS, GROUP_CREATIVE_CTR, GROUP_PREFERENCE_PAIRS, *DIMENSIONS)
GMLLM_INPUTS = (*GRM_INPUTS, IMPRESSIONS)

# Reads and writes no table: it proves the stack every task needs works, so all run after it.
PREFLIGHT = Task(
    "preflight",
    "spark",
    timedelta(minutes=10),
    "Spark + Delta, MLflow and the lakehouse root work, or the run stops with the fix",
)

NIGHT: tuple[Task, ...] = (
    PREFLIGHT,
    Task(
        "ingest_events",
        "spark",
        HOUR,
        "the day's landing files, validated and deduplicated, their counts adding up; upserts of the "
        "dimension tables; a quality gate before anything is written",
        # The ad server's answers of the day, for coverage: written outside the night (`osmf synth
        # serve`). Coverage also reads the previous night's serving_creatives: an earlier night's.
        reads=(SERVING_ASSIGNMENTS,),
        writes=(IMPRESSIONS, REJECTED_EVENTS, LANDING_MANIFESTS, *DIMENSIONS, EVAL_METRICS),
    ),
    Task(
        "train_paag",
        "gpu",
        2 * HOUR,
        "the PAAG encoder on the look-back window and its product-agnostic baseline; promoted by the "
        "like-for-like rule",
        reads=(IMPRESSIONS, *DIMENSIONS),
        writes=(PAAG, EVAL_METRICS),
    ),
    Task(
        "build_paag_embeddings",
        "spark",
        HOUR,
        "the night's `osmf-paag` champion over every product's audience",
        reads=(PAAG, IMPRESSIONS, USERS, PRODUCTS),
        writes=(PAAG_EMBEDDINGS,),
    ),
    Task(
        "group_users",
        "spark",
        HOUR,
        "per product, K-Means with K by silhouette; a quality gate",
        reads=(PAAG_EMBEDDINGS, USERS),
        writes=(*GROUPS, EVAL_METRICS),
    ),
    Task(
        "evaluate_grouping",
        "spark",
        HOUR,
        "the groups, and the baseline's, against the simulated world's hidden segments; NDCG by K",
        reads=(USER_GROUPS, PAAG_EMBEDDINGS, PAAG, IMPRESSIONS, *DIMENSIONS, LANDING_MANIFESTS),
        writes=(EVAL_METRICS,),
    ),
    Task(
        "build_preference_pairs",
        "spark",
        HOUR,
        "per group, smoothed CTR of each creative and confident preference pairs; a quality gate",
        reads=(*GROUPS, IMPRESSIONS, CREATIVES),
        writes=(GROUP_CREATIVE_CTR, GROUP_PREFERENCE_PAIRS, EVAL_METRICS),
    ),
    Task(
        "train_grm",
        "gpu",
        2 * HOUR,
        "the group-aware reward model and its group-agnostic baseline on the pairs",
        reads=GRM_INPUTS,
        writes=(GRM, EVAL_METRICS),
    ),
    Task(
        "evaluate_grm",
        "spark",
        HOUR,
        "both against the simulated world's oracle, on prompts never shown",
        reads=(GRM, GROUP_PREFERENCE_PAIRS, USER_GROUPS, USERS, CREATIVES, LANDING_MANIFESTS),
        writes=(EVAL_METRICS,),
    ),
    Task(
        "pretrain_gmllm",
        "gpu",
        4 * HOUR,
        "the G-MLLM on the four pre-training tasks (skipped while a fresh one exists)",
        reads=GMLLM_INPUTS,
        writes=(GMLLM_BASE,),
    ),
    Task(
        "train_group_dpo",
        "gpu",
        4 * HOUR,
        "Group-DPO, DPO with prefix and one-size-fits-all DPO from that base, judged by `osmf-grm`",
        reads=(*GMLLM_INPUTS, GMLLM_BASE, GRM),
        writes=(GMLLM, EVAL_METRICS),
    ),
    Task(
        "evaluate_gmllm",
        "spark",
        HOUR,
        "the generators' descriptions against the simulated world's oracle",
        reads=(GMLLM, GMLLM_BASE, GRM, USER_GROUPS, IMPRESSIONS, *DIMENSIONS, GROUP_CREATIVE_CTR, LANDING_MANIFESTS),
        writes=(EVAL_METRICS,),
    ),
    Task(
        "generate_creatives",
        "gpu",
        6 * HOUR,
        "best-of-N images per (product, group) around the untouched product, as PNGs with a contact sheet per product",
        reads=(*GMLLM_INPUTS, GMLLM, GRM),
        writes=(GENERATED_CREATIVES,),
        shards="render.shards",
    ),
    Task(
        "evaluate_and_publish",
        "spark",
        HOUR,
        "each group's creatives with their traffic shares (its best, and the candidates it explores); "
        "`osmf-serving`, which places any user in the night's groups; "
        "the views; the night's HTML report (`osmf report --ds D`)",
        # The report shows the night's metrics, every task's, and the models' champions.
        reads=(
            *GROUPS,
            GROUP_CREATIVE_CTR,
            *DIMENSIONS,
            IMPRESSIONS,
            GENERATED_CREATIVES,
            LANDING_MANIFESTS,
            EVAL_METRICS,
            PAAG,
            GRM,
            GMLLM,
        ),
        writes=(SERVING_CREATIVES, SERVING, EVAL_METRICS),
    ),
)
TASKS = {task.name: task for task in NIGHT}
_POSITION = {name: i for i, name in enumerate(TASKS)}


def writers(resource: Resource) -> tuple[Task, ...]:
    return tuple(task for task in NIGHT if resource in task.writes)


def _needs(task: Task) -> frozenset[str]:
    """The tasks that must have finished before `task` starts."""
    written = {writer.name for resource in task.reads for writer in writers(resource)}
    needs = frozenset((written | {PREFLIGHT.name}) - {task.name})
    later = sorted(need for need in needs if _POSITION[need] > _POSITION[task.name])
    if later:
        # A cycle, or NIGHT out of run order (the order the task table shows).
        raise ValueError(f"{task.name} reads what {', '.join(later)} writes later: NIGHT lists tasks in run order")
    return needs


@cache
def _ancestors(name: str) -> frozenset[str]:
    needs = _needs(TASKS[name])
    return needs.union(*(_ancestors(need) for need in needs))


def upstream(task: Task) -> frozenset[str]:
    """The tasks `task` directly follows: what it needs, less what it needs only through another."""
    needs = _needs(task)
    return frozenset(need for need in needs if not any(need in _ancestors(other) for other in needs))


def edges() -> tuple[tuple[str, str], ...]:
    """(upstream, downstream) task names, in run order."""
    return tuple((before, task.name) for task in NIGHT for before in _in_run_order(upstream(task)))


def _in_run_order(names: frozenset[str]) -> list[str]:
    return sorted(names, key=_POSITION.__getitem__)


def _runs_on(task: Task) -> str:
    engine = {"spark": "Spark", "gpu": "GPU"}[task.engine]
    return engine if task.shards is None else f"{engine}, `{task.shards}` instances"


def _named(resource: Resource) -> str:
    return f"`{resource.name}`" if isinstance(resource, Table) else f"MLflow `{resource.name}`"


def markdown_table() -> str:
    """The night's tasks in run order: where each runs, what it follows, does and writes."""
    rows = [
        "| task | runs on | after | what it does | writes |",
        "|---|---|---|---|---|",
        *(
            f"| `{task.name}` | {_runs_on(task)} | {', '.join(f'`{n}`' for n in _in_run_order(upstream(task)))} "
            f"| {task.does} | {', '.join(map(_named, task.writes))} |"
            for task in NIGHT
        ),
    ]
    return "\n".join(rows) + "\n"
