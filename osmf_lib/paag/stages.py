"""The PAAG stages on the lakehouse (docs/design.md#paag): who the audience is, what PAAG learns from,
and the product-aware embedding of every (product, user) in a product's audience.

    train_paag             impressions of the look-back window -> osmf-paag (+ its product-agnostic
                           baseline, logged in the same run for evaluation)
    build_paag_embeddings  the night's osmf-paag champion over every product's audience -> paag_embeddings

Both read the dimension tables as the night left them and the model pinned for the night
(osmf_lib.promotion), so a backfill of an old night reproduces its rows.

The torch side lives in osmf_lib.paag; this module only selects data with Spark, moves it in
and out of pandas, and keeps the registry tidy.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date
from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from osmf_lib import promotion, tables, tracking
from osmf_lib.config import Config
from osmf_lib.inputs import PRODUCT_FEATURES, dimension_versions, window
from osmf_lib.job import JobContext, StageError, StageResult, worker_errors_as_stage_errors
from osmf_lib.night import DIMENSIONS, PAAG
from osmf_lib.paag.audience import audience, audience_pairs, champion_model_dir, embed_audience
from osmf_lib.spark import named_in, to_pandas
from osmf_lib.tables import CREATIVES, DS, IMPRESSIONS, PAAG_EMBEDDINGS, PRODUCTS, USER_ATTRIBUTES, USERS

if TYPE_CHECKING:
    from osmf_lib.paag import TrainedPaag

log = logging.getLogger(__name__)

MODEL_NAME = PAAG.name


def training_examples(impressions: DataFrame, users: DataFrame, max_rows: int) -> DataFrame:
    """Impressions with the user's attributes, capped by a stable hash so reruns pick the same rows."""
    attributes = users.select("user_id", *USER_ATTRIBUTES)
    return (
        impressions.select("event_id", "user_id", "product_id", "creative_id", "clicked")
        .join(attributes, "user_id")
        .orderBy(F.xxhash64("event_id"), "event_id")
        .limit(max_rows)
        .drop("event_id")
    )


# ---------------------------------------------------------------------------------------------
# train_paag

METRIC = "val_auroc"


def _training_tags(
    spark: SparkSession, cfg: Config, ds: date, seen: DataFrame, dimensions: dict[str, int]
) -> dict[str, str]:
    """What makes two trainings the same: the night, the window's impressions, the dimensions'
    rows, the model settings and its format."""
    from osmf_lib.paag.model import FORMAT

    seen_print = promotion.fingerprint(seen, ("event_id", "user_id", "product_id", "creative_id", "clicked", DS))
    settings = {
        "paag": cfg.paag.model_dump(mode="json"),
        "models": cfg.models.model_dump(mode="json"),
        "format": FORMAT,
    }
    data = {"impressions": seen_print, **promotion.dimension_prints(spark, cfg, dimensions)}
    return promotion.training_tags(ds, data, settings)


def _register(trained: TrainedPaag, baseline: TrainedPaag, cfg: Config, tags: dict[str, str]) -> str:
    """Log PAAG and its product-agnostic baseline in this run; register PAAG as a tagged challenger."""
    from mlflow import MlflowClient

    from osmf_lib.paag import log_paag
    from osmf_lib.paag.registry import BASELINE_ARTIFACT

    model_uri = log_paag(trained, cfg, name=MODEL_NAME)
    log_paag(baseline, cfg, name=BASELINE_ARTIFACT)
    version = tracking.register(model_uri, MODEL_NAME)
    for key, value in tags.items():
        MlflowClient().set_model_version_tag(MODEL_NAME, version, key, value)
    return version


def held_out_auroc(
    model_version: str, held_out: pd.DataFrame, products: pd.DataFrame, creatives: pd.DataFrame, cfg: Config
) -> float:
    """AUROC of a registered version's click predictions on held-out impressions (NaN with one class)."""
    from sklearn.metrics import roc_auc_score

    from osmf_lib.paag import load_paag

    clicked = held_out["clicked"].to_numpy(dtype=bool)
    if clicked.all() or not clicked.any():
        return float("nan")
    paag = load_paag(f"models:/{MODEL_NAME}/{model_version}", unreadable_image=cfg.models.unreadable_image)
    return float(roc_auc_score(clicked, paag.click_probability(held_out, creatives, products)))


def challenge(
    version: str, examples: pd.DataFrame, products: pd.DataFrame, creatives: pd.DataFrame, cfg: Config, ds: date
) -> promotion.Decision:
    """Score the challenger and the night's champion on the same held-out users; apply the one rule."""
    from osmf_lib.paag import validation_users

    held_out = examples[validation_users(examples["user_id"], cfg.paag.validation_fraction, cfg.paag.seed)]
    champion = promotion.version_for_ds(MODEL_NAME, ds)

    def score(model_version: str) -> float:
        return held_out_auroc(model_version, held_out, products, creatives, cfg)

    return promotion.challenge(MODEL_NAME, METRIC, version, champion, score, cfg)


def training_catalogue(
    spark: SparkSession, cfg: Config, seen: DataFrame, dimensions: dict[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(products, creatives) the window's impressions name, as of the night's dimension versions."""

    def named(table: tables.Table, key: str, *columns: str) -> pd.DataFrame:
        rows = tables.read(spark, table, cfg, version=dimensions[table.name])
        return to_pandas(named_in(rows, seen, key).select(*columns))

    return (
        named(PRODUCTS, "product_id", *PRODUCT_FEATURES),
        named(CREATIVES, "creative_id", "creative_id", "product_id", "prompt"),
    )


def train_paag(ctx: JobContext) -> StageResult:

    from osmf_lib.paag import fit_paag

    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    dimensions = dimension_versions(ctx)
    seen = window(tables.read(spark, IMPRESSIONS, cfg), ds, cfg.paag.lookback_days)
    tags = _training_tags(spark, cfg, ds, seen, dimensions)
    reused = promotion.reusable_version(MODEL_NAME, tags)
    if reused is not None and promotion.TAG_DECISION in reused.tags:
        return promotion.reused("train_paag", reused, ds)

    users = tables.read(spark, USERS, cfg, version=dimensions[USERS.name])
    examples = to_pandas(training_examples(seen, users, cfg.paag.max_train_rows))
    if examples.empty:
        raise StageError(f"no impressions in the {cfg.paag.lookback_days} days up to ds={ds}: nothing to train on")
    products, creatives = training_catalogue(spark, cfg, seen, dimensions)
    tracking.log_table_input(spark, IMPRESSIONS, cfg, context="training")
    for table in DIMENSIONS:
        tracking.log_table_input(spark, table, cfg, context="features", version=dimensions[table.name])

    if reused is None:
        trained = fit_paag(examples, products, creatives, cfg, product_aware=True)
        # The product-agnostic baseline of the evaluation: same model and data, product context removed.
        baseline = fit_paag(examples, products, creatives, cfg, product_aware=False)
        version = _register(trained, baseline, cfg, tags)
        log.info(f"train_paag: {MODEL_NAME} version {version}, val AUROC {trained.metrics['val_auroc']:.3f}")
        skipped = trained.paag.unreadable_images
        if skipped:
            log.info(
                f"train_paag: {len(skipped)} products with an unreadable image, described by text alone: {skipped[:5]}"
            )
    else:
        # Trained by an earlier run of this night that stopped before deciding.
        version = reused.version
    result = promotion.record(spark, cfg, ds, challenge(version, examples, products, creatives, cfg, ds))
    return replace(result, reused=reused is not None)


# ---------------------------------------------------------------------------------------------
# build_paag_embeddings


def build_paag_embeddings(ctx: JobContext) -> StageResult:
    import mlflow

    from osmf_lib.paag import PaagError

    spark, cfg = ctx.spark, ctx.cfg
    model_dir, model_version = champion_model_dir(cfg, ctx.ds)
    seen = window(tables.read(spark, IMPRESSIONS, cfg), ctx.ds, cfg.paag.lookback_days)
    users, products = (tables.read(spark, t, cfg, as_of=ctx.ds) for t in (USERS, PRODUCTS))
    pairs = audience_pairs(audience(seen), users, products)
    embeddings = embed_audience(spark, pairs, model_dir, model_version, ctx.ds, cfg.models.unreadable_image)
    # A product the model cannot use fails in a Python worker: report it, not the JVM's stack.
    with worker_errors_as_stage_errors(PaagError, f"build_paag_embeddings for ds={ctx.ds}"):
        version = tables.overwrite_partition(spark, embeddings, PAAG_EMBEDDINGS, cfg, ctx.ds)
    written = (
        tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=ctx.ds)
        .groupBy()
        .agg(F.count("*").alias("pairs"), F.countDistinct("product_id").alias("products"))
        .first()
    )
    if written["pairs"] == 0:
        log.info(f"build_paag_embeddings: no impressions in the window up to ds={ctx.ds}; the partition is empty")
    log.info(
        f"build_paag_embeddings: {written['pairs']} (product, user) pairs over {written['products']} products "
        f"with {model_version}"
    )
    mlflow.log_metrics({"pairs": written["pairs"], "products": written["products"]})
    mlflow.log_params({"paag_version": model_version, "output.paag_embeddings.version": version})
    return StageResult(written={PAAG_EMBEDDINGS.name: written["pairs"]}, metrics={"products": written["products"]})
