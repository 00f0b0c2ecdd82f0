"""Adaptive product-aware grouping: K selection, merging, anchors, summaries, and the Spark pass."""

from __future__ import annotations

import datetime as dt

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from osmf_lib import tables, tracking
from osmf_lib.config import GroupingConfig
from osmf_lib.grouping.clustering import (
    GroupingError,
    cluster_embeddings,
    merge_small_groups,
    nearest_centroids,
    settle_groups,
)
from osmf_lib.grouping.groups import group_audiences, group_product
from osmf_lib.grouping.profiles import anchor_counts, anchor_rows, attribute_summaries, describe
from osmf_lib.grouping.stages import group_users
from osmf_lib.inputs import check_groups
from osmf_lib.job import JobContext, StageError, worker_error
from osmf_lib.tables import GROUP_PROFILES, PAAG_EMBEDDINGS, USER_GROUPS, USERS

DS = dt.date(2026, 11, 1)
CFG = GroupingConfig()


def blobs(sizes: list[int], dim: int = 8, spread: float = 12.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs of the given sizes -> (matrix, planted labels)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(sizes), dim)) * spread
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return centers[labels] + rng.normal(size=(len(labels), dim)), labels


def audience(matrix: np.ndarray, product_id: str = "p1", **attributes: list) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "product_id": product_id,
            "user_id": [f"u{i:05d}" for i in range(len(matrix))],
            "embedding": list(matrix.astype(np.float32)),
        }
    )
    return frame.assign(**attributes)


@pytest.mark.parametrize("planted", [3, 5])
def test_k_selection_finds_the_planted_clusters(planted: int) -> None:
    matrix, truth = blobs([80] * planted, seed=planted)
    found = cluster_embeddings(matrix, CFG)
    assert found.k == planted
    assert adjusted_rand_score(truth, found.labels) == 1.0
    assert found.silhouette is not None and found.silhouette > 0.7


def test_forced_k_skips_the_search() -> None:
    matrix, _ = blobs([80, 80, 80])
    assert cluster_embeddings(matrix, CFG, k=2).k == 2
    one = cluster_embeddings(matrix, CFG, k=1)
    assert (one.k, one.silhouette, set(one.labels)) == (1, None, {0})
    np.testing.assert_allclose(one.centroids, matrix.mean(axis=0, keepdims=True))


def test_small_groups_are_merged_into_the_nearest_and_numbered_by_size() -> None:
    matrix, truth = blobs([60, 120, 90], seed=1)
    # A small satellite right next to the 60-blob: K=4 finds it, merging must fold it back in.
    satellite = matrix[truth == 0].mean(axis=0) + 3.0 + np.random.default_rng(2).normal(size=(12, matrix.shape[1]))
    matrix = np.vstack([matrix, satellite])
    found = cluster_embeddings(matrix, CFG, k=4)
    sizes = np.bincount(found.labels)
    assert found.k == 3 and sizes.tolist() == [120, 90, 72]
    assert sizes.sum() == len(matrix)
    assert set(found.labels[-12:]) == set(found.labels[:60]) == {2}
    np.testing.assert_allclose(found.centroids[2], matrix[found.labels == 2].mean(axis=0))


def test_merge_renumbers_by_size_with_a_stable_tie_break() -> None:
    matrix = np.array([[0.0], [0.1], [5.0], [5.1], [5.2], [9.0], [9.1], [20.0]])
    labels, centroids = merge_small_groups(matrix, np.array([7, 7, 3, 3, 3, 1, 1, 0]), min_size=2)
    # The lone point at 20 joins the group at 9; then groups of 2, 3 and 3 are ordered by size,
    # the two 3s by their first member.
    assert labels.tolist() == [2, 2, 0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(centroids[:, 0], [5.1, 38.1 / 3, 0.05])


def test_settling_a_merge_gives_every_member_its_nearest_centroid() -> None:
    rng = np.random.default_rng(4)
    # Two large groups at 0 and 10 and a small one spread over 4..6 whose centroid is nearer 0:
    # merging folds all of it into the group at 0, though its members above 5 are nearer 10.
    matrix = np.concatenate([rng.normal(0, 0.5, 60), rng.normal(10, 0.5, 60), np.linspace(4.0, 6.0, 10)])[:, None]
    planted = np.repeat([0, 1, 2], [60, 60, 10])
    merged, centroids = merge_small_groups(matrix, planted, min_size=30)
    assert (nearest_centroids(matrix, centroids)[0] != merged).sum() > 0

    settled, centroids = settle_groups(matrix, planted, min_size=30)
    nearest, distances = nearest_centroids(matrix, centroids)
    np.testing.assert_array_equal(nearest, settled)
    np.testing.assert_allclose(centroids[settled[0]], matrix[settled == settled[0]].mean(axis=0))
    np.testing.assert_allclose(distances, np.abs(matrix[:, 0] - centroids[settled, 0]), atol=1e-6)
    assert (matrix[settled == settled[-1], 0] > 5).all() and (matrix[settled == settled[0], 0] < 5).all()


@pytest.mark.parametrize("seed", range(6))
def test_every_member_is_nearest_to_its_own_stored_centroid(seed: int) -> None:
    """What serving relies on: nearest-centroid over the stored (float32) centroids gives each
    member the group grouping put it in, whatever K-Means and merging did before."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(400, 6)) * rng.uniform(0.5, 3.0, size=6)
    # K forced to 5 with a large minimum group: some products merge (seeds 0 and 4 did, leaving 27
    # and 21 members nearer another centroid before settling), others do not.
    cfg = GroupingConfig(min_group_size=60, k_min=5, k_max=5)
    assignments, profiles = group_product(audience(matrix), cfg)
    stored = np.array(profiles.sort_values("group_id")["centroid"].tolist(), dtype=np.float32)
    # group_product clusters the embeddings as stored (float32); user ids keep the rows' order.
    nearest, distances = nearest_centroids(matrix.astype(np.float32).astype(np.float64), stored)
    np.testing.assert_array_equal(nearest, assignments["group_id"].to_numpy())
    np.testing.assert_array_equal(distances, assignments["distance"].to_numpy())


def test_a_small_audience_gets_one_group() -> None:
    matrix, _ = blobs([20, 20])
    assignments, profiles = group_product(audience(matrix), CFG)
    assert set(assignments["group_id"]) == {0}
    assert len(profiles) == 1
    row = profiles.iloc[0]
    assert (row["k"], row["size"], row["silhouette"]) == (1, 40, None)
    assert row["attribute_summary"] == [] and row["description"] == "broad audience"


def test_anchor_counts_follow_the_ratio() -> None:
    assert anchor_counts(10, (2, 3, 5)) == [2, 3, 5]
    assert anchor_counts(20, (2, 3, 5)) == [4, 6, 10]
    assert anchor_counts(4, (2, 3, 5)) == [1, 1, 2]
    assert anchor_counts(1, (2, 3, 5)) == [0, 0, 1]


def test_anchors_sit_at_the_requested_percentiles() -> None:
    distances = np.random.default_rng(3).permutation(np.linspace(0.0, 10.0, 1001))
    rows = anchor_rows(distances, CFG)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10
    picked = distances[rows]
    for chunk, target in zip(np.split(picked, [2, 5]), (1.5, 5.5, 9.5), strict=True):
        np.testing.assert_allclose(chunk, target, atol=0.03)
    assert len(anchor_rows(distances[:3], CFG)) == 3


def test_profiles_carry_anchors_and_are_deterministic() -> None:
    matrix, _ = blobs([100, 100], dim=4)
    frame = audience(matrix)
    first = group_product(frame, CFG)
    again = group_product(frame.sample(frac=1.0, random_state=5), CFG)
    pd.testing.assert_frame_equal(first[0], again[0])
    pd.testing.assert_frame_equal(first[1], again[1])
    assignments, profiles = first
    for _, profile in profiles.iterrows():
        anchors = np.array(profile["anchors"])
        assert anchors.shape == (10, 4)
        distances = np.linalg.norm(anchors - np.array(profile["centroid"]), axis=1)
        members = assignments.loc[assignments["group_id"] == profile["group_id"], "distance"]
        targets = np.repeat(np.quantile(members, [0.15, 0.55, 0.95]), [2, 3, 5])
        np.testing.assert_allclose(distances, targets, rtol=0.15)


def test_attribute_summary_finds_the_over_represented_values() -> None:
    matrix, truth = blobs([100, 100])
    women = np.where(truth == 0, np.arange(200) % 10 != 0, np.arange(200) % 10 == 0)
    frame = audience(
        matrix,
        gender=np.where(women, "female", "male"),
        city_tier=["tier-1"] * 200,
        age_band=[None] * 200,
        interests=[["sports", "books"] if w else ["sports"] for w in women],
    )
    _, profiles = group_product(frame, CFG)
    by_value = {(s["attribute"], s["value"]): s for s in profiles.iloc[0]["attribute_summary"]}
    assert by_value["gender", "female"]["share"] == pytest.approx(0.9)
    assert by_value["gender", "female"]["lift"] == pytest.approx(1.8)
    # Multi-valued interests count each value; values everyone shares (lift 1) stay out.
    assert by_value["interests", "books"]["lift"] == pytest.approx(1.8)
    assert ("interests", "sports") not in by_value and ("city_tier", "tier-1") not in by_value
    assert "women" in profiles.iloc[0]["description"]
    assert "men" in profiles.iloc[1]["description"].split()


def test_missing_attributes_are_unknown() -> None:
    frame = pd.DataFrame({"gender": ["female", "female", None, None], "interests": [["toys"], ["toys"], None, []]})
    summary = attribute_summaries(frame, np.array([0, 0, 1, 1]), CFG)
    assert {(s["attribute"], s["value"]) for s in summary[1]} == {("gender", "unknown"), ("interests", "unknown")}
    assert describe(summary[1]) == "broad audience"
    assert describe(summary[0]) == "women, into toys"


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        (
            [("purchase_power", "high"), ("gender", "female"), ("city_tier", "tier-1"), ("age_band", "25-34")],
            "women 25-34, tier-1 cities, high purchase power",
        ),
        ([("occupation", "engineer"), ("gender", "male"), ("device", "ios")], "male engineers, on iOS"),
        ([("age_band", "55+"), ("age_band", "45-54"), ("interests", "home")], "aged 45-54/55+, into home"),
        ([("occupation", "retired"), ("interests", "books"), ("interests", "food")], "retirees, into books and food"),
        ([], "broad audience"),
    ],
)
def test_describe(summary: list[tuple[str, str]], expected: str) -> None:
    items = [{"attribute": a, "value": v, "share": 0.5, "lift": 1.5} for a, v in summary]
    assert describe(items, CFG.value_order) == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([0.1, np.nan], dtype=np.float32), "user u00007 has a NaN or infinite value"),
        (np.array([0.1, None]), "user u00007 has a NaN or infinite value"),
        (None, "user u00007 has no embedding"),
        (np.array([0.1, 0.2, 0.3], dtype=np.float32), "user u00007 has an embedding of length other than 2"),
    ],
)
def test_bad_embeddings_name_the_product_and_user(bad: object, message: str) -> None:
    frame = audience(np.ones((80, 2)), product_id="p9")
    frame.at[7, "embedding"] = bad
    with pytest.raises(ValueError, match=f"product p9: {message}"):
        group_product(frame, CFG)


# ---------------------------------------------------------------------------------------------
# Spark


@pytest.fixture(scope="module")
def spark_input(spark):
    rng = np.random.default_rng(11)
    big, _ = blobs([70, 50, 60], seed=4)
    small, _ = blobs([25], seed=5)
    frames = [audience(big, "p1"), audience(small, "p2")]
    embeddings = pd.concat(frames, ignore_index=True).assign(paag_version="osmf-paag/1", ds=DS)
    # Another day's rows must be ignored.
    stale = frames[1].assign(product_id="p3", paag_version="osmf-paag/1", ds=DS - dt.timedelta(days=1))
    embeddings = pd.concat([embeddings, stale], ignore_index=True)
    # u00000 has no attributes: it is summarised as unknown.
    user_ids = sorted(set(embeddings["user_id"]) - {"u00000"})
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "age_band": rng.choice(["18-24", "25-34"], len(user_ids)),
            "gender": rng.choice(["female", "male", None], len(user_ids)),
            "city_tier": "tier-2",
            "purchase_power": rng.choice(["low", "high"], len(user_ids)),
            "occupation": "student",
            "device": "pc",
            "interests": [list(rng.choice(["toys", "food", "books"], 2, replace=False)) for _ in user_ids],
            "updated_ds": DS,
        }
    )
    attributes = users.set_index("user_id").drop(columns="updated_ds")
    p1 = frames[0].join(attributes, on="user_id")
    return (
        spark.createDataFrame(embeddings, PAAG_EMBEDDINGS.schema()),
        spark.createDataFrame(users, USERS.schema()),
        p1,
    )


def _types(df) -> list[tuple[str, str]]:
    return [(field.name, field.dataType.simpleString()) for field in df.schema.fields]


def _rows(df) -> list[dict]:
    return sorted((row.asDict(recursive=True) for row in df.collect()), key=lambda r: (r["product_id"], str(r)))


def test_group_users_conforms_and_matches_the_pure_function(spark, spark_input, make_cfg) -> None:
    embeddings, users, p1 = spark_input
    cfg = make_cfg()
    user_groups, profiles = group_audiences(embeddings, users, cfg, DS)
    for df, table in ((user_groups, USER_GROUPS), (profiles, GROUP_PROFILES)):
        assert _types(df) == _types(tables.conform(df, table)) == _types(spark.createDataFrame([], table.schema()))
    assigned, profiled = _rows(user_groups), _rows(profiles)
    assert {r["ds"] for r in assigned + profiled} == {DS}
    assert [(r["product_id"], r["k"], r["silhouette"]) for r in profiled if r["product_id"] == "p2"] == [
        ("p2", 1, None)
    ]
    assert {r["product_id"] for r in profiled} == {"p1", "p2"}

    expected_assigned, expected_profiles = group_product(p1, cfg.grouping)
    assert {r["paag_version"] for r in assigned + profiled} == {"osmf-paag/1"}
    got = [{k: v for k, v in r.items() if k not in ("ds", "paag_version")} for r in assigned if r["product_id"] == "p1"]
    assert got == expected_assigned.to_dict("records")
    got_profiles = [r for r in profiled if r["product_id"] == "p1"]
    assert len(got_profiles) == len(expected_profiles) == 3
    for row, expected in zip(
        sorted(got_profiles, key=lambda r: r["group_id"]), expected_profiles.to_dict("records"), strict=True
    ):
        assert row["description"] == expected["description"]
        assert row["attribute_summary"] == expected["attribute_summary"]
        assert (row["k"], row["size"], row["silhouette"]) == (expected["k"], expected["size"], expected["silhouette"])
        np.testing.assert_array_equal(row["anchors"], expected["anchors"])
        np.testing.assert_array_equal(row["centroid"], expected["centroid"])

    # A differently partitioned input is a new plan (no cached result to reuse) and new arrival order.
    again_groups, again_profiles = group_audiences(embeddings.repartition(3), users.repartition(2), cfg, DS)
    assert _rows(again_groups) == assigned
    assert _rows(again_profiles) == profiled


def test_group_users_fails_naming_the_bad_row(spark, make_cfg) -> None:
    frame = audience(np.ones((3, 2)), product_id="p7").assign(paag_version="osmf-paag/1", ds=DS)
    frame.at[1, "embedding"] = np.array([np.nan, 0.0], dtype=np.float32)
    embeddings = spark.createDataFrame(frame, PAAG_EMBEDDINGS.schema())
    users = spark.createDataFrame([], USERS.schema())
    user_groups, _ = group_audiences(embeddings, users, make_cfg(), DS)
    with pytest.raises(Exception, match="product p7: user u00001 has a NaN") as caught:
        user_groups.collect()
    # What the job prints instead of the JVM's stack:
    reason = worker_error(caught.value, GroupingError)
    assert reason == "product p7: user u00001 has a NaN or infinite value in its embedding"


def test_a_failure_between_the_two_writes_is_caught_and_a_rerun_mends_it(
    spark, spark_input, make_cfg, monkeypatch, failing_writes
):
    embeddings, users, _ = spark_input
    cfg = make_cfg()
    tracking.configure(cfg)
    tables.overwrite_partition(spark, embeddings.where(f"ds = DATE'{DS}'"), PAAG_EMBEDDINGS, cfg, DS)
    tables.merge(spark, users, USERS, cfg, ds=DS)

    def group(k_max: int) -> None:
        with mlflow.start_run():
            group_users(
                JobContext("group_users", cfg.model_copy(update={"grouping": GroupingConfig(k_max=k_max)}), DS, "t")
            )

    group(k_max=5)
    check_groups(spark, cfg, DS)
    failing_writes(GROUP_PROFILES, "the driver died")
    with pytest.raises(RuntimeError, match="the driver died"):
        group(k_max=2)  # fewer groups for p1: user_groups now disagrees with the old profiles
    with pytest.raises(StageError, match="user_groups and group_profiles of ds=.* disagree .* rerun group_users"):
        check_groups(spark, cfg, DS)
    monkeypatch.undo()
    group(k_max=2)
    check_groups(spark, cfg, DS)
    assert tables.read(spark, GROUP_PROFILES, cfg, ds=DS).where("product_id = 'p1'").count() == 2
