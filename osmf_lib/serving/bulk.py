"""Bulk assignment: a day of (user, product) requests through a night's osmf-serving in Spark, for a
feed, a backfill or the simulated world's closed loop (`osmf synth serve`).

    assign_requests(spark, requests, model_dir)  -> product_id, user_id and what the model answered
    assign_day(spark, cfg, night, day, requests)  -> serving_assignments of `day` from night's model

Each Python worker loads the model once and answers its batches with `ServingNight.assign`, the
same function the scoring server calls, so a bulk answer and an HTTP answer never differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from osmf_lib import promotion, tables
from osmf_lib.config import Config
from osmf_lib.serving.model import OUTPUT_COLUMNS
from osmf_lib.serving.registry import ARTIFACT, MODEL_NAME
from osmf_lib.spark import ship_folder
from osmf_lib.tables import DS, SERVING_ASSIGNMENTS

_LOADED: dict[str, object] = {}  # shipped folder name -> ServingNight, per Python worker process


def _assigner(folder: str):
    def assign_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import SparkFiles

        # Imported, not captured: the closure is pickled by value, the module's cache is not.
        from osmf_lib.serving import bulk
        from osmf_lib.serving.model import ServingNight

        if folder not in bulk._LOADED:
            bulk._LOADED[folder] = ServingNight.load(Path(SparkFiles.get(folder)))
        night = bulk._LOADED[folder]
        for batch in batches:
            answered = night.assign(batch.reset_index(drop=True))
            answered["groups_ds"] = pd.to_datetime(answered["groups_ds"]).dt.date
            yield pd.concat([batch[["product_id", "user_id"]].reset_index(drop=True), answered], axis=1)

    return assign_batches


def output_schema() -> StructType:
    """product_id, user_id and what the model answers, typed as serving_assignments holds them."""
    fields = {f.name: f for f in SERVING_ASSIGNMENTS.schema().fields}
    return StructType([fields[name] for name in ("product_id", "user_id", *OUTPUT_COLUMNS)])


def assign_requests(spark: SparkSession, requests: DataFrame, model_dir: Path) -> DataFrame:
    """Each request (product_id, user_id and any user attributes) with its group, creative and
    reason from the osmf-serving folder `model_dir` (the `serving` artifact of a logged version)."""
    return requests.mapInPandas(_assigner(ship_folder(spark, model_dir, "serving")), output_schema())


def assign_day(spark: SparkSession, cfg: Config, night: date, day: date, requests: DataFrame) -> int:
    """Answer `day`'s distinct (product, user) requests with the osmf-serving pinned for `night` and
    replace serving_assignments' `day` partition with the answers; returns the table version."""
    folder, _ = promotion.pinned_folder(cfg, MODEL_NAME, night, ARTIFACT, "evaluate_and_publish")
    pairs = requests.dropDuplicates(["product_id", "user_id"])
    answered = assign_requests(spark, pairs, folder).withColumn(DS, F.lit(day))
    return tables.overwrite_partition(spark, answered, SERVING_ASSIGNMENTS, cfg, day)
