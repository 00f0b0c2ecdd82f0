"""osmf_nightly: click logs in, group-targeted creatives out, once per day.

Wiring only. Every task is a job in jobs/ over a module in osmf_lib/, declared in osmf_lib/night.py
with its engine, timeout, and what it reads and writes, from which its place in the order follows;
this file makes operators of them, with retries and pools, and imports nothing heavier than the
Config (no pyspark, torch or mlflow at parse time).
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
from osmf_lib.night import NIGHT, Task, edges, markdown_table
from osmf_lib.spark import session_conf, ui_binding
from osmf_lib.tables import Table

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

DOC = f"""
### OSMF nightly

Turns the day's ad click logs into one background per user group and product
([design](https://arxiv.org/abs/2602.02033)). Each run processes the calendar day `ds`
(its data interval) and writes only that day's partitions, so a rerun or a backfill of a
day gives the same tables.

{markdown_table()}
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


def outlets(task: Task) -> list[Asset]:
    return [asset(written) for written in task.writes if isinstance(written, Table)]


def spark_job(task: Task) -> SparkSubmitOperator:
    """A Spark stage submitted with the same Delta jars and session settings the CLI uses."""
    return SparkSubmitOperator(
        task_id=task.name,
        outlets=outlets(task),
        application=str(JOBS / f"{task.name}.py"),
        application_args=JOB_ARGS,
        conn_id="spark_default",
        name=f"osmf-{task.name}",
        conf=dict(SPARK_CONF),  # the operator may add to its own copy
        jars=SPARK_JARS,
        # The driver and executors must run the interpreter that has osmf_lib installed.
        env_vars={
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            **ui_binding(CFG),
            **DEPLOYMENT_ENV,
        },
        execution_timeout=task.timeout,
    )


def _shell(command: list[str]) -> str:
    return " ".join(arg if arg in SHELL_JOB_ARGS[1::2] else shlex.quote(arg) for arg in command)


def _operator(cls, argument: str, values: list, mapped: bool, **kwargs):
    """`cls(**kwargs)` with `argument` = the one value, or one mapped task instance per value."""
    if mapped:
        return cls.partial(**kwargs).expand(**{argument: values})
    (value,) = values
    return cls(**kwargs, **{argument: value})


def gpu_job(task: Task):
    """A torch stage in the gpu pool: a subprocess of the worker (CUDA when present) or a GPU pod.
    With `task.shards`, one mapped instance per shard, each running `--shard I/N`."""
    shards = None if task.shards is None else CFG.get(task.shards)
    extras = [[]] if shards is None else [["--shard", f"{i}/{shards}"] for i in range(shards)]
    if CFG.gpu.launcher == "kubernetes":
        return gpu_pod(task, [[*JOB_ARGS, *extra] for extra in extras], mapped=shards is not None)
    commands = [_shell([sys.executable, str(JOBS / f"{task.name}.py"), *SHELL_JOB_ARGS, *extra]) for extra in extras]
    return _operator(
        BashOperator,
        "bash_command",
        commands,
        mapped=shards is not None,
        task_id=task.name,
        outlets=outlets(task),
        env={**DEPLOYMENT_ENV, **JOB_ENV},
        append_env=True,
        pool=GPU_POOL,
        execution_timeout=task.timeout,
    )


def gpu_pod(task: Task, arguments: list[list[str]], mapped: bool):
    """The stage as a pod of `gpu.image` in `gpu.namespace`, holding `gpu.gpus_per_task` GPUs."""
    try:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from kubernetes.client import models as k8s
    except ImportError:
        # The DAG still parses, so the rest of the night stays visible; the task says what is missing.
        missing = "gpu.launcher=kubernetes needs the cncf-kubernetes provider: pip install 'osmf[kubernetes]'"
        return BashOperator(
            task_id=task.name, bash_command=_shell(["echo", missing]) + " >&2; exit 1", pool=GPU_POOL, retries=0
        )
    gpus = str(CFG.gpu.gpus_per_task)
    return _operator(
        KubernetesPodOperator,
        "arguments",
        arguments,
        mapped,
        task_id=task.name,
        outlets=outlets(task),
        name=f"osmf-{task.name}".replace("_", "-"),
        namespace=CFG.gpu.namespace,
        image=CFG.gpu.image,
        # The image's working directory is the checkout (docker/Dockerfile), as on a local worker.
        cmds=["python", f"jobs/{task.name}.py"],
        env_vars=DEPLOYMENT_ENV,
        container_resources=k8s.V1ResourceRequirements(
            limits={"nvidia.com/gpu": gpus}, requests={"nvidia.com/gpu": gpus}
        ),
        # GPU nodes are usually tainted so that only pods asking for GPUs land there.
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        get_logs=True,
        on_finish_action="delete_pod",
        pool=GPU_POOL,
        execution_timeout=task.timeout,
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
    operators = {task.name: (spark_job if task.engine == "spark" else gpu_job)(task) for task in NIGHT}
    for before, after in edges():
        operators[before] >> operators[after]
