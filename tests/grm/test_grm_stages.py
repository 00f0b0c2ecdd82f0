"""train_grm as the DAG runs it, on a small lakehouse whose groups want opposite backgrounds."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from osmf_lib import pairs, promotion, tables, tracking
from osmf_lib.grm import load_grm, stages
from osmf_lib.job import JobContext
from osmf_lib.tables import (
    CREATIVES,
    EVAL_METRICS,
    GROUP_PROFILES,
    IMPRESSIONS,
    PRODUCTS,
    SINGLE_VALUED_ATTRIBUTES,
    USER_GROUPS,
    USERS,
)

DS = dt.date(2026, 11, 3)
VERSION = "osmf-paag/1"
PRODUCTS_N = 12
MEMBERS = 20
SHOWN = 25
# Per group, a click rate per prompt: the groups rank the four backgrounds in opposite orders.
PROMPTS = (
    "a sunlit beach scene, warm tones",
    "a rustic kitchen scene, cool tones",
    "a forest, soft light",
    "a city at night",
)
RATES = {0: (0.12, 0.04, 0.08, 0.06), 1: (0.04, 0.12, 0.06, 0.08)}
SETTINGS = (
    "pairs.min_impressions=100",
    "pairs.ratio_max=1000",
    "pairs.validation_fraction=0.25",
    "pairs.test_fraction=0.25",
    "grm.epochs=20",
    "grm.batch_size=16",
    "gpu.device=cpu",
)


def _world() -> dict[str, pd.DataFrame]:
    users, members, impressions = [], [], []
    for group, gender in ((0, "female"), (1, "male")):
        for i in range(MEMBERS):
            uid = f"u{group}{i:02d}"
            users.append({"user_id": uid, **{a: "x" for a in SINGLE_VALUED_ATTRIBUTES}, "gender": gender})
            users[-1]["interests"] = [[], ["home"], ["home", "books"], None][i % 4]
    product_ids = [f"p{i:02d}" for i in range(PRODUCTS_N)]
    creatives = []
    for pid, (k, prompt) in itertools.product(product_ids, enumerate(PROMPTS)):
        creatives.append((f"{pid}-c{k}", pid, prompt))
    for pid, group in itertools.product(product_ids, (0, 1)):
        for user in (u for u in users if u["user_id"].startswith(f"u{group}")):
            members.append((pid, user["user_id"], group))
            for k, rate in enumerate(RATES[group]):
                clicks = round(rate * SHOWN)
                impressions += [(pid, user["user_id"], f"{pid}-c{k}", n < clicks) for n in range(SHOWN)]
    frame = pd.DataFrame(impressions, columns=["product_id", "user_id", "creative_id", "clicked"])
    frame = frame.assign(
        event_id=[f"e{i}" for i in range(len(frame))], ts=pd.Timestamp(DS), position=1, source_file="t", ds=DS
    )
    groups = pd.DataFrame(members, columns=["product_id", "user_id", "group_id"])
    groups = groups.assign(distance=0.0, paag_version=VERSION, ds=DS)
    sizes = groups.groupby(["product_id", "group_id"]).size().rename("size").reset_index()
    profiles = sizes.assign(
        k=2,
        silhouette=None,
        centroid=[[0.0]] * len(sizes),
        anchors=None,
        attribute_summary=None,
        description="a group",
        paag_version=VERSION,
        ds=DS,
    )
    return {
        "impressions": frame,
        "user_groups": groups,
        "group_profiles": profiles,
        "users": pd.DataFrame(users).assign(updated_ds=DS),
        "products": pd.DataFrame(
            {"product_id": product_ids, "title": [f"Mug {p}" for p in product_ids], "category": "home"}
        ).assign(price_band=None, image_uri=None, updated_ds=DS),
        "creatives": pd.DataFrame(creatives, columns=["creative_id", "product_id", "prompt"]).assign(
            image_uri=None, origin="logged", updated_ds=DS
        ),
    }


@pytest.fixture(scope="module")
def lakehouse(spark, make_cfg, tmp_path_factory):
    store = tmp_path_factory.mktemp("grm-mlflow")
    cfg = make_cfg(*SETTINGS, f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"mlflow.artifact_root={store}/a")
    world = _world()
    for table in (IMPRESSIONS, USER_GROUPS, GROUP_PROFILES):
        frame = spark.createDataFrame(world[table.name][table.column_names], table.schema())
        tables.overwrite_partition(spark, frame, table, cfg, DS)
    for table in (USERS, PRODUCTS, CREATIVES):
        tables.merge(
            spark, spark.createDataFrame(world[table.name][table.column_names], table.schema()), table, cfg, ds=DS
        )
    tracking.configure(cfg)
    _run(pairs.run, cfg)
    return cfg


def _run(body, cfg, ds: dt.date = DS) -> str:
    printed = io.StringIO()
    with mlflow.start_run(), contextlib.redirect_stdout(printed):
        body(JobContext("stage", cfg, ds, "test"))
    return printed.getvalue()


@pytest.fixture(scope="module")
def first_run(lakehouse) -> str:
    return _run(stages.train_grm, lakehouse)


def test_attribute_profiles_hold_every_value_share(spark, lakehouse) -> None:
    members = tables.read(spark, USER_GROUPS, lakehouse, ds=DS).where("product_id = 'p00'")
    rows = stages.attribute_profiles(members, tables.read(spark, USERS, lakehouse)).toPandas()
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
    assert "osmf-grm v1 val_pair_accuracy" in first_run and "promoted (first version)" in first_run
    assert "train_grm: test products" in first_run and " vs group-agnostic " in first_run

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


def test_a_rerun_of_the_night_reuses_its_version(lakehouse, first_run) -> None:
    again = _run(stages.train_grm, lakehouse)
    assert "osmf-grm version 1 was trained for ds=2026-11-03 on the same data and settings" in again
    assert len(MlflowClient().search_model_versions("name = 'osmf-grm'")) == 1


def test_a_night_without_pairs_is_a_logged_skip_that_keeps_the_champion(spark, lakehouse, first_run) -> None:
    night = DS + dt.timedelta(days=10)  # its window holds no impressions, so no CTRs and no pairs
    for table in (USER_GROUPS, GROUP_PROFILES):
        moved = tables.read(spark, table, lakehouse, ds=DS).withColumn("ds", F.lit(night))
        tables.overwrite_partition(spark, moved, table, lakehouse, night)
    _run(pairs.run, lakehouse, night)
    stale = [tables.Metric("test_pair_accuracy", "group_aware", 0.9)]
    tables.write_metrics(spark, lakehouse, night, "grm", stale, "an earlier run of the night")
    printed = _run(stages.train_grm, lakehouse, night)
    assert "train_grm: skipped for ds=2026-11-13: no training pairs (0 in all)" in printed
    assert "osmf-grm v1 stays champion" in printed
    assert len(MlflowClient().search_model_versions("name = 'osmf-grm'")) == 1
    assert tables.read(spark, EVAL_METRICS, lakehouse, ds=night).where("stage = 'grm'").count() == 0
