"""The PAAG stages, grouping and its evaluation, run as the DAG runs them, on the tiny world."""

import datetime as dt

import mlflow
import pytest
from mlflow import MlflowClient

from osmf_lib import promotion, tables
from osmf_lib.evaluation.stages import evaluate_grouping
from osmf_lib.grouping.stages import group_users
from osmf_lib.ingest.stages import ingest_day
from osmf_lib.inputs import window
from osmf_lib.job import main
from osmf_lib.night import DIMENSIONS
from osmf_lib.paag import stages
from osmf_lib.paag.audience import audience
from osmf_lib.synth import write_landing
from osmf_lib.tables import (
    EVAL_METRICS,
    GROUP_PROFILES,
    IMPRESSIONS,
    PAAG_EMBEDDINGS,
    PRODUCTS,
    USER_GROUPS,
    USERS,
)

D1, D2, D3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)
FAST = ["paag.max_train_rows=20000", "paag.epochs=1", "evaluate.max_products=6", "grouping.silhouette_sample=500"]


@pytest.fixture(scope="module")
def night(make_cfg, tmp_path_factory):
    """Two ingested tiny days, then the night's PAAG, embedding, grouping and evaluation stages for D2."""
    store = tmp_path_factory.mktemp("paag-mlflow")
    overrides = [*FAST, f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"mlflow.artifact_root={store}/artifacts"]
    cfg = make_cfg(*overrides)
    write_landing(cfg, scale="tiny", start=D1, days=3)
    from osmf_lib.spark import get_spark

    spark = get_spark(cfg)
    for ds in (D1, D2):
        ingest_day(spark, cfg, ds)

    def stage(name, body, ds=D2):
        args = ["--ds", ds.isoformat(), "--set", f"lakehouse.root={cfg.lakehouse.root}"]
        for override in overrides:
            args += ["--set", override]
        main(name, body, args)

    return cfg, spark, stage


def test_embedding_before_any_training_fails_clearly(night, capsys):
    _, _, stage = night
    with pytest.raises(SystemExit) as exit_:
        stage("build_paag_embeddings", stages.build_paag_embeddings)
    assert exit_.value.code == 1
    assert (
        "osmf-paag has no champion for ds=2026-11-02: run train_paag for ds=2026-11-02 first" in capsys.readouterr().err
    )


def test_training_pulls_only_the_products_and_creatives_its_window_names(night):
    """The driver holds what the night's impressions name, not the whole catalogue."""
    cfg, spark, _ = night
    one = tables.read(spark, IMPRESSIONS, cfg, ds=D2).orderBy("event_id").limit(1)
    product, creative = one.first()["product_id"], one.first()["creative_id"]
    dimensions = {t.name: tables.version_as_of(spark, t, cfg, D2) for t in DIMENSIONS}
    products, creatives = stages.training_catalogue(spark, cfg, one, dimensions)
    assert tables.read(spark, PRODUCTS, cfg, as_of=D2).count() > 1
    assert products["product_id"].tolist() == [product]
    assert creatives["creative_id"].tolist() == [creative]


@pytest.fixture(scope="module")
def grouped(night):
    cfg, spark, stage = night
    stage("train_paag", stages.train_paag)
    stage("build_paag_embeddings", stages.build_paag_embeddings)
    stage("group_users", group_users)
    stage("evaluate_grouping", evaluate_grouping)
    return cfg, spark, stage


def test_training_registers_a_champion_with_lineage(grouped):
    cfg, _, _ = grouped
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    client = MlflowClient()
    (version,) = client.search_model_versions("name = 'osmf-paag'")
    assert client.get_model_version_by_alias("osmf-paag", "champion").version == version.version
    assert version.tags[promotion.TAG_TRAINED_FOR] == version.tags[promotion.TAG_CHAMPION_FROM] == D2.isoformat()
    assert "promoted (first version)" in version.tags[promotion.TAG_DECISION]
    run = client.get_run(version.run_id)
    assert run.data.metrics["paag.val_auroc"] > 0.5
    assert {i.dataset.name.split("@")[0] for i in run.inputs.dataset_inputs} >= {"impressions", "users", "products"}


def test_every_audience_pair_is_embedded(grouped):
    cfg, spark, _ = grouped
    seen = window(tables.read(spark, IMPRESSIONS, cfg), D2, cfg.paag.lookback_days)
    expected = audience(seen).count()
    embedded = tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=D2)
    assert embedded.count() == expected
    row = embedded.first()
    assert len(row["embedding"]) == cfg.paag.embedding_dim and row["paag_version"] == "osmf-paag/1"


def test_groups_cover_each_audience(grouped):
    cfg, spark, _ = grouped
    profiles = tables.read(spark, GROUP_PROFILES, cfg, ds=D2).toPandas()
    members = tables.read(spark, USER_GROUPS, cfg, ds=D2).toPandas()
    audience = tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=D2).groupBy("product_id").count().toPandas()
    sizes = profiles.groupby("product_id")["size"].sum()
    assert sizes.to_dict() == audience.set_index("product_id")["count"].to_dict()
    assert profiles["k"].between(1, cfg.grouping.k_max).all()
    groups_per_product = members.groupby("product_id")["group_id"].max() + 1
    assert groups_per_product.to_dict() == profiles.groupby("product_id")["k"].first().to_dict()
    assert profiles["description"].str.len().gt(0).all()


def test_evaluation_is_recorded(grouped):
    cfg, spark, _ = grouped
    metrics = {(r["metric"], r["slice"]): r["value"] for r in tables.read(spark, EVAL_METRICS, cfg, ds=D2).collect()}
    assert {("ari", "product_aware"), ("ari", "product_agnostic"), ("products", "all")} <= set(metrics)
    assert {s for m, s in metrics if m == "ndcg_at_5"} == {f"k={k}" for k in range(1, 6)}
    assert all(0.0 <= metrics[("ndcg_at_5", f"k={k}")] <= 1.0 for k in range(1, 6))
    assert -1.0 <= metrics[("ari", "product_aware")] <= 1.0
    by_category = {s.split("/")[0] for m, s in metrics if m == "ari" and "/" in s}
    assert by_category == {"product_aware", "product_agnostic"}


def _snapshot(spark, cfg, ds):
    return [
        sorted(tuple(map(str, r)) for r in tables.read(spark, t, cfg, ds=ds).collect())
        for t in (PAAG_EMBEDDINGS, USER_GROUPS, GROUP_PROFILES)
    ]


NIGHT = (
    ("train_paag", stages.train_paag),
    ("build_paag_embeddings", stages.build_paag_embeddings),
    ("group_users", group_users),
)


def test_rerunning_the_night_gives_the_same_tables(grouped):
    cfg, spark, stage = grouped
    before = _snapshot(spark, cfg, D2)
    # The whole night again, as a retry or a backfill runs it: ingestion first, which commits new
    # versions of the dimension tables holding the same rows.
    ingest_day(spark, cfg, D2)
    for name, body in NIGHT:  # train_paag reuses the version trained for this night
        stage(name, body)
    assert _snapshot(spark, cfg, D2) == before
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    assert len(MlflowClient().search_model_versions("name = 'osmf-paag'")) == 1


def test_a_night_without_impressions_embeds_nothing(grouped, recorded_result):
    cfg, spark, stage = grouped
    quiet = D2 + dt.timedelta(days=cfg.paag.lookback_days + 1)
    stage("build_paag_embeddings", stages.build_paag_embeddings, ds=quiet)
    stage("group_users", group_users, ds=quiet)
    assert recorded_result(cfg, "build_paag_embeddings", quiet).written == {"paag_embeddings": 0}
    assert recorded_result(cfg, "group_users", quiet).skipped == f"no embeddings for ds={quiet}; nothing to group"
    assert tables.read(spark, USER_GROUPS, cfg, ds=quiet).count() == 0


def test_a_backfill_after_a_later_night_sees_no_later_data(grouped):
    """D3 brings new users, changed attributes and a new model; rerunning D2 afterwards changes nothing."""
    cfg, spark, stage = grouped
    before = _snapshot(spark, cfg, D2)
    ingest_day(spark, cfg, D3)
    for name, body in NIGHT:
        stage(name, body, ds=D3)
        if name == "train_paag":
            # Whatever it scored, D3's model becomes D3's champion: the backfill must not pick it up.
            MlflowClient().set_model_version_tag("osmf-paag", "2", promotion.TAG_CHAMPION_FROM, D3.isoformat())
    assert tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=D3).first()["paag_version"] == "osmf-paag/2"
    for name, body in NIGHT:
        stage(name, body, ds=D2)
    assert _snapshot(spark, cfg, D2) == before
    assert tables.read(spark, USERS, cfg).count() > tables.read(spark, USERS, cfg, as_of=D2).count()
