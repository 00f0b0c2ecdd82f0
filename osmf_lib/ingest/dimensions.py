"""The dimension files (users, products, creatives): validation into the tables' columns, and the
original creative every product gets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from osmf_lib.config import Source
from osmf_lib.ingest.read import ACCEPTED, DUPLICATE, POSITION, RAW, REASON, REJECTED, STATUS
from osmf_lib.ingest.validate import ORIGINAL_CREATIVE_PROMPT, first_reason, refused_image, shape_checks, unsafe_id
from osmf_lib.tables import (
    CREATIVES,
    LOGGED,
    PRODUCTS,
    USERS,
    Table,
)

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass(frozen=True)
class Dimension:
    table: Table
    source_attr: str  # the IngestConfig field describing its landing file
    required: tuple[str, ...]
    ids: tuple[str, ...]  # checked against tables.SAFE_ID


DIMENSIONS = (
    Dimension(USERS, "users", ("user_id",), ("user_id",)),
    Dimension(PRODUCTS, "products", ("product_id", "title", "category"), ("product_id",)),
    Dimension(CREATIVES, "creatives", ("creative_id", "product_id", "prompt"), ("creative_id", "product_id")),
)


def _bucketed(text: Column, edges: list[float], labels: list[str]) -> Column:
    value = text.try_cast("double")
    banded = reduce(
        lambda acc, i: acc.when(value < edges[i], labels[i]), range(len(edges)), F.when(value.isNull(), None)
    )
    return banded.otherwise(labels[-1])


def validate_dimension(
    raw: DataFrame, dim: Dimension, source: Source, ds: date, image_roots: Sequence[str]
) -> DataFrame:
    """Type a dimension file to its table and classify each line; the last valid line of a key
    wins. Ids must be safe and an image_uri must lie under `image_roots` (see images.roots)."""
    columns = [c for c in dim.table.column_names if c != "updated_ds"]
    values = {}
    for column in columns:
        text = F.col(column) if column in raw.columns else F.lit(None).cast("string")
        if column in source.buckets:
            values[column] = _bucketed(text, source.buckets[column].edges, source.buckets[column].labels)
        elif column == "interests":
            # JSON lists arrive as '["a","b"]'; flat files write "a|b".
            values[column] = F.when(text.startswith("["), F.from_json(text, "ARRAY<STRING>")).otherwise(
                F.split(text, r"\|")
            )
        elif column == "origin":
            values[column] = F.coalesce(text, F.lit(LOGGED))
        else:
            values[column] = text
    key = dim.table.keys[0]
    latest_first = Window.partitionBy(key).orderBy(F.col(REASON).isNotNull(), *[F.col(c).desc() for c in POSITION])
    status = (
        F.when(F.col(REASON).isNotNull(), REJECTED)
        .when(F.row_number().over(latest_first) > 1, DUPLICATE)
        .otherwise(ACCEPTED)
    )
    checks = [*shape_checks(source, columns, dim.required), *[unsafe_id(column) for column in dim.ids]]
    if "image_uri" in raw.columns:
        checks.append(refused_image(image_roots))
    return (
        raw.select("*", first_reason(*checks).alias(REASON))
        .select(*POSITION, RAW, REASON, *[v.alias(k) for k, v in values.items()], F.lit(ds).alias("updated_ds"))
        .withColumn(STATUS, status)
    )


def original_creatives(events: DataFrame, ds: date) -> DataFrame:
    """One creative per product for sources that log no creative (see DEFAULT_* above)."""
    return (
        events.select("product_id", "creative_id")
        .distinct()
        .select(
            "creative_id",
            "product_id",
            F.lit(ORIGINAL_CREATIVE_PROMPT).alias("prompt"),
            F.lit(None).cast("string").alias("image_uri"),
            F.lit(LOGGED).alias("origin"),
            F.lit(ds).alias("updated_ds"),
        )
    )
