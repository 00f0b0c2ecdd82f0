"""Clustering one product's audience: K-Means on the PAAG embeddings with K chosen by mean
silhouette, small groups merged away and the rest settled (plain numpy and scikit-learn)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, pairwise_distances, silhouette_score

from osmf_lib.config import GroupingConfig

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
