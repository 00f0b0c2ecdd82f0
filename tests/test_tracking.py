import datetime as dt

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import Row

from osmf_lib import tables, tracking
from osmf_lib.tables import TABLES

DS = dt.date(2026, 11, 1)


class Doubler(mlflow.pyfunc.PythonModel):
    def __init__(self, factor: float):
        self.factor = factor

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return model_input["x"] * self.factor


def _log_model(factor: float) -> str:
    example = pd.DataFrame({"x": [1.0, 2.0]})
    info = mlflow.pyfunc.log_model(name="model", python_model=Doubler(factor), input_example=example)
    return info.model_uri


def _stage_runs(cfg, dag_run_id):
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{tracking.TAG_DAG_RUN}` = '{dag_run_id}'"
    )


def test_stages_of_one_dag_run_nest_under_one_parent(cfg):
    for stage in ("preflight", "ingest_events"):
        with tracking.stage_run(cfg, stage, DS, "scheduled__2026-11-01") as run:
            assert run.info.run_name == stage
    runs = _stage_runs(cfg, "scheduled__2026-11-01")
    parents = [r for r in runs if tracking.TAG_STAGE not in r.data.tags]
    children = [r for r in runs if tracking.TAG_STAGE in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags[tracking.TAG_DS] == "2026-11-01"
    assert sorted(r.data.tags[tracking.TAG_STAGE] for r in children) == ["ingest_events", "preflight"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    child = children[0]
    assert child.data.params["grouping.k_max"] == str(cfg.grouping.k_max)
    assert child.data.params["lakehouse.root"] == cfg.lakehouse.root
    assert child.data.tags["mlflow.source.git.commit"] == tracking.git_commit()
    logged = mlflow.artifacts.load_dict(f"{child.info.artifact_uri}/config.json")
    assert logged["grouping"]["k_max"] == cfg.grouping.k_max


def test_a_failing_stage_marks_its_run_failed(cfg):
    with pytest.raises(RuntimeError), tracking.stage_run(cfg, "train_grm", DS, "manual__fail"):
        raise RuntimeError("boom")
    (child,) = [r for r in _stage_runs(cfg, "manual__fail") if tracking.TAG_STAGE in r.data.tags]
    assert child.info.status == "FAILED"


def test_delta_table_is_logged_as_a_run_input_with_its_version(spark, cfg):
    users = TABLES["users"]
    df = spark.createDataFrame(
        [
            Row(
                user_id="u1",
                age_band="25-34",
                gender="f",
                city_tier="tier-1",
                purchase_power="high",
                occupation="engineer",
                device="ios",
                interests=["books"],
                updated_ds=DS,
            )
        ]
    )
    tables.merge(spark, df, users, cfg)
    with tracking.stage_run(cfg, "train_paag", DS, "manual__lineage") as run:
        version = tracking.log_table_input(spark, users, cfg, context="training")
    inputs = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert version == tables.latest_version(spark, users, cfg)
    assert [i.dataset.name for i in inputs] == [f"users@v{version}"]
    assert users.location(cfg) in inputs[0].dataset.source
    assert inputs[0].tags[0].value == "training"


def test_register_alias_and_load_the_champion(cfg):
    tracking.configure(cfg)
    name = "osmf-test-doubler"
    assert tracking.alias_version(name) is None
    with mlflow.start_run():
        first = tracking.register(_log_model(2.0), name)
    tracking.promote(name, first)
    with mlflow.start_run():
        second = tracking.register(_log_model(3.0), name)
    assert tracking.alias_version(name, tracking.CHALLENGER) == second
    assert tracking.alias_version(name, tracking.CHAMPION) == first

    champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert list(champion.predict(pd.DataFrame({"x": [1.0, 4.0]}))) == [2.0, 8.0]
    tracking.promote(name, second)
    assert list(mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(pd.DataFrame({"x": [1.0]}))) == [3.0]


def test_unusable_tracking_store_is_named(make_cfg, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cfg = make_cfg(f"mlflow.tracking_uri=sqlite:///{blocker}/sub/mlflow.db")
    with pytest.raises((tracking.TrackingError, OSError), match="not-a-folder"):
        tracking.configure(cfg)


def test_with_a_tracking_server_the_server_keeps_the_artifacts(make_cfg, tmp_path):
    """A path of ours would send every client straight to the store, past the server's auth."""
    served = make_cfg("mlflow.tracking_uri=https://mlflow.example:5000", f"mlflow.artifact_root={tmp_path}/a")
    assert tracking.artifact_location(served) is None
    local = make_cfg(f"mlflow.artifact_root={tmp_path}/a")
    assert tracking.artifact_location(local) == (tmp_path / "a").as_uri()
    assert tracking.artifact_location(make_cfg("mlflow.artifact_root=s3://bucket/mlflow")) == "s3://bucket/mlflow"


def test_flatten_nests_with_dots():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}


def test_secrets_in_the_config_are_never_logged_with_a_run(make_cfg):
    secret = "spark.hadoop.fs.s3a.secret.key=wJalrXUtnFEMI"
    cfg = make_cfg(
        f"spark.conf={{{secret.replace('=', ': ')}, spark.hadoop.fs.s3a.access.key: AKIA1}}",
        "images.roots=['s3a://osmf:hunter2@bucket/images']",
    )
    with tracking.stage_run(cfg, "preflight", DS, "manual__secrets") as run:
        pass
    logged = MlflowClient().get_run(run.info.run_id).data.params
    assert logged["spark.conf.spark.hadoop.fs.s3a.secret.key"] == "***"
    assert logged["spark.conf.spark.hadoop.fs.s3a.access.key"] == "***"
    assert logged["images.roots"] == "['s3a://***@bucket/images']"
    config = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/config.json")
    assert "wJalrXUtnFEMI" not in str(config) and "hunter2" not in str(config) and "AKIA1" not in str(config)
    assert config["lakehouse"]["root"] == cfg.lakehouse.root  # the rest as it is
    assert logged["paag.max_text_tokens"] == str(cfg.paag.max_text_tokens)  # tokens, not a token
