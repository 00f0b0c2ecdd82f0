"""A night's audience, embedded with Spark: who saw each product in the look-back window, the
(product, user) pairs with what PAAG reads, and the night's pinned champion shipped to the
executors to embed them. build_paag_embeddings writes the result; evaluate_grouping embeds the
same pairs with the product-agnostic baseline.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from osmf_lib import promotion
from osmf_lib.config import Config
from osmf_lib.night import PAAG
from osmf_lib.spark import ship_folder
from osmf_lib.tables import DS, PAAG_EMBEDDINGS, USER_ATTRIBUTES


def audience(impressions: DataFrame) -> DataFrame:
    """A product's audience: every user with an impression on it in the window."""
    return impressions.select("product_id", "user_id").distinct()


def audience_pairs(members: DataFrame, users: DataFrame, products: DataFrame) -> DataFrame:
    """(product, user) pairs with what the model reads: user attributes and the product's text and image."""
    product_columns = products.select(
        "product_id",
        F.col("title").alias("product_title"),
        F.col("category").alias("product_category"),
        F.col("image_uri").alias("product_image_uri"),
    )
    return members.join(users.select("user_id", *USER_ATTRIBUTES), "user_id").join(product_columns, "product_id")


LOADED: dict[str, object] = {}  # model folder name -> Paag, per Python worker process


def _embedder(model_dir: str, model_version: str, ds: date, unreadable_image: str):
    """A mapInPandas function that loads the model once per Python worker and embeds in batches."""

    def embed_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import SparkFiles

        # Imported, not captured: the closure is pickled by value, the module's cache is not.
        from osmf_lib.paag import Paag, embed
        from osmf_lib.paag.audience import LOADED

        if model_dir not in LOADED:
            LOADED[model_dir] = Paag.load(Path(SparkFiles.get(model_dir)), unreadable_image=unreadable_image)
        model = LOADED[model_dir]
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


def champion_version(cfg: Config, ds: date) -> str:
    """The version that is champion for night `ds` (promotion.version_for_ds); fails clearly without one."""
    return promotion.pinned_version(cfg, PAAG.name, ds, "train_paag")


def champion_model_dir(cfg: Config, ds: date) -> tuple[Path, str]:
    """Download the night's champion's torch folder; returns it with its lineage name ("osmf-paag/3")."""
    from osmf_lib.paag.registry import ARTIFACT

    folder, version = promotion.pinned_folder(cfg, PAAG.name, ds, ARTIFACT, "train_paag")
    return folder, f"{PAAG.name}/{version}"


def embed_audience(
    spark: SparkSession, pairs: DataFrame, model_dir: Path, model_version: str, ds: date, unreadable_image: str
) -> DataFrame:
    """Embed every pair with the model shipped to the executors."""
    embedder = _embedder(ship_folder(spark, model_dir, "paag"), model_version, ds, unreadable_image)
    return pairs.mapInPandas(embedder, PAAG_EMBEDDINGS.schema())
