"""How much of a served day's traffic the night's serving reached (stage "serving_coverage"), from
the day's impressions and what osmf-serving answered for them in bulk (serving_assignments).
Recorded by ingest_events when it ingests a day that was assigned; light on purpose: no model."""

from __future__ import annotations

from datetime import date

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from osmf_lib import tables
from osmf_lib.config import Config
from osmf_lib.tables import (
    DS,
    GENERATED,
    GROUPS_DS,
    IMPRESSIONS,
    REASONS,
    SERVING_ASSIGNMENTS,
    SERVING_CREATIVES,
    Metric,
)

STAGE = "serving_coverage"


def coverage(spark: SparkSession, cfg: Config, ds: date) -> list[Metric]:
    """What the day's impressions were assigned in bulk (serving_assignments of ds): over the
    impressions of products the serving night published (grouped), the share answered with a
    creative and with a generated one; over all impressions, the share with a generated one and
    the share of each reason. No metrics when nothing was assigned for the day."""
    if not tables.exists(spark, SERVING_ASSIGNMENTS, cfg):
        return []
    assigned = tables.read(spark, SERVING_ASSIGNMENTS, cfg, ds=ds).drop(DS)
    night = assigned.agg(F.max(GROUPS_DS)).first()[0]
    if night is None:
        return []
    published = tables.read(spark, SERVING_CREATIVES, cfg, ds=night).select("product_id").distinct()
    seen = (
        tables.read(spark, IMPRESSIONS, cfg, ds=ds)
        .select("product_id", "user_id")
        .join(assigned, ["product_id", "user_id"], "left")
        .join(published.withColumn("_published", F.lit(True)), "product_id", "left")
    )
    flag = {
        "published": F.col("_published").isNotNull(),
        "creative": F.col("_published").isNotNull() & F.col("creative_id").isNotNull(),
        "generated": F.col("_published").isNotNull() & (F.col("origin") == GENERATED),
        "generated_all": F.col("origin") == GENERATED,
        **{f"reason_{r}": F.col("reason") == r for r in REASONS},
    }
    counts = seen.agg(
        F.count("*").alias("impressions"), *(F.count(F.when(c, True)).alias(name) for name, c in flag.items())
    ).first()
    total, published_n = counts["impressions"], counts["published"]

    def share(n: int, of: int) -> float:
        return n / of if of else 0.0

    return [
        Metric("impressions", "all", float(total)),
        Metric("impressions", "published", float(published_n)),
        Metric("coverage", "creative", share(counts["creative"], published_n)),
        Metric("coverage", "generated", share(counts["generated"], published_n)),
        Metric("generated_share", "all", share(counts["generated_all"], total)),
        *(Metric("reason_share", r, share(counts[f"reason_{r}"], total)) for r in REASONS),
    ]
