"""Bring your own logs, end to end: a mapped ratings log with no images, no creatives and no event
ids goes through ingestion, PAAG, embeddings, grouping and publishing, evaluation skips saying why,
and someone who rates a film after the night is placed in one of its groups."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from osmf_lib import tables
from osmf_lib.config import PROJECT_ROOT, load_config
from osmf_lib.evaluation.stages import evaluate_grouping
from osmf_lib.grouping.stages import group_users
from osmf_lib.ingest.stages import ingest_events
from osmf_lib.job import main
from osmf_lib.paag import stages
from osmf_lib.pairs.stages import build_preference_pairs
from osmf_lib.publish.stages import evaluate_and_publish
from osmf_lib.serving.registry import load_serving
from osmf_lib.tables import (
    ASSIGNED,
    CREATIVES,
    EVAL_METRICS,
    GROUP_PROFILES,
    IMPRESSIONS,
    MEMBER,
    PAAG_EMBEDDINGS,
    PRODUCTS,
    USER_GROUPS,
)

DS = dt.date(2026, 11, 1)
EXAMPLE = PROJECT_ROOT / "conf" / "examples" / "byo-ratings.yaml"
GENRES = ("action", "drama", "comedy")
# Who likes what: the log's signal, so PAAG has something to learn (a rating >= 4 is a click).
LIKES = {("action", "M"): 0.6, ("action", "F"): 0.2, ("drama", "F"): 0.6, ("drama", "M"): 0.2}


def _ship(landing, users=300, movies=24, per_user=16, days=60, seed=3):
    """Two months of ratings history in one landing folder, with user and movie files."""
    rng = np.random.default_rng(seed)
    day = landing / DS.isoformat()
    day.mkdir(parents=True)
    sexes = rng.choice(["F", "M"], users)
    jobs = rng.choice(["student", "engineer", "artist", "retired"], users)
    ages = rng.integers(18, 70, users)
    (day / "users.csv").write_text(
        "uid,age,sex,job\n" + "".join(f"{u},{ages[u]},{sexes[u]},{jobs[u]}\n" for u in range(users))
    )
    genres = [GENRES[m % len(GENRES)] for m in range(movies)]
    (day / "movies.csv").write_text(
        "item,name,genre\n" + "".join(f"m{m},Movie number {m},{genres[m]}\n" for m in range(movies))
    )
    first = int(dt.datetime(DS.year, DS.month, DS.day, tzinfo=dt.UTC).timestamp()) - days * 86_400
    lines = []
    for u in range(users):
        for m in rng.choice(movies, per_user, replace=False):
            liked = rng.random() < LIKES.get((genres[m], sexes[u]), 0.4)
            stars = int(rng.integers(4, 6) if liked else rng.integers(1, 4))
            lines.append(f"{u}\tm{m}\t{stars}\t{first + int(rng.integers(0, days * 86_400))}\n")
    (day / "ratings.tsv").write_text("uid\titem\tstars\twhen\n" + "".join(lines))
    return len(lines)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    store = root / "mlflow"
    overrides = [
        f"lakehouse.root={root / 'lakehouse'}",
        f"lakehouse.landing={root / 'landing'}",
        f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db",
        f"mlflow.artifact_root={store}/artifacts",
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        "spark.show_progress=false",
        "paag.epochs=1",
        f"render.artifacts={root / 'creatives'}",
    ]
    ratings = _ship(root / "landing")

    def stage(name, body):
        args = ["--ds", DS.isoformat(), "--config", str(EXAMPLE)]
        for override in overrides:
            args += ["--set", override]
        main(name, body, args)

    return load_config(EXAMPLE, overrides, environ={}), stage, ratings


def test_a_ratings_log_runs_through_grouping_and_evaluation_says_why_it_skips(spark, night, recorded_result):
    cfg, stage, ratings = night
    stage("ingest_events", ingest_events)
    ingested = recorded_result(cfg, "ingest_events", DS)
    assert ingested.written["impressions"] == ingested.metrics["events_read"] == ratings
    assert tables.read(spark, IMPRESSIONS, cfg, ds=DS).count() == ratings
    assert tables.read(spark, PRODUCTS, cfg).where("image_uri IS NOT NULL").count() == 0
    assert {r["prompt"] for r in tables.read(spark, CREATIVES, cfg).collect()} == {"original product image"}

    stage("train_paag", stages.train_paag)
    stage("build_paag_embeddings", stages.build_paag_embeddings)
    stage("group_users", group_users)
    stage("evaluate_grouping", evaluate_grouping)
    skipped = recorded_result(cfg, "evaluate_grouping", DS).skipped
    assert skipped.startswith("ds=2026-11-01 was not simulated (no landing manifest)")

    assert tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=DS).select("product_id").distinct().count() == 24
    profiles = tables.read(spark, GROUP_PROFILES, cfg, ds=DS).toPandas()
    assert set(profiles["paag_version"]) == {"osmf-paag/1"}
    # The log's taste follows sex for action and drama: groups there split by it.
    action = profiles[profiles["product_id"] == "m0"]
    assert action["k"].iloc[0] >= 2
    assert action["description"].str.contains(r"\b(?:fe)?male\b|\b(?:wo)?men\b").all()
    assert tables.read(spark, EVAL_METRICS, cfg, ds=DS).where("stage = 'grouping'").count() == 0


def test_someone_who_rates_a_film_after_the_night_gets_a_group_and_its_creative(spark, night):
    cfg, stage, _ = night
    stage("build_preference_pairs", build_preference_pairs)
    stage("evaluate_and_publish", evaluate_and_publish)
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    model = load_serving("models:/osmf-serving@champion")
    member = tables.read(spark, USER_GROUPS, cfg, ds=DS).where("product_id = 'm0'").first()
    requests = pd.DataFrame(
        {
            "product_id": ["m0", "m0", "m0"],
            # A rater the log has never seen, with the attributes a users file maps; one without any.
            "user_id": [member["user_id"], "9001", "9002"],
            "gender": [None, "F", None],
            "age_band": [None, "25-34", None],
            "occupation": [None, "engineer", None],
        }
    )
    answered = model.assign(requests)
    assert answered["reason"].tolist() == [MEMBER, ASSIGNED, ASSIGNED]
    assert answered["group_id"].iat[0] == member["group_id"] and answered["group_id"].notna().all()
    # The log has no creatives: each film's group is served its original image.
    assert (answered["creative_id"] == "m0-original").all() and (answered["origin"] == "logged").all()
