"""Benchmark: `group_audiences` (group_users's one applyInPandas pass) against MLlib KMeans per
product and a plain scikit-learn loop, on synthetic PAAG embeddings with planted clusters.

    OMP_NUM_THREADS=1 .venv/bin/python bench/grouping.py --scales demo
    OMP_NUM_THREADS=1 .venv/bin/python bench/grouping.py --scales demo bench --products 100

All three search K = k_min..k_max by mean silhouette on the same rows, in one process after a
small warm-up. MLlib starts several Spark jobs per K and product, so it runs on a few products
only and its time is extrapolated per product (the table says so). The scikit-learn loop is
single-process and does only the K search; group_audiences also merges, draws anchors and writes
summaries. Targets: group_audiences >= 10x faster than MLlib, <= 3x slower than the sklearn loop.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from osmf_lib.config import Config, load_config
from osmf_lib.grouping.groups import group_audiences
from osmf_lib.spark import get_spark
from osmf_lib.synth.vocab import ATTRIBUTE_VALUES, CATEGORIES

DS = date(2026, 11, 1)
DIM = 32


@dataclass(frozen=True)
class Scale:
    products: int
    audience: int  # mean users per product; each product's is drawn from 0.5x..1.5x of it
    users: int


SCALES = {
    "warmup": Scale(products=4, audience=300, users=2_000),
    "demo": Scale(products=500, audience=3_000, users=50_000),
    "bench": Scale(products=500, audience=30_000, users=200_000),
}


def write_inputs(scale: Scale, products: int, folder: Path, seed: int = 0) -> int:
    """Embeddings (one row group per product, sorted) and users as Parquet; returns the row count."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    user_ids = np.array([f"u{i:06d}" for i in range(scale.users)])
    users = pd.DataFrame({"user_id": user_ids})
    for attribute, values in ATTRIBUTE_VALUES.items():
        users[attribute] = rng.choice(values, scale.users)
    users["interests"] = [sorted(rng.choice(CATEGORIES, rng.integers(1, 4), replace=False)) for _ in user_ids]
    users.to_parquet(folder / "users.parquet")

    schema = pa.schema(
        [
            ("product_id", pa.string()),
            ("user_id", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("ds", pa.date32()),
        ]
    )
    rows = 0
    with pq.ParquetWriter(folder / "embeddings.parquet", schema) as writer:
        for p in range(products):
            n = int(scale.audience * rng.uniform(0.5, 1.5))
            k = int(rng.integers(2, 6))
            centers = rng.normal(size=(k, DIM)) * 2.0
            matrix = (centers[rng.integers(0, k, n)] + rng.normal(size=(n, DIM))).astype(np.float32)
            offsets = pa.array(np.arange(0, (n + 1) * DIM, DIM, dtype=np.int32))
            table = pa.table(
                {
                    "product_id": pa.array([f"p{p:05d}"] * n),
                    "user_id": pa.array(np.sort(rng.choice(user_ids, n, replace=False))),
                    "embedding": pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel())),
                    "ds": pa.array([DS] * n, pa.date32()),
                },
                schema=schema,
            )
            writer.write_table(table)
            rows += n
    return rows


def time_group_audiences(spark, cfg: Config, folder: Path) -> float:
    began = time.perf_counter()
    embeddings = spark.read.parquet(str(folder / "embeddings.parquet"))
    users = spark.read.parquet(str(folder / "users.parquet"))
    user_groups, profiles = group_audiences(embeddings, users, cfg, DS)
    user_groups.write.format("noop").mode("overwrite").save()
    profiles.write.format("noop").mode("overwrite").save()
    elapsed = time.perf_counter() - began
    spark.catalog.clearCache()
    return elapsed


def time_mllib(spark, cfg: Config, folder: Path, products: int) -> float:
    """Seconds for the first `products` products: KMeans + ClusteringEvaluator per K, no caching."""
    from pyspark.ml.clustering import KMeans as SparkKMeans
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    grouping = cfg.grouping
    embeddings = spark.read.parquet(str(folder / "embeddings.parquet"))
    evaluator = ClusteringEvaluator()
    began = time.perf_counter()
    for p in range(products):
        features = embeddings.where(F.col("product_id") == f"p{p:05d}").select(
            array_to_vector("embedding").alias("features")
        )
        scores = {}
        for k in range(grouping.k_min, grouping.k_max + 1):
            model = SparkKMeans(k=k, seed=grouping.seed).fit(features)
            scores[k] = evaluator.evaluate(model.transform(features))
        max(scores, key=scores.get)
    return time.perf_counter() - began


def time_sklearn(cfg: Config, folder: Path) -> float:
    grouping = cfg.grouping
    began = time.perf_counter()
    embeddings = pq.read_table(folder / "embeddings.parquet", columns=["product_id", "embedding"])
    products = embeddings["product_id"].to_numpy()
    values = embeddings["embedding"].combine_chunks().flatten().to_numpy().reshape(len(products), -1)
    bounds = np.flatnonzero(np.r_[True, products[1:] != products[:-1], True])
    for start, stop in itertools.pairwise(bounds):
        matrix = values[start:stop].astype(np.float64)
        scores = {}
        for k in range(grouping.k_min, grouping.k_max + 1):
            labels = KMeans(n_clusters=k, n_init=grouping.kmeans_n_init, random_state=grouping.seed).fit_predict(matrix)
            scores[k] = silhouette_score(
                matrix, labels, sample_size=min(grouping.silhouette_sample, len(matrix)), random_state=grouping.seed
            )
        max(scores, key=scores.get)
    return time.perf_counter() - began


def bench_scale(name: str, spark, cfg: Config, workdir: Path, products: int | None, mllib_products: int) -> list[tuple]:
    scale = SCALES[name]
    products = min(products or scale.products, scale.products)
    mllib_products = min(mllib_products, products)
    folder = workdir / name
    print(f"[{name}] writing {products} products of ~{scale.audience:,} users ...", flush=True)
    rows = write_inputs(scale, products, folder)
    applied = time_group_audiences(spark, cfg, folder)
    print(f"[{name}] group_audiences {applied:.1f}s", flush=True)
    looped = time_sklearn(cfg, folder)
    print(f"[{name}] sklearn loop {looped:.1f}s", flush=True)
    mllib = time_mllib(spark, cfg, folder, mllib_products) / mllib_products * products
    print(f"[{name}] MLlib {mllib:.1f}s (extrapolated from {mllib_products} products)", flush=True)
    return [
        (name, rows, "applyInPandas (group_audiences)", applied),
        (name, rows, f"MLlib KMeans per product (x{products / mllib_products:g} of {mllib_products})", mllib),
        (name, rows, "scikit-learn loop, 1 process", looped),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", nargs="+", choices=["demo", "bench"], default=["demo", "bench"])
    parser.add_argument("--products", type=int, help="limit the products per scale (default: all of the scale)")
    parser.add_argument("--mllib-products", type=int, default=20, help="products MLlib runs on, then extrapolated")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "osmf-bench-grouping")
    args = parser.parse_args()

    cfg = load_config(overrides=["spark.show_progress=false"])
    spark = get_spark(cfg, app_name="osmf-bench-grouping")
    bench_scale("warmup", spark, cfg, args.workdir, None, 1)  # JVM, Python workers, imports; not reported
    rows = [
        row
        for scale in args.scales
        for row in bench_scale(scale, spark, cfg, args.workdir, args.products, args.mllib_products)
    ]

    header = ("scale", "rows", "method", "seconds", "rows/s", "ratio vs applyInPandas")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    baseline = {scale: seconds for scale, _, method, seconds in rows if method.startswith("applyInPandas")}
    for scale, count, method, seconds in rows:
        ratio = seconds / baseline[scale]
        print(f"| {scale} | {count:,} | {method} | {seconds:.1f} | {count / seconds:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
