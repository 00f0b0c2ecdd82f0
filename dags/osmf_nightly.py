"""osmf_nightly: click logs in, group-targeted creatives out, once per day.

Wiring only. Every task is a job in jobs/ over a module in osmf_lib/; this file decides order,
retries, timeouts and pools, and imports nothing heavier than the Config (no pyspark, torch or
mlflow at parse time).
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset, CronDataIntervalTimetable

from osmf_lib.config import DEPLOYMENT_CONFIG, ENV_PREFIX, PROJECT_ROOT, load_config
from osmf_lib.spark import session_conf
from osmf_lib.tables import (
    CREATIVES,
    EVAL_METRICS,
    GROUP_CREATIVE_CTR,
    GROUP_PREFERENCE_PAIRS,
    GROUP_PROFILES,
    IMPRESSIONS,
    PAAG_EMBEDDINGS,
    PRODUCTS,
    REJECTED_EVENTS,
    SERVING_CREATIVES,
    USER_GROUPS,
    USERS,
    Table,
)

# The deployment's layers ($OSMF_CONFIG files, OSMF_<SECTION>__<KEY> variables) as this process
# sees them; every job gets the same variables, so a job resolves the very Config the DAG did,
# on this worker, a Spark driver or a GPU pod alike.
CFG = load_config()
DEPLOYMENT_ENV = {
    k: v for k, v in os.environ.items() if k == DEPLOYMENT_CONFIG or (k.startswith(ENV_PREFIX) and "__" in k)
}
JOBS = PROJECT_ROOT / "jobs"
# Every job receives the day it works on and the run it reports to; none ever reads now().
JOB_ARGS = ["--ds", "{{ ds }}", "--dag-run-id", "{{ run_id }}"]
# A shell command reads them from its environment instead: a run_id is chosen by whoever triggers
# the run, and must never be read as shell syntax.
JOB_ENV = {"OSMF_JOB_DS": "{{ ds }}", "OSMF_JOB_RUN_ID": "{{ run_id }}"}
SHELL_JOB_ARGS = ["--ds", '"$OSMF_JOB_DS"', "--dag-run-id", '"$OSMF_JOB_RUN_ID"']
# Training and rendering queue here, one task per GPU (`airflow pools set gpu <n>`).
GPU_POOL = "gpu"
# Every Spark task gets the session settings and jars the CLI uses. The jars go by folder, so
# parsing stays offline and cheap; preflight checks they are the ones this Config needs.
SPARK_CONF = session_conf(CFG)
SPARK_JARS = str(Path(CFG.spark.jars_dir) / "*.jar")

DOC = """
### OSMF nightly

Turns the day's ad click logs into one background per user group and product
([design](https://arxiv.org/abs/2602.02033)). Each run processes the calendar day `ds`
(its data interval) and writes only that day's partitions, so a rerun or a backfill of a
day gives the same tables.

| task | what it does |
|---|---|
| `preflight` | Spark + Delta, MLflow and the lakehouse root work; fails with the fix otherwise |
| `ingest_events` | landing files -> `impressions`, `rejected_events`, dimension upserts; counts must add up |
| `train_paag` | PAAG encoder on the look-back window -> `osmf-paag` (champion by the like-for-like promotion rule) |
| `build_paag_embeddings` | the night's `osmf-paag` champion over every product's audience -> `paag_embeddings` |
| `group_users` | per-product K-Means, K by silhouette -> `user_groups`, `group_profiles` |
| `evaluate_grouping` | groups vs the simulated world's hidden segments, NDCG by K -> `eval_metrics` |
| `build_preference_pairs` | group-wise CTRs, preference pairs -> `group_creative_ctr`, `group_preference_pairs` |
| `train_grm` | group-aware reward model and its group-agnostic baseline on the pairs -> `osmf-grm` |
| `evaluate_grm` | both against the simulated world's oracle, on prompts never shown -> `eval_metrics` |
| `pretrain_gmllm` | G-MLLM on the four pre-training tasks -> `osmf-gmllm-base` (skipped while a fresh one exists) |
| `train_group_dpo` | Group-DPO, DPO with prefix and one-size-fits-all DPO from that base -> `osmf-gmllm` |
| `evaluate_gmllm` | the generators' descriptions against the simulated world's oracle -> `eval_metrics` |
| `generate_creatives` | best-of-N images per (product, group) -> PNGs, `generated_creatives`; `render.shards` workers |
| `evaluate_and_publish` | a creative per group -> `serving_creatives`; `osmf-serving`; `osmf report --ds D` |

`ingest_events`, `group_users` and `build_preference_pairs` end with a data-quality gate (refused
lines, volume against the previous night, missing attributes, group sizes, pairs of unknown
groups; bounds under `quality.*`): its checks go to `eval_metrics` (stage `quality`), and a
failed check fails the task naming the check and its numbers, so nothing downstream runs.

Configuration: `conf/osmf.yaml`, then the files named in `$OSMF_CONFIG`, then
`OSMF_<SECTION>__<KEY>` variables; every task runs with the same ones. The Spark master comes
from the `spark_default` connection; GPU jobs queue in the `gpu` pool (subprocesses, or pods
with `gpu.launcher: kubernetes`).
"""


def asset(table: Table) -> Asset:
    """The Airflow Asset of a lakehouse table, named and located by its contract."""
    location = table.location(CFG)
    return Asset(name=f"osmf.{table.name}", uri=location if "://" in location else f"file://{location}")


def spark_job(task_id: str, timeout: timedelta, writes: tuple[Table, ...] = ()) -> SparkSubmitOperator:
    """A Spark stage submitted with the same Delta jars and session settings the CLI uses."""
    return SparkSubmitOperator(
        task_id=task_id,
        outlets=[asset(t) for t in writes],
        application=str(JOBS / f"{task_id}.py"),
        application_args=JOB_ARGS,
        conn_id="spark_default",
        name=f"osmf-{task_id}",
        conf=dict(SPARK_CONF),  # the operator may add to its own copy
        jars=SPARK_JARS,
        # The driver and executors must run the interpreter that has osmf_lib installed.
        env_vars={"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, **DEPLOYMENT_ENV},
        execution_timeout=timeout,
    )


def _shell(command: list[str]) -> str:
    return " ".join(arg if arg in SHELL_JOB_ARGS[1::2] else shlex.quote(arg) for arg in command)


def _operator(cls, argument: str, values: list, mapped: bool, **kwargs):
    """`cls(**kwargs)` with `argument` = the one value, or one mapped task instance per value."""
    if mapped:
        return cls.partial(**kwargs).expand(**{argument: values})
    (value,) = values
    return cls(**kwargs, **{argument: value})


def gpu_job(task_id: str, timeout: timedelta, shards: int | None = None):
    """A torch stage in the gpu pool: a subprocess of the worker (CUDA when present) or a GPU pod.
    With `shards`, one mapped instance per shard, each running `--shard I/shards`."""
    extras = [[]] if shards is None else [["--shard", f"{i}/{shards}"] for i in range(shards)]
    if CFG.gpu.launcher == "kubernetes":
        return gpu_pod(task_id, timeout, [[*JOB_ARGS, *extra] for extra in extras], mapped=shards is not None)
    commands = [_shell([sys.executable, str(JOBS / f"{task_id}.py"), *SHELL_JOB_ARGS, *extra]) for extra in extras]
    return _operator(
        BashOperator,
        "bash_command",
        commands,
        mapped=shards is not None,
        task_id=task_id,
        env={**DEPLOYMENT_ENV, **JOB_ENV},
        append_env=True,
        pool=GPU_POOL,
        execution_timeout=timeout,
    )


def gpu_pod(task_id: str, timeout: timedelta, arguments: list[list[str]], mapped: bool):
    """The stage as a pod of `gpu.image` in `gpu.namespace`, holding `gpu.gpus_per_task` GPUs."""
    try:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from kubernetes.client import models as k8s
    except ImportError:
        # The DAG still parses, so the rest of the night stays visible; the task says what is missing.
        missing = "gpu.launcher=kubernetes needs the cncf-kubernetes provider: pip install 'osmf[kubernetes]'"
        return BashOperator(
            task_id=task_id, bash_command=_shell(["echo", missing]) + " >&2; exit 1", pool=GPU_POOL, retries=0
        )
    gpus = str(CFG.gpu.gpus_per_task)
    return _operator(
        KubernetesPodOperator,
        "arguments",
        arguments,
        mapped,
        task_id=task_id,
        name=f"osmf-{task_id}".replace("_", "-"),
        namespace=CFG.gpu.namespace,
        image=CFG.gpu.image,
        # The image's working directory is the checkout (docker/Dockerfile), as on a local worker.
        cmds=["python", f"jobs/{task_id}.py"],
        env_vars=DEPLOYMENT_ENV,
        container_resources=k8s.V1ResourceRequirements(
            limits={"nvidia.com/gpu": gpus}, requests={"nvidia.com/gpu": gpus}
        ),
        # GPU nodes are usually tainted so that only pods asking for GPUs land there.
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        get_logs=True,
        on_finish_action="delete_pod",
        pool=GPU_POOL,
        execution_timeout=timeout,
    )


with DAG(
    dag_id="osmf_nightly",
    description="Group-targeted ad creatives from the day's click logs (OSMF)",
    doc_md=DOC,
    # One run per calendar day, started at midnight UTC once that day's logs are complete.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    default_args={
        "owner": "osmf",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=1),
    },
    tags=["osmf"],
) as dag:
    preflight = spark_job("preflight", timeout=timedelta(minutes=10))
    ingest_events = spark_job(
        "ingest_events",
        timeout=timedelta(hours=1),
        writes=(IMPRESSIONS, REJECTED_EVENTS, USERS, PRODUCTS, CREATIVES),
    )

    train_paag = gpu_job("train_paag", timeout=timedelta(hours=2))
    build_paag_embeddings = spark_job("build_paag_embeddings", timedelta(hours=1), writes=(PAAG_EMBEDDINGS,))
    group_users = spark_job("group_users", timedelta(hours=1), writes=(USER_GROUPS, GROUP_PROFILES))
    evaluate_grouping = spark_job("evaluate_grouping", timedelta(hours=1), writes=(EVAL_METRICS,))
    build_preference_pairs = spark_job(
        "build_preference_pairs", timedelta(hours=1), writes=(GROUP_CREATIVE_CTR, GROUP_PREFERENCE_PAIRS)
    )

    preflight >> ingest_events >> train_paag >> build_paag_embeddings >> group_users
    train_grm = gpu_job("train_grm", timeout=timedelta(hours=2))
    evaluate_grm = spark_job("evaluate_grm", timedelta(hours=1), writes=(EVAL_METRICS,))

    group_users >> [evaluate_grouping, build_preference_pairs]
    build_preference_pairs >> train_grm >> evaluate_grm
    pretrain_gmllm = gpu_job("pretrain_gmllm", timeout=timedelta(hours=4))
    train_group_dpo = gpu_job("train_group_dpo", timeout=timedelta(hours=4))
    evaluate_gmllm = spark_job("evaluate_gmllm", timedelta(hours=1), writes=(EVAL_METRICS,))

    build_preference_pairs >> pretrain_gmllm
    [train_grm, pretrain_gmllm] >> train_group_dpo >> evaluate_gmllm
    # Renders with the night's osmf-gmllm and osmf-grm, one mapped instance per render.shards.
    generate_creatives = gpu_job("generate_creatives", timeout=timedelta(hours=6), shards=CFG.render.shards)
    evaluate_and_publish = spark_job(
        "evaluate_and_publish", timedelta(hours=1), writes=(SERVING_CREATIVES, EVAL_METRICS)
    )

    train_group_dpo >> generate_creatives
    [evaluate_grouping, evaluate_grm, evaluate_gmllm, generate_creatives] >> evaluate_and_publish
