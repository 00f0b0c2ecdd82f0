"""Group-wise CTR and preference pairs: the prior, intervals, P(A > B), the filters, the split and the stage."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from scipy import stats

from osmf_lib import pairs, tables, tracking
from osmf_lib.config import PairsConfig
from osmf_lib.job import JobContext
from osmf_lib.tables import (
    CREATIVES,
    GROUP_CREATIVE_CTR,
    GROUP_PREFERENCE_PAIRS,
    GROUP_PROFILES,
    IMPRESSIONS,
    USER_GROUPS,
)

DS = dt.date(2026, 11, 3)
VERSION = "osmf-paag/1"
# Every pair the filters would take, so a test moves one filter at a time.
OPEN = PairsConfig(min_impressions=1, ratio_min=1.0001, ratio_max=100.0, min_confidence=0.0001)


# ---------------------------------------------------------------------------------------------
# The prior, the interval and P(A > B)


def test_the_prior_recovers_a_known_beta_by_moments() -> None:
    rng = np.random.default_rng(3)
    impressions = rng.integers(300, 3000, size=600)
    clicks = rng.binomial(impressions, rng.beta(8.0, 192.0, size=600))
    prior = pairs.fit_prior(impressions, clicks)
    assert prior.alpha / (prior.alpha + prior.beta) == pytest.approx(0.04, rel=0.05)
    assert prior.alpha + prior.beta == pytest.approx(200.0, rel=0.3)


@pytest.mark.parametrize(
    ("impressions", "clicks"),
    [
        ([100], [5]),  # one cell
        ([100, 100, 100], [5, 5, 5]),  # no spread beyond binomial noise
        ([100, 50], [0, 0]),  # no clicks
        ([3, 4], [3, 4]),  # only clicks
        ([1, 1, 1], [0, 1, 0]),  # one impression per cell: the spread says nothing about the prior
    ],
)
def test_degenerate_cells_get_a_weak_prior_at_the_pooled_ctr(impressions: list[int], clicks: list[int]) -> None:
    prior = pairs.fit_prior(impressions, clicks)
    assert prior.alpha + prior.beta == pytest.approx(pairs.WEAK_PRIOR_STRENGTH)
    assert prior.alpha / (prior.alpha + prior.beta) == pytest.approx((sum(clicks) + 1) / (sum(impressions) + 2))


def _cells(counts: dict[tuple[int, str], tuple[int, int]], product_id: str = "p1") -> pd.DataFrame:
    """group_creative_ctr-like rows of one product from {(group, creative): (impressions, clicks)}."""
    return pd.DataFrame(
        [
            {
                "product_id": product_id,
                "group_id": group,
                "paag_version": VERSION,
                "groups_ds": DS,
                "creative_id": creative,
                "impressions": n,
                "clicks": k,
            }
            for (group, creative), (n, k) in counts.items()
        ]
    )


def test_the_posterior_mean_and_interval_follow_the_product_prior() -> None:
    cells = _cells({(0, "a"): (40, 4), (0, "b"): (400, 12), (1, "a"): (4000, 200), (1, "b"): (90, 9)})
    prior = pairs.fit_prior(cells["impressions"], cells["clicks"])
    smoothed = pairs.smooth_product(cells.sample(frac=1.0, random_state=1))
    assert list(smoothed.columns) == [c for c in GROUP_CREATIVE_CTR.column_names if c != "ds"]
    smoothed = smoothed.set_index(["group_id", "creative_id"])
    for (group, creative), (n, k) in {(0, "a"): (40, 4), (1, "a"): (4000, 200)}.items():
        row = smoothed.loc[(group, creative)]
        posterior = stats.beta(prior.alpha + k, prior.beta + n - k)
        assert (row["prior_alpha"], row["prior_beta"]) == pytest.approx(prior)
        assert row["ctr"] == pytest.approx(k / n)
        assert row["ctr_smoothed"] == pytest.approx(posterior.mean())
        assert (row["ctr_low"], row["ctr_high"]) == pytest.approx(posterior.interval(0.90))
        assert row["ctr_low"] < row["ctr_smoothed"] < row["ctr_high"]
    width = smoothed["ctr_high"] - smoothed["ctr_low"]
    assert width[(1, "a")] < width[(0, "a")]  # more impressions, a narrower interval


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((30.0, 170.0), (20.0, 180.0)),
        ((5.5, 100.0), (3.2, 40.0)),
        ((400.0, 9600.0), (4.0, 90.0)),  # a narrow posterior against a wide one
        ((4.0, 90.0), (400.0, 9600.0)),
        ((12.0, 300.0), (12.0, 300.0)),  # the same posterior: one half
        ((0.3, 5.0), (0.6, 2.0)),  # below one: densities that are infinite at 0
    ],
)
def test_confidence_agrees_with_monte_carlo(a: tuple[float, float], b: tuple[float, float]) -> None:
    rng = np.random.default_rng(7)
    draws = 1_000_000
    sampled = float(np.mean(rng.beta(*a, size=draws) > rng.beta(*b, size=draws)))
    computed = pairs.prob_greater(*([x] for x in (*a, *b)))[0]
    # Quadrature is within 0.001; a million draws within about 0.0025 at 5 standard errors.
    assert computed == pytest.approx(sampled, abs=0.0035)
    assert pairs.prob_greater(*([x] for x in (*a, *b))) == pytest.approx([computed])  # deterministic


# ---------------------------------------------------------------------------------------------
# Pairs


def _smoothed(counts: dict[tuple[int, str], tuple[int, int]], prior: tuple[float, float] = (1.0, 19.0)) -> pd.DataFrame:
    """CTR rows under a fixed prior, so a test states the posteriors it filters."""
    cells = _cells(counts)
    alpha, beta = prior[0] + cells["clicks"], prior[1] + cells["impressions"] - cells["clicks"]
    return cells.assign(prior_alpha=prior[0], prior_beta=prior[1], ctr_smoothed=alpha / (alpha + beta))


def _found(ctr: pd.DataFrame, cfg: PairsConfig) -> set[tuple[int, str, str]]:
    found = pairs.product_pairs(ctr, cfg)
    assert list(found.columns) == pairs.PAIR_COLUMNS
    return set(zip(found["group_id"], found["chosen_creative_id"], found["rejected_creative_id"], strict=True))


def test_pairs_are_oriented_and_every_filter_applies() -> None:
    ctr = _smoothed({(0, "a"): (2000, 230), (0, "b"): (2000, 200), (0, "c"): (2000, 100), (0, "few"): (30, 8)})
    # Posterior means 0.114, 0.099, 0.050 and 0.180: a/b is 1.15, few/a 1.57, every other ratio above 1.8.
    everything = {(0, "a", "b"), (0, "a", "c"), (0, "b", "c"), (0, "few", "a"), (0, "few", "b"), (0, "few", "c")}
    assert _found(ctr, OPEN) == everything
    assert _found(ctr, OPEN.model_copy(update={"min_impressions": 31})) == {(0, "a", "b"), (0, "a", "c"), (0, "b", "c")}
    assert _found(ctr, OPEN.model_copy(update={"ratio_min": 1.05, "ratio_max": 1.2})) == {(0, "a", "b")}
    assert _found(ctr, OPEN.model_copy(update={"ratio_min": 1.5})) == everything - {(0, "a", "b")}
    # 30 impressions make few's larger ratio over a less sure than a's small one over b.
    assert _found(ctr, OPEN.model_copy(update={"min_confidence": 0.9})) == everything - {(0, "few", "a")}
    confidence = pairs.product_pairs(ctr, OPEN).set_index(["chosen_creative_id", "rejected_creative_id"])["confidence"]
    assert confidence[("few", "a")] < 0.9 < confidence[("a", "b")] < confidence[("few", "c")] < confidence[("a", "c")]


def test_a_group_with_one_creative_or_no_difference_yields_no_pairs() -> None:
    assert _found(_smoothed({(0, "a"): (500, 50)}), OPEN) == set()
    assert _found(_smoothed({(0, "a"): (500, 50), (0, "b"): (500, 50)}), OPEN) == set()


def test_a_pair_that_flips_between_groups_is_kept_in_both_as_a_conflict() -> None:
    ctr = _smoothed(
        {
            (0, "a"): (2000, 300),
            (0, "b"): (2000, 150),
            (0, "c"): (2000, 60),
            (1, "a"): (2000, 150),
            (1, "b"): (2000, 300),
            (1, "c"): (2000, 60),
            (2, "a"): (2000, 300),
            (2, "b"): (2000, 100),
        }
    )
    found = pairs.product_pairs(ctr, OPEN)
    flags = {
        (g, c, r): f
        for g, c, r, f in zip(
            found["group_id"],
            found["chosen_creative_id"],
            found["rejected_creative_id"],
            found["conflict"],
            strict=True,
        )
    }
    assert flags == {
        (0, "a", "b"): True,
        (0, "a", "c"): False,
        (0, "b", "c"): False,
        (1, "b", "a"): True,
        (1, "a", "c"): False,
        (1, "b", "c"): False,
        (2, "a", "b"): True,
    }


# ---------------------------------------------------------------------------------------------
# Spark: the split and the stage


def test_the_split_is_stable_per_product_and_shares_follow_the_config(spark, make_cfg) -> None:
    cfg = make_cfg("pairs.validation_fraction=0.2", "pairs.test_fraction=0.1")
    products = spark.range(4000).select(F.format_string("p%05d", "id").alias("product_id"))
    rows = products.unionByName(products).repartition(3)  # every product twice, in any order
    split = rows.select("product_id", pairs.split_of(F.col("product_id"), cfg).alias("split"))
    per_product = split.groupBy("product_id").agg(F.countDistinct("split").alias("splits"), F.first("split"))
    assert per_product.where("splits != 1").count() == 0
    shares = {r["split"]: r["count"] / 8000 for r in split.groupBy("split").count().collect()}
    assert shares == pytest.approx({"train": 0.7, "validation": 0.2, "test": 0.1}, abs=0.02)
    again = products.repartition(2).select("product_id", pairs.split_of(F.col("product_id"), cfg).alias("split"))
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


def _run(cfg, ds: dt.date = DS) -> str:
    printed = io.StringIO()
    with mlflow.start_run(), contextlib.redirect_stdout(printed):
        pairs.run(JobContext("build_preference_pairs", cfg, ds, "test"))
    return printed.getvalue()


@pytest.fixture(scope="module")
def first_run(lakehouse) -> str:
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
    expected_split = spark.range(1).select(pairs.split_of(F.lit("p1"), lakehouse).alias("s")).first()["s"]
    assert {r["split"] for r in found} == {expected_split}
    for row in ctr + found:
        assert (row["paag_version"], row["groups_ds"], row["ds"]) == (VERSION, DS, DS)
    assert "8 (group, creative) cells over 3 groups, 6 pairs (4 conflict;" in first_run
    assert "1 cells of creatives missing from creatives have no pairs" in first_run

    _run(lakehouse)  # a rerun gives the very same rows
    assert _rows(spark, lakehouse, GROUP_CREATIVE_CTR) == ctr
    assert _rows(spark, lakehouse, GROUP_PREFERENCE_PAIRS) == found


def test_a_night_without_groups_leaves_both_partitions_empty(spark, lakehouse, first_run) -> None:
    night = DS + dt.timedelta(days=1)
    # What an earlier run of that night left behind must go.
    for table in (GROUP_CREATIVE_CTR, GROUP_PREFERENCE_PAIRS):
        stale = tables.read(spark, table, lakehouse, ds=DS).withColumn("ds", F.lit(night))
        tables.overwrite_partition(spark, stale, table, lakehouse, night)
    assert "no groups for ds=2026-11-04" in _run(lakehouse, night)
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
