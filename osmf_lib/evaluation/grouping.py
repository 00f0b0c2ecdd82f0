"""How good are the night's groups? Graded against the simulated world's hidden truth.

- Segment recovery: adjusted Rand index between each product's groups and its users' hidden
  segments, for the product-aware PAAG and for the product-agnostic baseline (the same model and
  data with the product context removed), grouped by the same pipeline.
- Group distinctness, K = 1..5: per group, the product's creatives ranked by the group's observed
  CTR, scored with NDCG@5 against the oracle's ranking for the group's members. Gains are the
  oracle CTRs min-max scaled within the product, so NDCG reacts to the order, not to CTR levels.

Only evaluation may read the oracle; results go to `eval_metrics` (stage "grouping") and MLflow.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import functions as F
from sklearn.metrics import adjusted_rand_score

from osmf_lib import tables
from osmf_lib.config import Config
from osmf_lib.evaluation.oracle import sample_products
from osmf_lib.grouping.clustering import cluster_embeddings, embedding_matrix
from osmf_lib.grouping.groups import group_audiences
from osmf_lib.inputs import window
from osmf_lib.job import JobContext, StageError
from osmf_lib.night import PAAG
from osmf_lib.paag.audience import audience_pairs, champion_version, embed_audience
from osmf_lib.synth.oracle import Oracle
from osmf_lib.tables import CREATIVES, IMPRESSIONS, PAAG_EMBEDDINGS, PRODUCTS, USER_GROUPS, USERS, Metric

STAGE = "grouping"
TOP = 5
KS = range(1, 6)


def ari_by_product(groups: pd.DataFrame, oracle: Oracle) -> pd.Series:
    """ARI of each product's groups against its users' hidden segments (index: product_id)."""
    scores = {}
    for product_id, members in groups.groupby("product_id", sort=True):
        truth = oracle.segment_of(product_id, members["user_id"].tolist())
        scores[product_id] = adjusted_rand_score(truth, members["group_id"].to_numpy())
    return pd.Series(scores, dtype=float)


def ndcg_at(observed: np.ndarray, gains: np.ndarray, top: int = TOP) -> float:
    """NDCG@top of the ranking by `observed` (descending), with the true `gains` per item."""
    discounts = 1.0 / np.log2(np.arange(2, min(top, len(gains)) + 2))
    ideal = np.sort(gains)[::-1][: len(discounts)] @ discounts
    if ideal <= 0:
        return 1.0
    # A stable sort on -observed keeps ties in catalogue order, so the score is deterministic.
    ranked = gains[np.argsort(-observed, kind="stable")][: len(discounts)]
    return float(ranked @ discounts / ideal)


def group_ndcg(
    product_id: str, members: pd.DataFrame, labels: np.ndarray, seen: pd.DataFrame, prompts: pd.Series, oracle: Oracle
) -> list[float]:
    """NDCG@5 of every group of one product's clustering (`labels` aligned with `members`)."""
    group_of = pd.Series(labels, index=members["user_id"].to_numpy())
    seen = seen.assign(group=seen["user_id"].map(group_of)).dropna(subset=["group"])
    scores = []
    for group, rows in seen.groupby("group"):
        ctr = rows.groupby("creative_id")["clicked"].mean().reindex(prompts.index, fill_value=0.0)
        users = group_of.index[group_of.to_numpy() == group].tolist()
        truth = np.array([oracle.expected_ctr(product_id, prompt, users) for prompt in prompts])
        spread = truth.max() - truth.min()
        gains = (truth - truth.min()) / spread if spread > 0 else np.ones_like(truth)
        scores.append(ndcg_at(ctr.to_numpy(), gains))
    return scores


def distinctness(
    embedded: pd.DataFrame, seen: pd.DataFrame, creatives: pd.DataFrame, oracle: Oracle, cfg: Config
) -> dict[int, float]:
    """Mean NDCG@5 over every group of every product, for each forced K."""
    per_k: dict[int, list[float]] = {k: [] for k in KS}
    seen_by_product = dict(tuple(seen.groupby("product_id")))
    prompts_by_product = {p: rows.set_index("creative_id")["prompt"] for p, rows in creatives.groupby("product_id")}
    for product_id, members in embedded.groupby("product_id", sort=True):
        if product_id not in seen_by_product or product_id not in prompts_by_product:
            continue
        matrix = embedding_matrix(members, product_id)
        for k in KS:
            if len(members) < k:
                continue
            labels = cluster_embeddings(matrix, cfg.grouping, k=k).labels
            per_k[k] += group_ndcg(
                product_id, members, labels, seen_by_product[product_id], prompts_by_product[product_id], oracle
            )
    return {k: float(np.mean(scores)) for k, scores in per_k.items() if scores}


def _weighted_mean(scores: pd.Series, sizes: pd.Series) -> float:
    weights = sizes.reindex(scores.index).fillna(0)
    return float(np.average(scores, weights=weights)) if weights.sum() else float("nan")


def ari_metrics(models: dict[str, pd.Series], sizes: pd.Series, categories: pd.Series) -> list[Metric]:
    """ARI per model over all products (slice: the model) and per product category ("model/category").

    The per-category slices show *which* segment rules a model recovers: a product-agnostic
    embedding can only score where its one user ordering happens to match a category's rule.
    """
    metrics = []
    for model, scores in models.items():
        metrics.append(Metric("ari", model, _weighted_mean(scores, sizes)))
        for category, members in scores.groupby(categories.reindex(scores.index), sort=True):
            metrics.append(Metric("ari", f"{model}/{category}", _weighted_mean(members, sizes)))
    return metrics


def evaluate(ctx: JobContext, oracle: Oracle) -> list[Metric]:
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    night_groups = tables.read(spark, USER_GROUPS, cfg, ds=ds)
    night_embeddings = tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=ds)
    users, products, creatives = (tables.read(spark, t, cfg, as_of=ds) for t in (USERS, PRODUCTS, CREATIVES))
    chosen = sample_products(night_groups, cfg.evaluate.max_products)
    groups = night_groups.join(chosen, "product_id").toPandas()
    if groups.empty:
        raise StageError(f"user_groups has no rows for ds={ds}: run group_users first")
    sizes = groups.groupby("product_id").size()
    aware = ari_by_product(groups, oracle)

    # The baseline goes through the very same pipeline: embed the same pairs, group them, score them.
    baseline_dir, baseline_version = baseline_model_dir(cfg, ds)
    pairs = night_embeddings.select("product_id", "user_id").join(chosen, "product_id")
    pairs = audience_pairs(pairs, users, products)
    baseline_embedded = embed_audience(spark, pairs, baseline_dir, baseline_version, ds, cfg.models.unreadable_image)
    baseline_groups, _ = group_audiences(baseline_embedded, users, cfg, ds)
    agnostic = ari_by_product(baseline_groups.select("product_id", "user_id", "group_id").toPandas(), oracle)

    embedded = night_embeddings.join(chosen, "product_id").toPandas()
    seen = (
        window(tables.read(spark, IMPRESSIONS, cfg), ds, cfg.paag.lookback_days)
        .join(chosen, "product_id")
        .select("product_id", "user_id", "creative_id", F.col("clicked").cast("double").alias("clicked"))
        .toPandas()
    )
    creatives = (
        creatives.join(chosen, "product_id")
        .select("product_id", "creative_id", "prompt")
        .orderBy("creative_id")
        .toPandas()
    )
    ndcg = distinctness(embedded, seen, creatives, oracle, cfg)

    categories = products.join(chosen, "product_id").select("product_id", "category").toPandas()
    return [
        *ari_metrics(
            {"product_aware": aware, "product_agnostic": agnostic},
            sizes,
            categories.set_index("product_id")["category"],
        ),
        Metric("products", "all", float(len(sizes))),
        *[Metric(f"ndcg_at_{TOP}", f"k={k}", value) for k, value in ndcg.items()],
    ]


def baseline_model_dir(cfg: Config, ds: date) -> tuple[Path, str]:
    """The product-agnostic baseline logged next to the night's osmf-paag champion in its training run."""
    import mlflow
    from mlflow import MlflowClient

    from osmf_lib.paag.registry import ARTIFACT, BASELINE_ARTIFACT

    version = champion_version(cfg, ds)
    run_id = MlflowClient().get_model_version(PAAG.name, version).run_id
    logged = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/{BASELINE_ARTIFACT}")
    return Path(logged) / "artifacts" / ARTIFACT, f"{PAAG.name}/{version} baseline"
