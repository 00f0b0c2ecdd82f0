"""DAG integrity, and one real run of the nightly DAG through Airflow and spark-submit."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from osmf_lib.config import PROJECT_ROOT, Config
from osmf_lib.night import NIGHT as NIGHT_TASKS
from osmf_lib.night import markdown_table, upstream
from osmf_lib.synth import write_landing
from osmf_lib.tables import Table

DAG_FILE = PROJECT_ROOT / "dags" / "osmf_nightly.py"
# The night's tasks are declared in osmf_lib/night.py (tests/test_night.py checks the registry).
EXPECTED_TASKS = {task.name for task in NIGHT_TASKS}
GPU_TASKS = {task.name for task in NIGHT_TASKS if task.engine == "gpu"}
SPARK_TASKS = EXPECTED_TASKS - GPU_TASKS


PROFILES = sorted((PROJECT_ROOT / "conf").rglob("*.yaml"))


def _parse(monkeypatch=None, **env):
    from airflow.dag_processing.dagbag import DagBag

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("osmf_nightly")


def _env(task) -> dict:
    """The environment a task's job runs with, whatever the operator, mapped or not."""
    given = getattr(task, "partial_kwargs", None) or vars(task)
    env = given.get("env_vars") or given.get("env") or {}
    return env if isinstance(env, dict) else {var.name: var.value for var in env}


def _commands(task) -> list[str]:
    """The shell command of each instance of a subprocess task (one per shard when mapped)."""
    mapped = getattr(task, "expand_input", None)
    return mapped.value["bash_command"] if mapped is not None else [task.bash_command]


@pytest.fixture(scope="module")
def dag():
    return _parse()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_the_dag_parses_under_every_committed_profile_and_hands_it_to_every_job(profile, monkeypatch):
    dag = _parse(monkeypatch, OSMF_CONFIG=str(profile))
    assert set(dag.task_ids) == EXPECTED_TASKS
    for task in dag.tasks:
        assert _env(task)["OSMF_CONFIG"] == str(profile), task.task_id


def test_gpu_stages_run_as_gpu_pods_under_the_kubernetes_launcher(monkeypatch):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    dag = _parse(monkeypatch, OSMF_CONFIG="conf/profiles/cluster.yaml", OSMF_GPU__GPUS_PER_TASK="2")
    pod = dag.get_task("train_paag")
    assert isinstance(pod, KubernetesPodOperator)
    assert (pod.namespace, pod.image, pod.pool) == ("osmf", "osmf:latest", "gpu")
    assert pod.cmds == ["python", "jobs/train_paag.py"] and pod.arguments[:2] == ["--ds", "{{ ds }}"]
    assert pod.container_resources.limits == {"nvidia.com/gpu": "2"}
    assert [t.key for t in pod.tolerations] == ["nvidia.com/gpu"]
    assert _env(pod)["OSMF_GPU__GPUS_PER_TASK"] == "2"


def test_dag_has_the_expected_tasks(dag):
    assert set(dag.task_ids) == EXPECTED_TASKS


def test_dag_level_settings(dag):
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert dag.start_date.isoformat() == "2026-11-01T00:00:00+00:00"
    assert markdown_table() in dag.doc_md


def test_every_task_retries_and_times_out(dag):
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.execution_timeout is not None and task.execution_timeout <= timedelta(hours=6), task.task_id


def test_a_failed_task_stops_everything_downstream_of_it(dag):
    # What makes a failed data-quality gate (a failed ingest_events, group_users or
    # build_preference_pairs) stop the night before serving: no task runs past a failed upstream.
    rules = {task.task_id: task.trigger_rule for task in dag.tasks}
    assert rules == dict.fromkeys(rules, "all_success")
    assert "quality gate" in dag.doc_md


def test_spark_tasks_get_ds_and_run_id_and_delta(dag):
    for task in (dag.get_task(t) for t in SPARK_TASKS):
        assert task.application.startswith(str(PROJECT_ROOT / "jobs"))
        assert task.application_args == ["--ds", "{{ ds }}", "--dag-run-id", "{{ run_id }}"]
        assert task.jars == str(PROJECT_ROOT / ".jars" / "*.jar")
        assert task.conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"


def test_tasks_follow_the_registry_and_declare_the_tables_they_write(dag):
    for task in NIGHT_TASKS:
        operator = dag.get_task(task.name)
        assert operator.upstream_task_ids == upstream(task), task.name
        assert operator.execution_timeout == task.timeout, task.name
        written = {f"osmf.{t.name}" for t in task.writes if isinstance(t, Table)}
        assert {a.name for a in operator.outlets} == written, task.name


def test_gpu_stages_queue_in_the_gpu_pool_and_run_their_job(dag):
    for task in (dag.get_task(t) for t in GPU_TASKS):
        assert (getattr(task, "partial_kwargs", None) or vars(task))["pool"] == "gpu"
        for command in _commands(task):
            assert str(PROJECT_ROOT / "jobs" / f"{task.task_id}.py") in command
            assert '--ds "$OSMF_JOB_DS" --dag-run-id "$OSMF_JOB_RUN_ID"' in command
        assert {k: _env(task)[k] for k in ("OSMF_JOB_DS", "OSMF_JOB_RUN_ID")} == {
            "OSMF_JOB_DS": "{{ ds }}",
            "OSMF_JOB_RUN_ID": "{{ run_id }}",
        }


def test_a_run_id_reaches_a_subprocess_job_as_data_never_as_shell_syntax(dag, tmp_path):
    (command,) = _commands(dag.get_task("train_paag"))
    job = f"{shlex.quote(sys.executable)} {shlex.quote(str(PROJECT_ROOT / 'jobs' / 'train_paag.py'))}"
    assert command.startswith(job)
    hostile = f"manual__$(touch {tmp_path}/a)'; touch {tmp_path}/b; echo '"
    env = {"PATH": os.environ["PATH"], "OSMF_JOB_DS": "2026-11-03", "OSMF_JOB_RUN_ID": hostile}
    printed = subprocess.run(
        ["bash", "-c", command.replace(job, "printf '%s\\n'")], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert printed.splitlines() == ["--ds", "2026-11-03", "--dag-run-id", hostile]
    assert list(tmp_path.iterdir()) == []


def test_a_spark_task_on_a_local_master_keeps_its_ui_on_this_machine(monkeypatch):
    monkeypatch.delenv("SPARK_LOCAL_IP", raising=False)
    local = _parse(monkeypatch)
    assert all(_env(local.get_task(t))["SPARK_LOCAL_IP"] == "127.0.0.1" for t in SPARK_TASKS)
    on_a_cluster = _parse(monkeypatch, OSMF_CONFIG="conf/profiles/cluster.yaml")
    assert all("SPARK_LOCAL_IP" not in _env(on_a_cluster.get_task(t)) for t in SPARK_TASKS)


def test_rendering_fans_out_over_one_mapped_instance_per_shard(monkeypatch):
    commands = _commands(_parse(monkeypatch, OSMF_RENDER__SHARDS="3").get_task("generate_creatives"))
    assert [c.rsplit(" ", 2)[1:] for c in commands] == [["--shard", f"{i}/3"] for i in range(3)]


def test_gpu_pods_fan_out_the_same_way(monkeypatch):
    dag = _parse(monkeypatch, OSMF_CONFIG="conf/profiles/cluster.yaml", OSMF_RENDER__SHARDS="2")
    arguments = dag.get_task("generate_creatives").expand_input.value["arguments"]
    assert [a[-2:] for a in arguments] == [["--shard", "0/2"], ["--shard", "1/2"]]
    assert all(a[:2] == ["--ds", "{{ ds }}"] for a in arguments)


def test_dag_file_imports_nothing_heavy():
    heavy = ["pyspark", "torch", "mlflow", "transformers", "diffusers", "trl", "delta"]
    probe = (
        "import runpy, sys, json; runpy.run_path(sys.argv[1]); "
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(DAG_FILE)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@dataclass(frozen=True)
class Night:
    """One tiny night run by a real scheduler on a fresh SQLite home."""

    cfg: Config
    env: dict[str, str]
    airflow: str
    log: str = ""
    retried: tuple[str, ...] = ()

    def airflow_cli(self, *args: str) -> str:
        """`airflow ARGS` in the night's Airflow home; returns what it printed."""
        done = subprocess.run([self.airflow, *args], env=self.env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr


NIGHT = date(2026, 11, 1)
# Each task is a fresh JVM that lives a minute over tiny tables: compiling hot code with C2 costs
# it more CPU than the faster code earns back (a tiny group_users: 106 -> 70 CPU-seconds with C1
# only; at demo scale it is even, and the long-lived JVM of the other tests is slower with it).
SHORT_LIVED_JVM = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}
# The tiny night's settings, for the night here and the one tests/stack runs on the services.
TINY_NIGHT = {
    "OSMF_SPARK__CONF": json.dumps(SHORT_LIVED_JVM),
    "OSMF_PAAG__MAX_TRAIN_ROWS": "20000",
    "OSMF_PAAG__EPOCHS": "1",
    "OSMF_EVALUATE__MAX_PRODUCTS": "5",
    "OSMF_GROUPING__SILHOUETTE_SAMPLE": "500",
    # The night's chain, not its quality: every training as short as it gets (the stage tests
    # cover on-policy rounds and what training achieves).
    "OSMF_GRM__EPOCHS": "2",
    "OSMF_GMLLM__EPOCHS": "1",
    "OSMF_GROUP_DPO__EPOCHS": "1",
    "OSMF_GROUP_DPO__ROUNDS": "0",
    "OSMF_GROUP_DPO__MAX_LOGGED_PAIRS": "200",
    "OSMF_RENDER__TINY__VAE_STEPS": "2",
    "OSMF_RENDER__TINY__UNET_STEPS": "2",
    "OSMF_RENDER__STEPS": "2",
    "OSMF_SPARK__SHOW_PROGRESS": "false",
}


@contextmanager
def scheduler(night: Night, logs: Path, daemons, free_port) -> Iterator[Night]:
    """The night's Airflow home served as a deployment serves it: a scheduler (LocalExecutor, two
    task slots), a DAG processor and the API server the task runners report to. Yields the night
    with their settings; stops them, and any task they started, on the way out."""
    port = free_port()
    env = {
        **night.env,
        # Runs come from triggers and backfills only: unpausing the DAG would otherwise also start
        # a run for the latest whole day (yesterday), which has no landing files here.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # Spark holds both cores: the API server's first answer can take half a minute, and a
        # task runner that times out and retries finds its task already started and fails.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "120",
        "AIRFLOW__CORE__PARALLELISM": "2",
        # `dags reserialize` has stored the DAG before any run; parsing it again every 30 s would
        # take CPU from the night's tasks.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
    }
    services = {
        "dag-processor": [night.airflow, "dag-processor"],
        "api-server": [night.airflow, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        "scheduler": [night.airflow, "scheduler"],
    }
    with daemons(services, env, logs):
        yield replace(night, env=env)


def _runs(night: Night) -> dict[str, dict]:
    """The DAG's runs by logical day, as `airflow dags list-runs` reports them."""
    printed = night.airflow_cli("dags", "list-runs", "osmf_nightly", "--output", "json")
    listed = json.loads(next(line for line in printed.splitlines() if line.startswith("[")))
    return {run["logical_date"][:10]: run for run in listed}


def _succeeded(night: Night, day: date, logs: Path, minutes: int = 45) -> dict:
    """Waits (`minutes` at most) for the scheduler to finish the run of `day`; returns the run,
    which must have succeeded."""
    deadline = time.monotonic() + minutes * 60
    while (run := _runs(night)[day.isoformat()])["state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, f"the run of {day} is still {run['state']} after {minutes} minutes"
        time.sleep(20)
    assert run["state"] == "success", (
        f"{run}\n{night.airflow_cli('tasks', 'states-for-dag-run', 'osmf_nightly', run['run_id'])}\n"
        f"task logs under {night.env['AIRFLOW_HOME']}/logs, the services' under {logs}"
    )
    return run


def _task_logs(night: Night, run_id: str, since: float = 0.0) -> Night:
    """The night with what every task of a run logged from `since` (epoch seconds) on, its jobs'
    output included, one event a line (from the JSON lines Airflow writes per task attempt), and
    the tasks that took more than one attempt."""
    folder = Path(night.env["AIRFLOW_HOME"]) / "logs" / "dag_id=osmf_nightly" / f"run_id={run_id}"
    attempts = sorted(f for f in folder.rglob("attempt=*.log") if f.stat().st_mtime >= since)
    assert attempts, f"no task logs under {folder}"
    log = "\n".join(str(json.loads(line).get("event", "")) for f in attempts for line in f.open() if line.strip())
    tasks = Counter(str(f.relative_to(folder).parent) for f in attempts)
    return replace(night, log=log, retried=tuple(sorted(task for task, tries in tasks.items() if tries > 1)))


@pytest.fixture(scope="module")
def night(tmp_path_factory, make_cfg, daemons, free_port) -> Night:
    tmp_path = tmp_path_factory.mktemp("night")
    # Its own MLflow store: the registry must hold only what this night trained.
    store = f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"
    cfg = make_cfg(store, f"mlflow.artifact_root={tmp_path}/artifacts", root=tmp_path / "lakehouse")
    write_landing(cfg, scale="tiny", start=NIGHT, days=1)
    airflow = str(PROJECT_ROOT / ".venv" / "bin" / "airflow") if (PROJECT_ROOT / ".venv").exists() else "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "OSMF_LAKEHOUSE__ROOT": cfg.lakehouse.root,
        "OSMF_LAKEHOUSE__LANDING": cfg.lakehouse.landing,
        **TINY_NIGHT,
        "OSMF_MODELS__DIR": str(tmp_path / "models"),
        "OSMF_RENDER__ARTIFACTS": str(tmp_path / "creatives"),
        "OSMF_MLFLOW__TRACKING_URI": cfg.mlflow.tracking_uri,
        "OSMF_MLFLOW__ARTIFACT_ROOT": cfg.mlflow.artifact_root,
        "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    night = Night(cfg, env, airflow)
    # What `make setup` and the compose init do for a home: its database and the GPU tasks' pool.
    night.airflow_cli("db", "migrate")
    night.airflow_cli("pools", "set", "gpu", "1", "One slot per GPU")
    with scheduler(night, tmp_path, daemons, free_port) as deployed:
        deployed.airflow_cli("dags", "reserialize")
        # The scheduler starts runs only while the DAG is unpaused.
        deployed.airflow_cli("dags", "unpause", "osmf_nightly")
        deployed.airflow_cli("dags", "trigger", "osmf_nightly", "--logical-date", NIGHT.isoformat())
        run = _succeeded(deployed, NIGHT, tmp_path)
    return _task_logs(night, run["run_id"])


@pytest.mark.e2e
def test_nightly_dag_runs_end_to_end(night, spark):
    """A scheduler's run of one tiny day on a fresh SQLite home, from `airflow dags trigger` on."""
    cfg, env, log = night.cfg, night.env, night.log
    # A retry hides a failure the run must not have: two branches once raced on one Delta partition.
    assert not night.retried, f"tasks that failed a first try: {night.retried}, logs under {env['AIRFLOW_HOME']}/logs"
    assert "preflight ok  spark + delta" in log
    assert "ingest events 2026-11-01: read 60000 = accepted 60000" in log
    assert "evaluate_grouping: ari" in log
    assert "build_preference_pairs: " in log and " pairs (" in log
    # One tiny day may or may not hold training pairs; either way both GRM tasks say what they did.
    assert "train_grm: " in log and "evaluate_grm: " in log
    assert "pretrain_gmllm: " in log and "train_group_dpo: " in log and "evaluate_gmllm: " in log
    assert "generate_creatives: " in log
    assert "evaluate_and_publish: serving_creatives v" in log
    for gated in ("ingest_events: rejected_share", "group_users: grouped_share", "build_preference_pairs: pairs_of"):
        assert f"quality {gated}" in log
    # The night's report is where `osmf report` says, and every group of the night is served.
    report = Path(cfg.lakehouse.root).parent / "creatives" / "2026-11-01" / "report.html"
    assert f"evaluate_and_publish: report {report}" in log and report.exists()

    # The closed loop: the next day's requests go through the night's osmf-serving, and the
    # traffic shows its answers.
    osmf = str(Path(night.airflow).with_name("osmf"))
    served = subprocess.run([osmf, "synth", "serve", "--ds", "2026-11-01"], env=env, capture_output=True, text=True)
    assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
    generated = int(re.search(r"serving_creatives v\d+: \d+ targets, (\d+) generated", log).group(1))
    next_day = Path(cfg.lakehouse.landing) / "2026-11-02"
    shown = {json.loads(line)["creative_id"] for f in (next_day / "events").glob("*.jsonl") for line in f.open()}
    assert (generated > 0) == any(c.startswith("gen-") for c in shown), served.stdout

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    stages = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
        filter_string="tags.`osmf.stage` = 'preflight' and tags.`osmf.ds` = '2026-11-01'",
    )
    assert stages, cfg.mlflow.tracking_uri
    assert any(
        r.data.tags["osmf.dag_run_id"].startswith("manual__") and "mlflow.parentRunId" in r.data.tags for r in stages
    )
    _the_night_is_whole(spark, cfg, NIGHT)


def test_a_backfill_plans_one_run_per_day_and_reruns_a_finished_night_only_when_asked(night):
    # `airflow backfill create` hands its runs to the scheduler; the plan is what it will run.
    def planned(*flags: str) -> list[str]:
        days = ["--from-date", NIGHT.isoformat(), "--to-date", (NIGHT + timedelta(days=2)).isoformat()]
        printed = night.airflow_cli("backfill", "create", "--dag-id", "osmf_nightly", "--dry-run", *days, *flags)
        plan = printed.partition("Runs to be attempted")[2]
        return re.findall(r"^\| (\d{4}-\d\d-\d\d) 00:00:00\+00:00", plan, flags=re.MULTILINE)

    assert planned() == ["2026-11-02", "2026-11-03"]
    assert planned("--reprocess-behavior", "completed") == ["2026-11-01", "2026-11-02", "2026-11-03"]


def _the_night_is_whole(spark, cfg, night: date) -> None:
    """Every table the night writes holds its rows, they agree with each other, and the models it
    trained are registered as champions."""
    from osmf_lib import artifacts, tables
    from osmf_lib.tables import (
        EVAL_METRICS,
        GENERATED_CREATIVES,
        GROUP_CREATIVE_CTR,
        GROUP_PROFILES,
        IMPRESSIONS,
        PAAG_EMBEDDINGS,
        SERVING_CREATIVES,
        USER_GROUPS,
    )

    written = (IMPRESSIONS, PAAG_EMBEDDINGS, USER_GROUPS, GROUP_PROFILES, GROUP_CREATIVE_CTR, SERVING_CREATIVES)
    for table in (*written, EVAL_METRICS):
        assert tables.read(spark, table, cfg, ds=night).count() > 0, table.name
    group = ["product_id", "group_id"]
    profiles = tables.read(spark, GROUP_PROFILES, cfg, ds=night).select(*group)
    for table in (USER_GROUPS, GROUP_CREATIVE_CTR, SERVING_CREATIVES):
        unknown = tables.read(spark, table, cfg, ds=night).select(*group).distinct().exceptAll(profiles)
        assert unknown.count() == 0, f"{table.name} holds groups that group_profiles does not"
    served = tables.read(spark, SERVING_CREATIVES, cfg, ds=night)
    # One best per group; the group's traffic, explored candidates included, adds up.
    assert served.where("selected").count() == served.select(*group).distinct().count()
    totals = served.groupBy(*group).sum("traffic_share").toPandas()["sum(traffic_share)"]
    assert totals.to_numpy() == pytest.approx(1.0)
    images = tables.read(spark, GENERATED_CREATIVES, cfg, ds=night).select("image_uri").collect()
    assert all(artifacts.exists(row["image_uri"]) for row in images)
    stages = {row["stage"] for row in tables.read(spark, EVAL_METRICS, cfg, ds=night).select("stage").collect()}
    assert {"quality", "publish", "grouping"} <= stages, stages
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri, registry_uri=cfg.mlflow.tracking_uri)
    for model in ("osmf-paag", "osmf-grm", "osmf-gmllm-base", "osmf-gmllm", "osmf-serving"):
        assert client.get_model_version_by_alias(model, "champion").tags["osmf.champion_from_ds"] == night.isoformat()


@pytest.mark.slow
def test_a_backfill_the_scheduler_runs_changes_no_row(night, spark, tmp_path, daemons, free_port):
    """`airflow backfill create --reprocess-behavior completed` over the finished night, run by a
    real scheduler: the run succeeds, every table holds the very rows the first run left, and the
    registry gains no version (as for a retry of the night)."""
    client = MlflowClient(tracking_uri=night.cfg.mlflow.tracking_uri, registry_uri=night.cfg.mlflow.tracking_uri)

    def versions() -> dict[str, int]:
        models = client.search_registered_models()
        return {m.name: len(client.search_model_versions(f"name = '{m.name}'")) for m in models}

    before, registered, first = _every_row(spark, night.cfg), versions(), _runs(night)[NIGHT.isoformat()]
    with scheduler(night, tmp_path, daemons, free_port) as deployed:
        days = ["--from-date", NIGHT.isoformat(), "--to-date", NIGHT.isoformat()]
        started = time.time()
        deployed.airflow_cli("backfill", "create", "--dag-id", "osmf_nightly", *days, "--reprocess-behavior=completed")
        run = _succeeded(deployed, NIGHT, tmp_path)
    assert run["start_date"] > first["end_date"], f"the finished night was not run again: {first}, {run}"
    assert not _task_logs(night, run["run_id"], since=started).retried
    after = _every_row(spark, night.cfg)
    assert after.keys() == before.keys()
    changed = {name: (len(before[name]), len(after[name])) for name in before if before[name] != after[name]}
    assert not changed, f"rows changed by the backfill (rows before, after): {changed}"
    assert versions() == registered


def _every_row(spark, cfg) -> dict[str, list[str]]:
    """Every row of every table, sorted; eval_metrics without its run_id (the MLflow run that
    wrote the row, which a new run is by definition)."""
    from osmf_lib import tables

    rows = {}
    for name, table in tables.TABLES.items():
        if tables.exists(spark, table, cfg):
            df = tables.read(spark, table, cfg)
            df = df.drop("run_id") if table is tables.EVAL_METRICS else df
            rows[name] = sorted(str(row) for row in df.collect())
    return rows
