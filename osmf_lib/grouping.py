"""Adaptive product-aware grouping (docs/design.md#grouping).

Per product, the audience's PAAG embeddings are clustered with K-Means, K chosen by mean
silhouette; small groups are merged away; each group gets its distances, anchor points, an
attribute summary (values over-represented versus the product's audience) and a one-line
description.

The per-product work is plain pandas/numpy/scikit-learn (`group_product`, `cluster_embeddings`
and helpers), so evaluation and notebooks use it without Spark. `group_users` runs it for every
product with one `groupBy(product).applyInPandas` pass. Nothing here reads or writes a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, pairwise_distances, silhouette_score

from osmf_lib import quality, tables, tracking
from osmf_lib.config import Config, GroupingConfig
from osmf_lib.job import JobContext, StageError, worker_errors_as_stage_errors
from osmf_lib.quality import Check
from osmf_lib.tables import (
    DS,
    GROUP_PROFILES,
    MULTI_VALUED_ATTRIBUTES,
    PAAG_EMBEDDINGS,
    SINGLE_VALUED_ATTRIBUTES,
    USER_ATTRIBUTES,
    USER_GROUPS,
    USERS,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

UNKNOWN = "unknown"
BROAD_AUDIENCE = "broad audience"

# What grouping one product computes; the night's columns (lineage, ds) are added around it.
LINEAGE = "paag_version"
ASSIGNMENT_COLUMNS = [c for c in USER_GROUPS.column_names if c not in (DS, LINEAGE)]
PROFILE_COLUMNS = [c for c in GROUP_PROFILES.column_names if c not in (DS, LINEAGE)]
# group_users' single pass emits both kinds of rows in one schema, told apart by this column.
KIND, ASSIGNMENT, PROFILE = "_kind", "assignment", "profile"

_GENDER_NOUNS = {"female": "women", "f": "women", "male": "men", "m": "men"}
_GENDER_ADJECTIVES = {"female": "female", "f": "female", "male": "male", "m": "male"}
_OCCUPATIONS = {
    "student": "students",
    "office_worker": "office workers",
    "engineer": "engineers",
    "service_worker": "service workers",
    "self_employed": "self-employed people",
    "retired": "retirees",
}
_DEVICES = {"ios": "iOS", "android": "Android", "pc": "PC"}


# Rows per block of nearest-centroid distances: bounds the (rows, groups, dim) array it builds.
NEAREST_BLOCK = 4096
# Lloyd steps that settling small-group merges may take; on the demo world they settle in a few.
MAX_SETTLE_STEPS = 100


class GroupingError(ValueError):
    """A product's audience cannot be grouped; the message names the product and the user."""


class Clustering(NamedTuple):
    labels: np.ndarray  # group per row, 0..k-1 by size descending
    centroids: np.ndarray  # [k, dim], the mean of each group's members
    k: int
    silhouette: float | None  # None when there is one group


# ---------------------------------------------------------------------------------------------
# Clustering


def embedding_matrix(audience: pd.DataFrame, product_id: str) -> np.ndarray:
    """The audience's embeddings as a float64 matrix; GroupingError naming the product and user if one is bad."""
    vectors = audience["embedding"]
    users = audience["user_id"].to_numpy()
    lengths = vectors.map(lambda v: -1 if v is None else len(v)).to_numpy()
    dim = int(np.bincount(lengths[lengths >= 0]).argmax()) if (lengths >= 0).any() else 0
    checks = (
        (lengths < 0, "has no embedding"),
        (lengths == 0, "has an empty embedding"),
        (lengths != dim, f"has an embedding of length other than {dim}"),
    )
    for bad, what in checks:
        if bad.any():
            raise GroupingError(f"product {product_id}: user {users[bad.argmax()]} {what}{_more(bad)}")
    # Rounded to the stored FLOAT first, so Spark and pandas callers cluster the very same numbers.
    matrix = np.array(vectors.tolist(), dtype=np.float32).reshape(len(audience), dim).astype(np.float64)
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise GroupingError(
            f"product {product_id}: user {users[bad.argmax()]} has a NaN or infinite value in its embedding{_more(bad)}"
        )
    return matrix


def _more(bad: np.ndarray) -> str:
    others = int(bad.sum()) - 1
    return f" (and {others} more users)" if others else ""


class _SilhouetteSample(NamedTuple):
    rows: np.ndarray
    distances: np.ndarray  # pairwise, computed once and shared by every candidate K


def _silhouette_sample(matrix: np.ndarray, cfg: GroupingConfig) -> _SilhouetteSample:
    n = len(matrix)
    rows = np.arange(n)
    if n > cfg.silhouette_sample:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n, size=cfg.silhouette_sample, replace=False))
    return _SilhouetteSample(rows, pairwise_distances(matrix[rows]))


def _silhouette(labels: np.ndarray, sample: _SilhouetteSample) -> float | None:
    """Mean silhouette on the sample; None where it is undefined (one label, or one row per label)."""
    sampled = labels[sample.rows]
    if not 2 <= len(np.unique(sampled)) <= len(sampled) - 1:
        return None
    return float(silhouette_score(sample.distances, sampled, metric="precomputed"))


def _kmeans(matrix: np.ndarray, k: int, cfg: GroupingConfig) -> np.ndarray:
    return KMeans(n_clusters=k, n_init=cfg.kmeans_n_init, random_state=cfg.seed).fit_predict(matrix)


def choose_k(
    matrix: np.ndarray, cfg: GroupingConfig, sample: _SilhouetteSample | None = None
) -> tuple[int, np.ndarray, float | None]:
    """K in k_min..k_max with the highest mean silhouette (ties: the smaller K) -> (k, labels, silhouette).

    K = 1 has no silhouette, so it is chosen only when no K >= 2 has one (e.g. all points equal).
    """
    if sample is None:
        sample = _silhouette_sample(matrix, cfg)
    distinct = len(np.unique(matrix, axis=0))
    best: tuple[int, np.ndarray, float | None] = (1, np.zeros(len(matrix), dtype=np.int64), None)
    for k in range(max(cfg.k_min, 2), min(cfg.k_max, distinct) + 1):
        labels = _kmeans(matrix, k, cfg)
        score = _silhouette(labels, sample)
        if score is not None and (best[2] is None or score > best[2]):
            best = (k, labels, score)
    return best


def _centroids(matrix: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, matrix.shape[1]))
    np.add.at(sums, labels, matrix)
    return sums / np.bincount(labels, minlength=k)[:, None]


def merge_small_groups(matrix: np.ndarray, labels: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge groups below `min_size` into the nearest group by centroid, smallest first -> (labels, centroids).

    Groups are then numbered 0..K'-1 by size descending; equal sizes keep the order of their
    first member, so the numbering does not depend on K-Means' arbitrary label order.
    """
    _, labels = np.unique(labels, return_inverse=True)
    while True:
        k = int(labels.max()) + 1
        sizes = np.bincount(labels, minlength=k)
        if k == 1 or sizes.min() >= min_size:
            break
        centroids = _centroids(matrix, labels, k)
        small = int(np.argmin(sizes))
        gaps = np.linalg.norm(centroids - centroids[small], axis=1)
        gaps[small] = np.inf
        labels = np.where(labels == small, int(np.argmin(gaps)), labels)
        _, labels = np.unique(labels, return_inverse=True)
    first_member = np.array([np.argmax(labels == g) for g in range(k)])
    order = np.lexsort((first_member, -sizes))
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    labels = relabel[labels]
    return labels, _centroids(matrix, labels, k)


def nearest_centroids(matrix: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid (ties: the lower group) and its distance to it. `centroids` is
    (groups, dim), shared by every row, or (rows, groups, dim), each row's own product's, padded
    with inf where a product has fewer groups.

    This is the one rule that places a user in a group: grouping settles its groups on it and
    serving (osmf_lib.serving) applies it to users the night never saw. Centroids count as
    group_profiles stores them (float32), and the distances are taken coordinate by coordinate,
    in blocks of rows, so a row's answer never depends on which other rows came with it.
    """
    stored = np.asarray(centroids, dtype=np.float32).astype(np.float64)
    shared = stored.ndim == 2
    labels = np.empty(len(matrix), dtype=np.int64)
    distances = np.empty(len(matrix))
    for start in range(0, len(matrix), NEAREST_BLOCK):
        rows = matrix[start : start + NEAREST_BLOCK]
        theirs = stored[None, :, :] if shared else stored[start : start + NEAREST_BLOCK]
        gaps = np.sqrt(((rows[:, None, :] - theirs) ** 2).sum(axis=-1))
        labels[start : start + len(rows)] = gaps.argmin(axis=1)
        distances[start : start + len(rows)] = gaps.min(axis=1)
    return labels, distances


def settle_groups(matrix: np.ndarray, labels: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge small groups away, then move every member to its nearest centroid and recompute the
    centroids until nothing moves -> (labels, centroids), numbered as `merge_small_groups` does.

    Merging folds a small group into the group whose centroid is nearest to *its centroid*, so
    some of its members end up nearer a third group's centroid, and the merged centroid moves.
    Without settling, nearest-centroid would give those members another group than the one they
    were put in, and serving would place a newcomer by a rule grouping did not follow. Settling is
    Lloyd's algorithm from the merged groups (each step lowers the within-group spread; a group
    that shrinks below `min_size` on the way is merged again), capped at MAX_SETTLE_STEPS, after
    which the groups are what nearest-centroid says of the last centroids.
    """
    for _ in range(MAX_SETTLE_STEPS):
        labels, centroids = merge_small_groups(matrix, labels, min_size)
        nearest, _ = nearest_centroids(matrix, centroids)
        if np.array_equal(nearest, labels):
            return labels, centroids
        labels = nearest
    kept = np.unique(labels)
    return np.searchsorted(kept, labels), centroids[kept]


def cluster_embeddings(matrix: np.ndarray, cfg: GroupingConfig, k: int | None = None) -> Clustering:
    """Group one product's embeddings: K by silhouette (or `k` when given), then small groups merged.

    A forced `k` only replaces the search: an audience below `min_audience` still gets one group
    and small groups are still merged, so the result's `k` is the number of groups really made
    (pass a config with min_group_size=1 for raw K-Means). The silhouette is that of the final groups.
    """
    n = len(matrix)
    if n == 0:
        raise ValueError("cannot cluster an empty audience")
    if n < cfg.min_audience or k == 1:
        return Clustering(np.zeros(n, dtype=np.int64), matrix.mean(axis=0, keepdims=True), 1, None)
    sample = _silhouette_sample(matrix, cfg)
    if k is None:
        k, labels, score = choose_k(matrix, cfg, sample)
    else:
        k = min(k, len(np.unique(matrix, axis=0)))
        labels = _kmeans(matrix, k, cfg)
        score = _silhouette(labels, sample)
    settled, centroids = settle_groups(matrix, labels, cfg.min_group_size)
    if len(centroids) != k or adjusted_rand_score(labels, settled) < 1:
        score = _silhouette(settled, sample)
    return Clustering(settled, centroids, len(centroids), score)


# ---------------------------------------------------------------------------------------------
# Group representation


def anchor_counts(total: int, ratio: Sequence[int]) -> list[int]:
    """Split `total` anchors in `ratio` (largest remainder), e.g. 10 in 2:3:5 -> [2, 3, 5]."""
    exact = [share * total / sum(ratio) for share in ratio]
    counts = [int(x) for x in exact]
    # Equal remainders favour the farther percentile, which the paper's ratio weights most.
    by_remainder = sorted(range(len(ratio)), key=lambda i: (counts[i] - exact[i], -i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def anchor_rows(distances: np.ndarray, cfg: GroupingConfig) -> np.ndarray:
    """Positions of a group's anchors: per percentile, the members nearest its distance, none twice."""
    counts = anchor_counts(min(cfg.anchors_per_group, len(distances)), cfg.anchor_ratio)
    taken = np.zeros(len(distances), dtype=bool)
    picked = []
    for percentile, count in zip(cfg.anchor_percentiles, counts, strict=True):
        gaps = np.abs(distances - np.quantile(distances, percentile))
        gaps[taken] = np.inf
        rows = np.argsort(gaps, kind="stable")[:count]
        taken[rows] = True
        picked.append(rows)
    return np.concatenate(picked)


def _values(audience: pd.DataFrame) -> pd.DataFrame:
    """One (row, attribute, value) per user and attribute value; missing values become "unknown"."""
    single = [a for a in SINGLE_VALUED_ATTRIBUTES if a in audience]
    long = audience[single].astype(object).where(audience[single].notna(), UNKNOWN).astype(str)
    parts = [long.melt(var_name="attribute", value_name="value", ignore_index=False)]
    for attribute in (a for a in MULTI_VALUED_ATTRIBUTES if a in audience):
        # A user counts once per distinct value: interests are a set, whatever the source sends.
        listed = audience[attribute].map(_distinct_values).explode()
        parts.append(pd.DataFrame({"attribute": attribute, "value": listed}))
    return pd.concat(parts).rename_axis("row").reset_index()


def _distinct_values(values: object) -> list[str]:
    # None from Spark, NaN from a pandas join: both mean the list is missing.
    listed = values if isinstance(values, Iterable) and not isinstance(values, str) else []
    return sorted({str(v) for v in listed if v is not None}) or [UNKNOWN]


def attribute_summaries(audience: pd.DataFrame, labels: np.ndarray, cfg: GroupingConfig) -> list[list[dict]]:
    """Per group, the values over-represented versus the whole audience: share, lift, sorted by lift.

    share = members with the value / group size; lift = share / the value's share of the audience.
    """
    k = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=k)
    values = _values(audience.reset_index(drop=True))
    values["group"] = labels[values["row"].to_numpy()]
    overall = values.groupby(["attribute", "value"]).size().rename("overall") / len(labels)
    counts = values.groupby(["group", "attribute", "value"]).size().rename("count").reset_index()
    counts["share"] = counts["count"] / sizes[counts["group"].to_numpy()]
    counts["lift"] = counts["share"] / overall.reindex(pd.MultiIndex.from_frame(counts[["attribute", "value"]])).values
    kept = counts[(counts["lift"] >= cfg.summary_min_lift) & (counts["share"] >= cfg.summary_min_share)]
    kept = kept.sort_values(
        ["group", "lift", "share", "attribute", "value"], ascending=[True, False, False, True, True]
    )
    summaries: list[list[dict]] = [[] for _ in range(k)]
    for group, rows in kept.groupby("group", sort=True):
        top = rows.head(cfg.summary_max_items)
        summaries[group] = [
            {"attribute": a, "value": v, "share": float(s), "lift": float(li)}
            for a, v, s, li in zip(top["attribute"], top["value"], top["share"], top["lift"], strict=True)
        ]
    return summaries


def _words(values: Mapping[str, list[str]], attribute: str, words: Mapping[str, str] = {}, sep: str = "/") -> str:
    return sep.join(words.get(v, v.replace("_", " ")) for v in values.get(attribute, []))


def _who(values: Mapping[str, list[str]]) -> str:
    genders = values.get("gender", [])
    gender = genders[0].lower() if len(genders) == 1 else ""
    occupations = _words(values, "occupation", _OCCUPATIONS)
    noun = (
        f"{_GENDER_ADJECTIVES.get(gender, '')} {occupations}".strip() if occupations else _GENDER_NOUNS.get(gender, "")
    )
    ages = _words(values, "age_band")
    if ages:
        return f"{noun} {ages}" if noun else f"aged {ages}"
    return noun


def _in_order(values: list[str], order: Sequence[str]) -> list[str]:
    """Values in the configured order (ages ascending, low to high); unlisted ones after, alphabetically."""
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))


def describe(summary: Sequence[Mapping], value_order: Mapping[str, Sequence[str]] = {}) -> str:
    """A readable line from an attribute summary, e.g. "women 25-34, tier-1 cities, high purchase power".

    `value_order` (grouping.value_order) says how to list several values of one attribute.
    """
    values: dict[str, list[str]] = {}
    for item in summary:
        if item["value"] != UNKNOWN:
            values.setdefault(item["attribute"], []).append(item["value"])
    values = {attribute: _in_order(found, value_order.get(attribute, ())) for attribute, found in values.items()}
    phrases = [
        (_who(values), "{}"),
        (_words(values, "city_tier"), "{} cities"),
        (_words(values, "purchase_power"), "{} purchase power"),
        (_words(values, "device", _DEVICES), "on {}"),
        (_words(values, "interests", sep=" and "), "into {}"),
    ]
    return ", ".join(template.format(words) for words, template in phrases if words) or BROAD_AUDIENCE


# ---------------------------------------------------------------------------------------------
# One product


def group_product(audience: pd.DataFrame, cfg: GroupingConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group one product's audience -> (user_groups rows, group_profiles rows), both without ds.

    `audience`: product_id, user_id, embedding and any of the user attribute columns. Rows are
    sorted by user_id first, so the result does not depend on the order they arrive in.
    """
    if audience.empty:
        return pd.DataFrame(columns=ASSIGNMENT_COLUMNS), pd.DataFrame(columns=PROFILE_COLUMNS)
    audience = audience.sort_values("user_id", kind="stable").reset_index(drop=True)
    product_id = audience["product_id"].iloc[0]
    duplicated = audience["user_id"].duplicated()
    if duplicated.any():
        raise GroupingError(f"product {product_id}: user {audience['user_id'][duplicated].iloc[0]} appears twice")
    matrix = embedding_matrix(audience, product_id)
    labels, centroids, k, silhouette = cluster_embeddings(matrix, cfg)
    _, distances = nearest_centroids(matrix, centroids)
    assignments = pd.DataFrame(
        {
            "product_id": product_id,
            "user_id": audience["user_id"],
            "group_id": labels.astype(np.int32),
            "distance": distances,
        }
    )
    summaries = attribute_summaries(audience, labels, cfg)
    profiles = []
    for group in range(k):
        members = np.flatnonzero(labels == group)
        anchors = matrix[members[anchor_rows(distances[members], cfg)]].astype(np.float32)
        profiles.append(
            {
                "product_id": product_id,
                "group_id": group,
                "k": k,
                "size": len(members),
                "silhouette": silhouette,
                "centroid": centroids[group].astype(np.float32).tolist(),
                "anchors": anchors.tolist(),
                "attribute_summary": summaries[group],
                "description": describe(summaries[group], cfg.value_order),
            }
        )
    return assignments, pd.DataFrame(profiles, columns=PROFILE_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Spark


def _pass_schema() -> str:
    """Assignment and profile columns in one schema (all nullable) plus the kind of row."""
    columns = {c.name: c.type for c in (*USER_GROUPS.columns, *GROUP_PROFILES.columns) if c.name != DS}
    return ", ".join([f"{KIND} STRING", *(f"{name} {type_}" for name, type_ in columns.items())])


def _group_rows(audience: pd.DataFrame, cfg: GroupingConfig) -> pd.DataFrame:
    versions = audience[LINEAGE].unique()
    if len(versions) != 1:
        raise GroupingError(
            f"product {audience['product_id'].iloc[0]}: embeddings of several models {sorted(versions)}"
        )
    assignments, profiles = group_product(audience.drop(columns=LINEAGE), cfg)
    both = pd.concat([assignments.assign(**{KIND: ASSIGNMENT}), profiles.assign(**{KIND: PROFILE})], ignore_index=True)
    both[LINEAGE] = versions[0]
    # The other kind's columns come out of concat as NaN, which Arrow takes for a value, not a null.
    return both.astype(object).where(both.notna(), None)


def group_users(embeddings: DataFrame, users: DataFrame, cfg: Config, ds: date) -> tuple[DataFrame, DataFrame]:
    """Group every product's audience of `ds` -> (user_groups, group_profiles), conforming to their contracts.

    One applyInPandas pass computes both kinds of rows and is persisted, so writing the two
    results clusters each product once. A user missing from `users` is summarised as "unknown".
    Both carry the embeddings' paag_version.
    """
    from pyspark.sql import functions as F

    grouping_cfg = cfg.grouping

    def one_product(audience: pd.DataFrame) -> pd.DataFrame:
        return _group_rows(audience, grouping_cfg)

    audience = embeddings.where(F.col(DS) == F.lit(ds)).select("product_id", "user_id", "embedding", LINEAGE)
    attributes = users.select("user_id", *USER_ATTRIBUTES)
    rows = (
        audience.join(attributes, "user_id", "left")
        .groupBy("product_id")
        .applyInPandas(one_product, _pass_schema())
        .persist()
    )

    def of_kind(kind: str, columns: list[str], table: tables.Table) -> DataFrame:
        picked = rows.where(F.col(KIND) == kind).select(*columns, LINEAGE, F.lit(ds).alias(DS))
        return tables.conform(picked, table)

    return of_kind(ASSIGNMENT, ASSIGNMENT_COLUMNS, USER_GROUPS), of_kind(PROFILE, PROFILE_COLUMNS, GROUP_PROFILES)


def run(ctx: JobContext) -> None:
    """The group_users stage: the night's embeddings -> user_groups and group_profiles."""
    import mlflow
    from pyspark.sql import functions as F

    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    embedded = tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=ds)
    assignments, profiles = group_users(embedded, tables.read(spark, USERS, cfg, as_of=ds), cfg, ds)
    # A bad embedding surfaces here from a Python worker; say which, not a JVM stack.
    with worker_errors_as_stage_errors(GroupingError, f"group_users for ds={ds}"):
        # Members first, profiles last: a failure in between leaves the pair disagreeing, which
        # check_groups catches, and a rerun rewrites both.
        tables.overwrite_partition(spark, assignments, USER_GROUPS, cfg, ds)
        tables.overwrite_partition(spark, profiles, GROUP_PROFILES, cfg, ds)
    summary = (
        tables.read(spark, GROUP_PROFILES, cfg, ds=ds)
        .groupBy()
        .agg(
            F.countDistinct("product_id").alias("products"),
            F.count("*").alias("groups"),
            F.avg("k").alias("mean_k"),
        )
        .first()
    )
    if not summary["products"]:
        print(f"group_users: no embeddings for ds={ds}; nothing to group")
        return
    check_groups(spark, cfg, ds)
    quality.gate(ctx, quality_checks(spark, cfg, ds))
    print(
        f"group_users: {summary['groups']} groups over {summary['products']} products (mean K {summary['mean_k']:.2f})"
    )
    mlflow.log_metrics({"products": summary["products"], "groups": summary["groups"], "mean_k": summary["mean_k"]})
    tracking.log_table_input(spark, PAAG_EMBEDDINGS, cfg, context="grouping")


def quality_checks(spark: SparkSession, cfg: Config, ds: date) -> list[Check]:
    """The night's gate: groups against the previous night's, the smallest group, and the share
    of the embedded audience that was grouped (recorded: small audiences are skipped by design)."""
    from pyspark.sql import functions as F

    profiles = tables.read(spark, GROUP_PROFILES, cfg)
    # A small audience is one group by design; only a product split in several has a smallest group.
    split = F.when(F.col("k") > 1, F.col("size"))
    tonight = profiles.where(F.col(DS) == F.lit(ds)).agg(F.min(split), F.sum("size")).first()
    embedded = tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=ds).count()
    smallest = (
        []
        if tonight[0] is None
        else [
            Check(
                "smallest_group",
                tonight[0],
                low=cfg.grouping.min_group_size,
                setting="grouping.min_group_size",
                measured="of the products split into several groups",
            )
        ]
    )
    return [
        *quality.versus_previous(cfg, "groups", profiles, ds, "groups"),
        *smallest,
        Check("grouped_share", tonight[1] / embedded, measured=f"{tonight[1]:,} of {embedded:,} (product, user)"),
    ]


def check_groups(spark: SparkSession, cfg: Config, ds: date) -> None:
    """Fail unless user_groups and group_profiles of `ds` hold the same groups, sizes and model.

    Delta commits one table at a time; this is what makes the pair safe to read as one. Every
    stage that reads both calls it.
    """
    members = (
        tables.read(spark, USER_GROUPS, cfg, ds=ds)
        .groupBy("product_id", "group_id", LINEAGE)
        .count()
        .withColumnRenamed("count", "size")
    )
    profiles = tables.read(spark, GROUP_PROFILES, cfg, ds=ds).select("product_id", "group_id", LINEAGE, "size")
    disagree = members.exceptAll(profiles).unionByName(profiles.exceptAll(members)).first()
    if disagree is not None:
        raise StageError(
            f"user_groups and group_profiles of ds={ds} disagree (first at product {disagree['product_id']}, "
            f"group {disagree['group_id']}, {disagree[LINEAGE]}): an earlier group_users stopped between its "
            "two writes; rerun group_users for this ds"
        )
