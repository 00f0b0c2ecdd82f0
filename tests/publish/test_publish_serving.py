"""The night's osmf-serving on the tiny world, as the DAG and the closed loop run it: published by
evaluate_and_publish, placing the night's members in their own groups by attributes alone,
answering the next day's traffic in bulk (`osmf synth serve`), whose coverage ingestion records."""

from __future__ import annotations

import datetime as dt

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from osmf_lib import tables
from osmf_lib.cli import app
from osmf_lib.evaluation.gmllm import STAGE as GMLLM_ORACLE
from osmf_lib.evaluation.nights import DPO_VARIANTS, night_table
from osmf_lib.grouping.stages import group_users
from osmf_lib.ingest.stages import ingest_events
from osmf_lib.job import main
from osmf_lib.paag import stages
from osmf_lib.pairs.stages import build_preference_pairs
from osmf_lib.publish.stages import evaluate_and_publish
from osmf_lib.serving.registry import MODEL_NAME, load_serving
from osmf_lib.synth import build_world, day_requests, write_landing
from osmf_lib.tables import ASSIGNED, EVAL_METRICS, IMPRESSIONS, MEMBER, SERVING_ASSIGNMENTS, USER_GROUPS, Metric

D1, D2, D3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)
FAST = ["paag.max_train_rows=20000", "paag.epochs=1", "evaluate.max_products=6", "grouping.silhouette_sample=500"]


@pytest.fixture(scope="module")
def night(make_cfg, tmp_path_factory):
    """Two ingested tiny days and D2's night up to publishing (no rendering: every group is served
    its best logged creative)."""
    store = tmp_path_factory.mktemp("serving-mlflow")
    overrides = [
        *FAST,
        f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db",
        f"mlflow.artifact_root={store}/artifacts",
        f"render.artifacts={tmp_path_factory.mktemp('creatives')}",
    ]
    cfg = make_cfg(*overrides)
    write_landing(cfg, scale="tiny", start=D1, days=3)
    from osmf_lib.spark import get_spark

    spark = get_spark(cfg)

    def stage(name, body, ds=D2):
        args = ["--ds", ds.isoformat()]
        for override in (
            f"lakehouse.root={cfg.lakehouse.root}",
            f"lakehouse.landing={cfg.lakehouse.landing}",
            *overrides,
        ):
            args += ["--set", override]
        main(name, body, args)

    stage("ingest_events", ingest_events, ds=D1)
    stage("ingest_events", ingest_events)
    for name, body in (
        ("train_paag", stages.train_paag),
        ("build_paag_embeddings", stages.build_paag_embeddings),
        ("group_users", group_users),
        ("build_preference_pairs", build_preference_pairs),
        ("evaluate_and_publish", evaluate_and_publish),
    ):
        stage(name, body)
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    return cfg, spark, stage


def _metrics(spark, cfg, ds, stage) -> pd.Series:
    rows = tables.read(spark, EVAL_METRICS, cfg, ds=ds).where(f"stage = '{stage}'").toPandas()
    return rows.set_index(["metric", "slice"])["value"]


def test_members_placed_by_their_attributes_alone_get_their_own_group(night):
    cfg, spark, _ = night
    placed = _metrics(spark, cfg, D2, "serving")
    assert placed["member_agreement_rows", "sample"] > 1000
    assert placed["member_agreement", "sample"] == 1.0


def test_the_served_model_answers_every_member_by_id_as_user_groups_does(night):
    cfg, spark, _ = night
    model = load_serving(f"models:/{MODEL_NAME}@champion")
    members = tables.read(spark, USER_GROUPS, cfg, ds=D2).select("product_id", "user_id", "group_id").toPandas()
    answered = model.assign(members[["product_id", "user_id"]])
    assert (answered["reason"] == MEMBER).all()
    assert answered["group_id"].tolist() == members["group_id"].tolist()
    assert answered["paag_version"].unique().tolist() == ["osmf-paag/1"]


def test_the_next_days_audience_is_graded_for_members_and_newcomers(night):
    cfg, spark, _ = night
    graded = _metrics(spark, cfg, D2, "publish_oracle")
    for audience in ("", ".members", ".newcomers"):
        assert graded["impressions", f"test{audience}"] > 0
        assert graded["oracle_ctr", f"served{audience}"] > 0
        # Nothing was rendered: every group is served its best logged creative, its only candidate.
        assert graded["lift_vs_best_logged", f"served{audience}"] == pytest.approx(0.0)
        for row in ("selected", "best_candidate", "best_original"):
            assert graded["oracle_ctr", f"{row}{audience}"] == pytest.approx(graded["oracle_ctr", f"served{audience}"])
    assert (
        graded["impressions", "test"] == graded["impressions", "test.members"] + graded["impressions", "test.newcomers"]
    )


def _settings(cfg) -> list[str]:
    """The osmf CLI's options that point it at this test's lakehouse and registry."""
    settings = [f"lakehouse.root={cfg.lakehouse.root}", f"lakehouse.landing={cfg.lakehouse.landing}"]
    return [arg for value in (*settings, f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}") for arg in ("--set", value)]


@pytest.fixture(scope="module")
def served_day(night):
    """`osmf synth serve` for D2, then D3 ingested, as `make demo` closes the loop."""
    cfg, _, stage = night
    shown = CliRunner().invoke(app, [*_settings(cfg), "synth", "serve", "--ds", D2.isoformat()])
    assert shown.exit_code == 0, shown.output
    stage("ingest_events", ingest_events, ds=D3)
    return shown.output


def test_the_next_days_requests_are_all_answered_in_bulk(night, served_day):
    cfg, spark, _ = night
    answered = tables.read(spark, SERVING_ASSIGNMENTS, cfg, ds=D3).toPandas()
    world = build_world(cfg.synth.seed, "tiny")
    requests = day_requests(world, D1, D3).drop_duplicates(["product_id", "user_id"])
    assert len(answered) == len(requests)
    assert set(answered["reason"]) <= {MEMBER, ASSIGNED, "fallback", "unknown product"}
    assert {MEMBER, ASSIGNED} <= set(answered["reason"]) and (answered["groups_ds"] == D2).all()
    # In bulk as in process: the same function answers both.
    sample = requests.sample(300, random_state=0).reset_index(drop=True)
    in_process = load_serving(f"models:/{MODEL_NAME}@champion").assign(sample)
    keys = pd.MultiIndex.from_frame(sample[["product_id", "user_id"]])
    bulk = answered.set_index(["product_id", "user_id"]).loc[keys]
    assert bulk["group_id"].astype("Int64").tolist() == in_process["group_id"].astype("Int64").tolist()
    assert bulk["creative_id"].tolist() == in_process["creative_id"].tolist()
    assert f"requests of {D3}" in served_day


def test_ingesting_the_served_day_records_its_coverage(night, served_day):
    cfg, spark, _ = night
    covered = _metrics(spark, cfg, D3, "serving_coverage")
    assert covered["impressions", "all"] == tables.read(spark, IMPRESSIONS, cfg, ds=D3).count()
    assert covered["coverage", "creative"] >= 0.99
    assert covered["coverage", "generated"] == 0.0  # nothing was rendered
    shares = [covered["reason_share", r] for r in (MEMBER, ASSIGNED, "fallback", "unknown product")]
    assert sum(shares) == pytest.approx(1.0, abs=0.02) and covered["reason_share", ASSIGNED] > 0


def test_a_rerun_of_publishing_serves_with_the_same_version(night):
    _, _, stage = night
    before = MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")
    stage("evaluate_and_publish", evaluate_and_publish)
    assert len(MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")) == len(before) == 1


def test_osmf_nights_tells_each_night_what_it_served_and_with_which_models(night, served_day):
    cfg, spark, _ = night
    table = night_table(spark, cfg).set_index("night")
    assert table.index.tolist() == [D2.isoformat()]
    row = table.loc[D2.isoformat()]
    # Nothing was rendered: the best logged creatives are served, and none of the ceiling's headroom.
    assert row["ceiling"] > row["served"] > 0 and row["served"] == pytest.approx(row["best logged"])
    assert row["best original"] == pytest.approx(row["best logged"])
    assert row[["headroom", "best-only", "candidates", "over best logged"]].tolist() == pytest.approx([0.0] * 4)
    assert (row["generated"], row["explored"]) == (0.0, 0.0)
    assert np.isnan(row["A/B served"]) and row["generated pairs"] == 0
    assert (row["paag"], row["serving"], row["grm"], row["gmllm"]) == ("1*", "1*", "", "")
    # Without a G-MLLM the night graded no DPO variant; once graded, each variant shows its own.
    assert row[list(DPO_VARIANTS)].isna().all() and row["variant"] == ""
    graded = [Metric("oracle_ctr", n, v) for n, v in zip(DPO_VARIANTS, (0.1, 0.2, 0.3), strict=True)]
    tables.write_metrics(spark, cfg, D2, GMLLM_ORACLE, [*graded, Metric("headroom_captured", "group_dpo", 0.5)], "run")
    row = night_table(spark, cfg).set_index("night").loc[D2.isoformat()]
    assert row[list(DPO_VARIANTS)].tolist() == pytest.approx([0.1, 0.2, 0.3])
    printed = CliRunner().invoke(app, [*_settings(cfg), "nights"])
    assert printed.exit_code == 0, printed.output
    assert D2.isoformat() in printed.output and "headroom" in printed.output
