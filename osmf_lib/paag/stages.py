"""The PAAG stages on the lakehouse (DESIGN §6.2): who the audience is, what PAAG learns from,
and the product-aware embedding of every (product, user) in a product's audience.

    train_paag             impressions of the look-back window -> osmf-paag (+ its product-agnostic
                           baseline, logged in the same run for evaluation)
    build_paag_embeddings  osmf-paag@champion over every product's audience -> paag_embeddings

The torch side lives in osmf_lib.paag; this module only selects data with Spark, moves it in
and out of pandas, and keeps the registry tidy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from osmf_lib import tables, tracking
from osmf_lib.config import Config
from osmf_lib.job import JobContext, StageError
from osmf_lib.tables import CREATIVES, DS, IMPRESSIONS, PAAG_EMBEDDINGS, PRODUCTS, USER_ATTRIBUTES, USERS

MODEL_NAME = "osmf-paag"
BASELINE_ARTIFACT = "osmf-paag-baseline"
# Model version tags that make a rerun of the same night, on the same data and settings, reuse
# its model instead of training anew.
TAG_TRAINED_FOR = "osmf.trained_for_ds"
TAG_DATA_VERSION = "osmf.impressions_version"
TAG_SETTINGS = "osmf.training_settings"


def window(impressions: DataFrame, ds: date, lookback_days: int) -> DataFrame:
    """Impressions of the `lookback_days` days ending with ds."""
    first = ds - timedelta(days=lookback_days - 1)
    return impressions.where(F.col(DS).between(F.lit(first), F.lit(ds)))


def audience(impressions: DataFrame) -> DataFrame:
    """A product's audience: every user with an impression on it in the window."""
    return impressions.select("product_id", "user_id").distinct()


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


def audience_pairs(members: DataFrame, users: DataFrame, products: DataFrame) -> DataFrame:
    """(product, user) pairs with what the model reads: user attributes and the product's text and image."""
    product_columns = products.select(
        "product_id",
        F.col("title").alias("product_title"),
        F.col("category").alias("product_category"),
        F.col("image_uri").alias("product_image_uri"),
    )
    return members.join(users.select("user_id", *USER_ATTRIBUTES), "user_id").join(product_columns, "product_id")


def _to_pandas(df: DataFrame) -> pd.DataFrame:
    # Spark hands arrays over as numpy arrays; the model's vocabularies want plain lists.
    frame = df.toPandas()
    if "interests" in frame:
        frame["interests"] = frame["interests"].map(lambda v: [] if v is None else list(v))
    return frame


# ---------------------------------------------------------------------------------------------
# train_paag


def _training_tags(cfg: Config, ds: date, data_version: int) -> dict[str, str]:
    """What makes two trainings the same: the night, the data, the model settings and its format."""
    from osmf_lib.paag.model import FORMAT

    settings = json.dumps(
        {"paag": cfg.paag.model_dump(mode="json"), "models": cfg.models.model_dump(mode="json"), "format": FORMAT}
    )
    return {
        TAG_TRAINED_FOR: ds.isoformat(),
        TAG_DATA_VERSION: str(data_version),
        TAG_SETTINGS: hashlib.sha256(settings.encode()).hexdigest()[:16],
    }


def _reusable_version(tags: dict[str, str]) -> str | None:
    """A version already trained with exactly these tags, so a rerun changes nothing."""
    from mlflow import MlflowClient

    for version in MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'"):
        if all(version.tags.get(key) == value for key, value in tags.items()):
            return str(version.version)
    return None


def train_paag(ctx: JobContext) -> None:
    import mlflow
    from mlflow import MlflowClient

    from osmf_lib.paag import fit_paag, log_paag

    spark, cfg = ctx.spark, ctx.cfg
    data_version = tracking.log_table_input(spark, IMPRESSIONS, cfg, context="training")
    tags = _training_tags(cfg, ctx.ds, data_version)
    reused = _reusable_version(tags)
    if reused is not None:
        print(f"train_paag: {MODEL_NAME} version {reused} was trained for ds={ctx.ds} on the same data and settings")
        mlflow.set_tag("osmf.reused_version", reused)
        return
    seen = window(tables.read(spark, IMPRESSIONS, cfg), ctx.ds, cfg.paag.lookback_days)
    examples = _to_pandas(training_examples(seen, tables.read(spark, USERS, cfg), cfg.paag.max_train_rows))
    if examples.empty:
        raise StageError(f"no impressions in the {cfg.paag.lookback_days} days up to ds={ctx.ds}: nothing to train on")
    products = _to_pandas(tables.read(spark, PRODUCTS, cfg).select("product_id", "title", "category", "image_uri"))
    creatives = _to_pandas(tables.read(spark, CREATIVES, cfg).select("creative_id", "product_id", "prompt"))
    for context, table in (("features", USERS), ("features", PRODUCTS), ("features", CREATIVES)):
        tracking.log_table_input(spark, table, cfg, context=context)

    trained = fit_paag(examples, products, creatives, cfg, product_aware=True)
    model_uri = log_paag(trained, cfg, name=MODEL_NAME)
    # The product-agnostic baseline of the evaluation: same model and data, product context removed.
    log_paag(fit_paag(examples, products, creatives, cfg, product_aware=False), cfg, name=BASELINE_ARTIFACT)

    version = tracking.register(model_uri, MODEL_NAME)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    promoted = tracking.promote_if_better(
        MODEL_NAME, version, metric="paag.val_auroc", min_improvement=cfg.evaluate.min_improvement
    )
    verdict = "champion" if promoted else "challenger (the champion validates better)"
    print(f"train_paag: {MODEL_NAME} version {version}, val AUROC {trained.metrics['val_auroc']:.3f} -> {verdict}")


# ---------------------------------------------------------------------------------------------
# build_paag_embeddings


_LOADED: dict[str, object] = {}  # model folder name -> Paag, per Python worker process


def _embedder(model_dir: str, model_version: str, ds: date):
    """A mapInPandas function that loads the model once per Python worker and embeds in batches."""

    def embed_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import SparkFiles

        # Imported, not captured: the closure is pickled by value, the module's cache is not.
        from osmf_lib.paag import Paag, embed, stages

        if model_dir not in stages._LOADED:
            stages._LOADED[model_dir] = Paag.load(Path(SparkFiles.get(model_dir)))
        model = stages._LOADED[model_dir]
        for batch in batches:
            batch["interests"] = batch["interests"].map(lambda v: [] if v is None else list(v))
            vectors = embed(model, batch)
            yield pd.DataFrame(
                {
                    "product_id": batch["product_id"],
                    "user_id": batch["user_id"],
                    "embedding": list(vectors.astype("float32")),
                    "paag_version": model_version,
                    DS: ds,
                }
            )

    return embed_batches


def champion_version(cfg: Config) -> str:
    """The version osmf-paag@champion points at; fails clearly when there is none yet."""
    tracking.configure(cfg)
    version = tracking.alias_version(MODEL_NAME)
    if version is None:
        raise StageError(f"{MODEL_NAME} has no champion yet: run train_paag first (models:/{MODEL_NAME}@champion)")
    return version


def champion_model_dir(cfg: Config) -> tuple[Path, str]:
    """Download osmf-paag@champion's torch folder; returns it with the version it came from."""
    import mlflow

    from osmf_lib.paag.registry import ARTIFACT

    version = champion_version(cfg)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{version}"))
    return local / "artifacts" / ARTIFACT, f"{MODEL_NAME}/{version}"


def embed_audience(spark: SparkSession, pairs: DataFrame, model_dir: Path, model_version: str, ds: date) -> DataFrame:
    """Embed every pair with the model shipped to the executors (local folder, HDFS or object store alike)."""
    # Spark refuses a second, different folder under a name it already ships: make each name unique.
    shipped = Path(tempfile.mkdtemp(prefix="osmf-paag-")) / f"paag-{uuid.uuid4().hex}"
    shutil.copytree(model_dir, shipped)
    spark.sparkContext.addFile(str(shipped), recursive=True)
    return pairs.mapInPandas(_embedder(shipped.name, model_version, ds), PAAG_EMBEDDINGS.schema())


def build_paag_embeddings(ctx: JobContext) -> None:
    import mlflow

    spark, cfg = ctx.spark, ctx.cfg
    model_dir, model_version = champion_model_dir(cfg)
    seen = window(tables.read(spark, IMPRESSIONS, cfg), ctx.ds, cfg.paag.lookback_days)
    pairs = audience_pairs(audience(seen), tables.read(spark, USERS, cfg), tables.read(spark, PRODUCTS, cfg))
    embeddings = embed_audience(spark, pairs, model_dir, model_version, ctx.ds)
    version = tables.overwrite_partition(spark, embeddings, PAAG_EMBEDDINGS, cfg, ctx.ds)
    written = (
        tables.read(spark, PAAG_EMBEDDINGS, cfg, ds=ctx.ds)
        .groupBy()
        .agg(F.count("*").alias("pairs"), F.countDistinct("product_id").alias("products"))
        .first()
    )
    if written["pairs"] == 0:
        print(f"build_paag_embeddings: no impressions in the window up to ds={ctx.ds}; the partition is empty")
    print(
        f"build_paag_embeddings: {written['pairs']} (product, user) pairs over {written['products']} products "
        f"with {model_version}"
    )
    mlflow.log_metrics({"pairs": written["pairs"], "products": written["products"]})
    mlflow.log_params({"paag_version": model_version, "output.paag_embeddings.version": version})
