"""The build_preference_pairs stage on Spark: the split, the two tables with their lineage, reruns."""

from __future__ import annotations

import datetime as dt
import hashlib

import mlflow
import pandas as pd
import pytest
from pyspark.sql import functions as F

from osmf_lib import tables, tracking
from osmf_lib.inputs import split_of
from osmf_lib.job import JobContext, StageResult
from osmf_lib.pairs.stages import build_preference_pairs
from osmf_lib.tables import (
    CREATIVES,
    EVAL_METRICS,
    GROUP_CREATIVE_CTR,
    GROUP_PREFERENCE_PAIRS,
    GROUP_PROFILES,
    IMPRESSIONS,
    USER_GROUPS,
)

DS = dt.date(2026, 11, 3)
VERSION = "osmf-paag/1"


def test_the_split_is_stable_per_product_and_shares_follow_the_config(spark, make_cfg) -> None:
    cfg = make_cfg("pairs.validation_fraction=0.2", "pairs.test_fraction=0.1")
    products = spark.range(4000).select(F.format_string("p%05d", "id").alias("product_id"))
    rows = products.unionByName(products).repartition(3)  # every product twice, in any order
    split = rows.select("product_id", split_of(F.col("product_id"), cfg).alias("split"))
    per_product = split.groupBy("product_id").agg(F.countDistinct("split").alias("splits"), F.first("split"))
    assert per_product.where("splits != 1").count() == 0
    shares = {r["split"]: r["count"] / 8000 for r in split.groupBy("split").count().collect()}
    assert shares == pytest.approx({"train": 0.7, "validation": 0.2, "test": 0.1}, abs=0.02)
    again = products.repartition(2).select("product_id", split_of(F.col("product_id"), cfg).alias("split"))
    assert sorted(again.collect()) == sorted(split.distinct().collect())
    # The rule is SHA-256, not an engine's hash: anything can reproduce it.
    by_hand = {}
    for product_id in (f"p{i:05d}" for i in range(50)):
        u = int(hashlib.sha256(product_id.encode()).hexdigest()[:8], 16) / 16**8
        by_hand[product_id] = "test" if u < 0.1 else "validation" if u < 0.3 else "train"
    assert {r["product_id"]: r["split"] for r in again.collect() if r["product_id"] in by_hand} == by_hand


# Click-through rates per (product, group, creative) of the stage's little world; every member sees
# every creative of the product 20 times. c4 has impressions but no row in creatives.
RATES = {
    ("p1", 0): {"c1": 0.3, "c2": 0.1, "c3": 0.2, "c4": 0.25},
    ("p1", 1): {"c1": 0.1, "c2": 0.3, "c3": 0.05},
    ("p2", 0): {"d1": 0.2},  # a group with one creative
}
MEMBERS = 20
SHOWN = 20


def _world() -> dict[str, pd.DataFrame]:
    members, impressions = [], []
    for (product, group), rates in RATES.items():
        users = [f"u{group}{i:02d}" for i in range(MEMBERS)]
        members += [{"product_id": product, "user_id": u, "group_id": group} for u in users]
        for creative, rate in rates.items():
            for user in users:
                clicked = [i < round(rate * SHOWN) for i in range(SHOWN)]
                impressions += [(product, user, creative, c, DS) for c in clicked]
    # Outside the look-back window, and from a user in no group: neither counts.
    impressions += [("p1", "u000", "c2", True, DS - dt.timedelta(days=30))] * 50
    impressions += [("p1", "stranger", "c2", True, DS)] * 50
    frame = pd.DataFrame(impressions, columns=["product_id", "user_id", "creative_id", "clicked", "ds"])
    frame = frame.assign(
        event_id=[f"e{i}" for i in range(len(frame))],
        ts=pd.to_datetime(frame["ds"]),
        position=1,
        source_file="test",
    )
    groups = pd.DataFrame(members).assign(distance=0.0, paag_version=VERSION, ds=DS)
    sizes = groups.groupby(["product_id", "group_id"]).size().rename("size").reset_index()
    profiles = sizes.assign(
        k=sizes.groupby("product_id")["group_id"].transform("count"),
        silhouette=None,
        centroid=[[0.0]] * len(sizes),
        anchors=None,
        attribute_summary=None,
        description=[f"group {g} of {p}" for p, g in zip(sizes["product_id"], sizes["group_id"], strict=True)],
        paag_version=VERSION,
        ds=DS,
    )
    creatives = pd.DataFrame(
        [("c1", "p1", "on a beach"), ("c2", "p1", "in a kitchen"), ("c3", "p1", "at night"), ("d1", "p2", "snow")],
        columns=["creative_id", "product_id", "prompt"],
    ).assign(image_uri=None, origin="logged", updated_ds=DS)
    # c2 came back from the closed loop: OSMF generated it, and it is paired as logged ones are.
    creatives.loc[creatives["creative_id"] == "c2", "origin"] = "generated"
    return {"impressions": frame, "user_groups": groups, "group_profiles": profiles, "creatives": creatives}


@pytest.fixture(scope="module")
def lakehouse(spark, make_cfg):
    cfg = make_cfg("pairs.min_impressions=100", "pairs.ratio_max=10", "pairs.min_confidence=0.9")
    world = _world()
    for table in (IMPRESSIONS, USER_GROUPS, GROUP_PROFILES):
        for night, rows in world[table.name].groupby("ds"):
            tables.overwrite_partition(
                spark, spark.createDataFrame(rows[table.column_names], table.schema()), table, cfg, night
            )
    tables.merge(
        spark,
        spark.createDataFrame(world["creatives"][CREATIVES.column_names], CREATIVES.schema()),
        CREATIVES,
        cfg,
        ds=DS,
    )
    tracking.configure(cfg)
    return cfg


def _run(cfg, ds: dt.date = DS) -> StageResult:
    with mlflow.start_run():
        return build_preference_pairs(JobContext("build_preference_pairs", cfg, ds, "test"))


@pytest.fixture(scope="module")
def first_run(lakehouse) -> StageResult:
    return _run(lakehouse)


def _rows(spark, cfg, table: tables.Table, ds: dt.date = DS) -> list[dict]:
    return sorted((r.asDict() for r in tables.read(spark, table, cfg, ds=ds).collect()), key=str)


def test_the_stage_writes_group_ctr_and_pairs_with_lineage(spark, lakehouse, first_run) -> None:
    ctr = _rows(spark, lakehouse, GROUP_CREATIVE_CTR)
    counts = {(r["product_id"], r["group_id"], r["creative_id"]): (r["impressions"], r["clicks"]) for r in ctr}
    assert counts == {
        (p, g, c): (MEMBERS * SHOWN, MEMBERS * round(rate * SHOWN))
        for (p, g), rates in RATES.items()
        for c, rate in rates.items()
    }
    found = _rows(spark, lakehouse, GROUP_PREFERENCE_PAIRS)
    assert {
        (r["product_id"], r["group_id"], r["chosen_creative_id"], r["rejected_creative_id"], r["conflict"])
        for r in found
    } == {
        ("p1", 0, "c1", "c2", True),
        ("p1", 0, "c1", "c3", False),
        ("p1", 0, "c3", "c2", True),
        ("p1", 1, "c2", "c1", True),
        ("p1", 1, "c2", "c3", True),
        ("p1", 1, "c1", "c3", False),
    }
    assert {(r["chosen_creative_id"], r["chosen_prompt"]) for r in found} >= {
        ("c1", "on a beach"),
        ("c2", "in a kitchen"),
    }
    expected_split = spark.range(1).select(split_of(F.lit("p1"), lakehouse).alias("s")).first()["s"]
    assert {r["split"] for r in found} == {expected_split}
    for row in ctr + found:
        assert (row["paag_version"], row["groups_ds"], row["ds"]) == (VERSION, DS, DS)
    assert first_run.written == {GROUP_CREATIVE_CTR.name: 8, GROUP_PREFERENCE_PAIRS.name: 6}
    by_origin = {"logged_over_logged": 2, "logged_over_generated": 2, "generated_over_logged": 2}
    assert first_run.metrics == {
        "groups": 3,
        "conflict_pairs": 4,
        "unknown_creative_cells": 1,
        **{f"pairs.{pair}": by_origin.get(pair, 0) for pair in (*by_origin, "generated_over_generated")},
    }
    recorded = tables.read(spark, EVAL_METRICS, lakehouse, ds=DS).where("stage = 'build_preference_pairs'")
    assert {r["slice"]: r["value"] for r in recorded.collect()} == {**by_origin, "generated_over_generated": 0}

    _run(lakehouse)  # a rerun gives the very same rows
    assert _rows(spark, lakehouse, GROUP_CREATIVE_CTR) == ctr
    assert _rows(spark, lakehouse, GROUP_PREFERENCE_PAIRS) == found


def test_a_night_without_groups_leaves_both_partitions_empty(spark, lakehouse, first_run) -> None:
    night = DS + dt.timedelta(days=1)
    # What an earlier run of that night left behind must go.
    for table in (GROUP_CREATIVE_CTR, GROUP_PREFERENCE_PAIRS):
        stale = tables.read(spark, table, lakehouse, ds=DS).withColumn("ds", F.lit(night))
        tables.overwrite_partition(spark, stale, table, lakehouse, night)
    assert _run(lakehouse, night).written == {GROUP_CREATIVE_CTR.name: 0, GROUP_PREFERENCE_PAIRS.name: 0}
    assert _rows(spark, lakehouse, GROUP_CREATIVE_CTR, night) == []
    assert _rows(spark, lakehouse, GROUP_PREFERENCE_PAIRS, night) == []


def test_a_night_that_fails_midway_leaves_the_night_before_as_it_was_and_its_rerun_completes(
    spark, lakehouse, first_run, monkeypatch, failing_writes
) -> None:
    night = DS + dt.timedelta(days=2)
    for table in (USER_GROUPS, GROUP_PROFILES):  # the next night's groups
        moved = tables.read(spark, table, lakehouse, ds=DS).withColumn("ds", F.lit(night))
        tables.overwrite_partition(spark, moved, table, lakehouse, night)
    both = (GROUP_CREATIVE_CTR, GROUP_PREFERENCE_PAIRS)
    before = {table.name: _rows(spark, lakehouse, table) for table in both}
    failing_writes(GROUP_PREFERENCE_PAIRS, "lost the executor")
    with pytest.raises(RuntimeError, match="lost the executor"):
        _run(lakehouse, night)
    monkeypatch.undo()
    assert {table.name: _rows(spark, lakehouse, table) for table in both} == before
    _run(lakehouse, night)
    assert {table.name: _rows(spark, lakehouse, table) for table in both} == before
    cells = {(r["product_id"], r["group_id"]) for r in _rows(spark, lakehouse, GROUP_CREATIVE_CTR, night)}
    paired = {(r["product_id"], r["group_id"]) for r in _rows(spark, lakehouse, GROUP_PREFERENCE_PAIRS, night)}
    assert paired and paired <= cells
    assert {r["groups_ds"] for r in _rows(spark, lakehouse, GROUP_PREFERENCE_PAIRS, night)} == {night}
