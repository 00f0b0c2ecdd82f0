"""train_grm as the DAG runs it, on a small lakehouse whose groups want opposite backgrounds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from osmf_lib import promotion, tables
from osmf_lib.config import QualityConfig
from osmf_lib.grm import load_grm, stages
from osmf_lib.grm.features import GrmError
from osmf_lib.inputs import attribute_profiles
from osmf_lib.job import StageResult
from osmf_lib.pairs.stages import build_preference_pairs
from osmf_lib.tables import (
    EVAL_METRICS,
    GROUP_PROFILES,
    USER_GROUPS,
    USERS,
)

DS = dt.date(2026, 11, 3)  # the night of make_group_lakehouse


@pytest.fixture(scope="module")
def lakehouse(make_group_lakehouse):
    return make_group_lakehouse("grm")


@pytest.fixture(scope="module")
def first_run(lakehouse, run_stage) -> StageResult:
    return run_stage(stages.train_grm, lakehouse)


def test_attribute_profiles_hold_every_value_share(spark, lakehouse) -> None:
    members = tables.read(spark, USER_GROUPS, lakehouse, ds=DS).where("product_id = 'p00'")
    rows = attribute_profiles(members, tables.read(spark, USERS, lakehouse)).toPandas()
    shares = {(r.group_id, r.feature): r.share for r in rows.itertuples()}
    assert shares[(0, "gender=female")] == 1.0 and (0, "gender=male") not in shares
    assert shares[(1, "age_band=x")] == 1.0
    # interests: [], [home], [home, books], null in turn over 20 members -> 10 hold home, 5 books;
    # a member without interests still counts for every other attribute.
    assert shares[(0, "interests=home")] == pytest.approx(10 / 20)
    assert shares[(0, "interests=books")] == pytest.approx(5 / 20)


def test_training_registers_a_champion_and_reports_both_models(spark, lakehouse, first_run) -> None:
    client = MlflowClient()
    (version,) = client.search_model_versions("name = 'osmf-grm'")
    assert client.get_model_version_by_alias("osmf-grm", "champion").version == version.version
    assert version.tags[promotion.TAG_CHAMPION_FROM] == DS.isoformat()
    assert first_run.model == "osmf-grm/1" and first_run.metrics["promoted"] == 1.0

    metrics = tables.read(spark, EVAL_METRICS, lakehouse, ds=DS).where("stage = 'grm'").toPandas()
    by = metrics.set_index(["metric", "slice"])["value"]
    assert by[("test_conflict_pair_accuracy", "group_aware")] >= 0.9
    assert by[("test_conflict_pair_accuracy", "group_agnostic")] == pytest.approx(0.5)
    run = client.get_run(version.run_id)
    assert {i.dataset.name.split("@")[0] for i in run.inputs.dataset_inputs} >= {
        "group_preference_pairs",
        "group_creative_ctr",
        "users",
    }
    # The baseline is logged in the same run, where evaluate_grm finds it.
    assert not load_grm(f"runs:/{version.run_id}/osmf-grm-baseline").group_aware


def test_a_rerun_of_the_night_reuses_its_version(lakehouse, first_run, run_stage) -> None:
    again = run_stage(stages.train_grm, lakehouse)
    assert again.reused and again.model == "osmf-grm/1"
    assert len(MlflowClient().search_model_versions("name = 'osmf-grm'")) == 1


def test_a_night_without_pairs_is_a_logged_skip_that_keeps_the_champion(spark, lakehouse, first_run, run_stage) -> None:
    night = DS + dt.timedelta(days=10)  # its window holds no impressions, so no CTRs and no pairs
    for table in (USER_GROUPS, GROUP_PROFILES):
        moved = tables.read(spark, table, lakehouse, ds=DS).withColumn("ds", F.lit(night))
        tables.overwrite_partition(spark, moved, table, lakehouse, night)
    # A night without impressions is what the pairs' gate exists to stop; this one is on purpose.
    run_stage(
        build_preference_pairs, lakehouse.model_copy(update={"quality": QualityConfig(min_baseline=10**9)}), night
    )
    stale = [tables.Metric("test_pair_accuracy", "group_aware", 0.9)]
    tables.write_metrics(spark, lakehouse, night, "grm", stale, "an earlier run of the night")
    skipped = run_stage(stages.train_grm, lakehouse, night).skipped
    assert skipped.startswith("no training pairs (0 in all) in group_preference_pairs for ds=2026-11-13;")
    assert skipped.endswith("; osmf-grm v1 stays champion")
    assert len(MlflowClient().search_model_versions("name = 'osmf-grm'")) == 1
    assert tables.read(spark, EVAL_METRICS, lakehouse, ds=night).where("stage = 'grm'").count() == 0


def test_a_corrupted_champion_fails_the_night_naming_it_and_stays_champion(lakehouse, first_run, run_stage) -> None:
    # Last in this module: it registers a second version, which the tests above count.
    client = MlflowClient()
    champion = client.get_model_version_by_alias("osmf-grm", "champion").version
    stored = Path(urlparse(client.get_model_version_download_uri("osmf-grm", champion)).path)
    weights = {path: path.read_bytes() for path in stored.rglob("*.safetensors")}
    assert weights, stored
    for path in weights:
        path.write_bytes(b"not a model")
    # Other settings: the night trains a challenger, then scores the champion against it.
    retrained = lakehouse.model_copy(update={"grm": lakehouse.grm.model_copy(update={"epochs": 2})})
    try:
        with pytest.raises(GrmError, match=rf"^cannot load models:/osmf-grm/{champion}: "):
            run_stage(stages.train_grm, retrained)
    finally:
        for path, original in weights.items():
            path.write_bytes(original)
    assert client.get_model_version_by_alias("osmf-grm", "champion").version == champion
