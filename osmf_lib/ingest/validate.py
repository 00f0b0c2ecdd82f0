"""Validation: pure transforms that add a reason to each line (NULL when the line is fine)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import reduce
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from osmf_lib import images
from osmf_lib.config import IngestConfig, Source
from osmf_lib.ingest.read import FILE, KEYS, LATE, POSITION, RAW, REASON, source_columns
from osmf_lib.tables import (
    DS,
    IMPRESSIONS,
    SAFE_ID,
    SAFE_ID_RULE,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


# What an event line carries: the impressions contract less what ingestion adds itself.
EVENT_FIELDS = tuple(c for c in IMPRESSIONS.column_names if c not in (FILE, DS))
# What a source that lacks a column gets (documented in docs/stages/ingest.md#bring-your-own-logs).
DEFAULT_POSITION = 1
ORIGINAL_CREATIVE_SUFFIX = "-original"
ORIGINAL_CREATIVE_PROMPT = "original product image"
# The ids of an event line, each checked against tables.SAFE_ID.
EVENT_IDS = ("user_id", "product_id", "creative_id")


def first_reason(*checks: tuple[Column, Column | str]) -> Column:
    """The reason of the first failing check, so each rejected row states one clear cause."""
    return F.coalesce(
        *[F.when(failed, reason if isinstance(reason, Column) else F.lit(reason)) for failed, reason in checks]
    )


def shape_checks(source: Source, fields: Iterable[str], required: Iterable[str]) -> list[tuple[Column, Column | str]]:
    """Malformed lines, fields outside the mapping (JSON only) and missing required fields."""
    mapped = source_columns(source, fields)
    expected = F.array(*[F.lit(src) for src in mapped.values()])
    checks: list[tuple[Column, Column | str]] = [
        (F.trim(F.col(RAW)) == "", "empty line"),
        (F.col(KEYS).isNull(), "malformed JSON: not a JSON object"),
    ]
    if source.format == "jsonl":
        # Counting the known keys a line has allocates nothing; the set difference, which does
        # on every row (a visible share of the read at bench scale), only names the extra fields.
        known = reduce(Column.__add__, [F.array_contains(F.col(KEYS), src).cast("int") for src in mapped.values()])
        unexpected = F.array_join(F.array_except(F.col(KEYS), expected), ", ")
        checks.append((F.size(KEYS) > known, F.concat(F.lit("unexpected fields: "), unexpected)))
    for field in required:
        if field in mapped:
            checks.append((F.col(field).isNull(), f"missing field: {mapped[field]}"))
    return checks


def unsafe_id(column: str) -> tuple[Column, Column]:
    """An id outside tables.SAFE_ID, quoted in the reason (a control character only named)."""
    value = F.col(column)
    # \z, not $: Java's $ also matches before a final line break.
    unsafe = ~value.rlike(f"^{SAFE_ID}\\z") | value.isin(".", "..")
    shown = F.when(value.rlike(r"\p{Cc}"), F.lit("a control character")).otherwise(
        F.concat(F.lit("'"), F.substring(value, 1, 64), F.lit("'"))
    )
    return (value.isNotNull() & unsafe, F.concat(F.lit(f"unsafe {column}: "), shown, F.lit(f" ({SAFE_ID_RULE})")))


def refused_image(allowed: Sequence[str]) -> tuple[Column, Column]:
    """An image_uri images.refusal refuses under the allowed roots; a blank one is no picture."""
    why = F.udf(lambda uri: images.refusal(uri, allowed) if uri and uri.strip() else None, "string")
    refused = why(F.col("image_uri"))
    return (refused.isNotNull(), F.concat(F.lit("refused image_uri: "), refused))


def _timestamp(raw: Column, fmt: str) -> Column:
    if fmt == "epoch_seconds":
        return F.timestamp_seconds(raw.try_cast("double"))
    if fmt == "epoch_millis":
        return F.timestamp_millis(raw.try_cast("long"))
    return F.try_to_timestamp(raw)


def _clicked(raw: Column, threshold: float | None) -> Column:
    if threshold is not None:
        return raw.try_cast("double") >= F.lit(threshold)
    # The exact spellings first: lower-casing and trimming every line's label costs a copy each.
    text = F.lower(F.trim(raw))
    label = F.when(text.isin("true", "1"), True).when(text.isin("false", "0"), False)
    return F.when(raw.isin("true", "1"), True).when(raw.isin("false", "0"), False).otherwise(label)


def _wrong_type(column: str, what: str) -> tuple[Column, Column]:
    """Text was there but did not convert: type_events keeps the text as `_text_<column>`."""
    text = F.col(f"_text_{column}")
    reason = F.concat(F.lit(f"wrong type: {column}='"), text, F.lit(f"' is not {what}"))
    return (text.isNotNull() & F.col(column).isNull(), reason)


def derived_event_id(raw: Column) -> Column:
    """The id of an event from a source that logs none: a SHA-256 of its line (of its row as JSON
    for a table source), which holds its user, product and time. A redelivered line gets the same
    id and so deduplicates like a real id; identical lines are taken for one event sent twice."""
    return F.sha2(raw, 256)


def type_events(raw: DataFrame, ingest: IngestConfig) -> DataFrame:
    """Give events their types; a source lacking event_id, creative_id or position gets the defaults."""
    has = set(raw.columns)
    event_id = F.col("event_id") if "event_id" in has else derived_event_id(F.col(RAW))
    creative = (
        F.col("creative_id") if "creative_id" in has else F.concat(F.col("product_id"), F.lit(ORIGINAL_CREATIVE_SUFFIX))
    )
    position = F.col("position").try_cast("int") if "position" in has else F.lit(DEFAULT_POSITION)
    return raw.select(
        *[c for c in raw.columns if c not in EVENT_FIELDS],
        *[F.col(c).alias(f"_text_{c}") for c in ("ts", "position", "clicked") if c in has],
        event_id.alias("event_id"),
        _timestamp(F.col("ts"), ingest.timestamp).alias("ts"),
        "user_id",
        "product_id",
        creative.alias("creative_id"),
        position.alias("position"),
        _clicked(F.col("clicked"), ingest.click_threshold).alias("clicked"),
    )


def validate_events(
    raw: DataFrame,
    users: DataFrame,
    products: DataFrame,
    creatives: DataFrame,
    ds: date,
    ingest: IngestConfig,
) -> DataFrame:
    """Add `reason` to every event line: NULL for a valid event, else the first problem found."""
    # Shape is judged on the text as read, before typing turns a bad value into NULL.
    shaped = raw.withColumn("_shape", first_reason(*shape_checks(ingest.events, EVENT_FIELDS, EVENT_FIELDS)))
    typed = type_events(shaped, ingest)
    start = datetime.combine(ds, time(), tzinfo=UTC)
    latest = start + timedelta(days=1, minutes=ingest.max_future_skew_minutes)
    known_users = users.select(F.col("user_id").alias("_user"))
    known_products = products.select(F.col("product_id").alias("_product"))
    known_creatives = creatives.select(
        F.col("creative_id").alias("_creative"), F.col("product_id").alias("_creative_product")
    )
    # No broadcast hint: Spark broadcasts a dimension that is small and shuffles one that is not,
    # so a users table of any size never has to fit in the driver's memory.
    joined = (
        typed.join(known_users, typed["user_id"] == F.col("_user"), "left")
        .join(known_products, typed["product_id"] == F.col("_product"), "left")
        .join(known_creatives, typed["creative_id"] == F.col("_creative"), "left")
    )
    type_checks = [
        _wrong_type(column, what)
        for column, what in (("ts", "a timestamp"), ("position", "an integer"), ("clicked", "a click label"))
        if f"_text_{column}" in typed.columns
    ]
    reason = first_reason(
        (F.col("_shape").isNotNull(), F.col("_shape")),
        *type_checks,
        (F.col("ts") >= F.lit(latest), F.lit(f"future timestamp: after {latest.isoformat()}")),
        *[unsafe_id(column) for column in EVENT_IDS],
        (F.col("_user").isNull(), F.concat(F.lit("unknown user_id: "), F.col("user_id"))),
        (F.col("_product").isNull(), F.concat(F.lit("unknown product_id: "), F.col("product_id"))),
        (F.col("_creative").isNull(), F.concat(F.lit("unknown creative_id: "), F.col("creative_id"))),
        (
            F.col("_creative_product") != F.col("product_id"),
            F.concat(
                F.lit("creative "), F.col("creative_id"), F.lit(" belongs to product "), F.col("_creative_product")
            ),
        ),
    )
    # Lateness is kept apart from the other reasons: a late line that repeats a stored event is
    # a redelivery, counted as a duplicate, not a rejected line (see classify_events).
    too_late = _too_late(start, ingest.max_late_days)
    # Only a line that may be rejected needs its raw text downstream; dropping it from the rest
    # keeps the cached day small.
    maybe_rejected = reason.isNotNull() | too_late.isNotNull()
    return joined.select(
        *POSITION,
        F.when(maybe_rejected, F.col(RAW)).alias(RAW),
        *[c for c in typed.columns if c in EVENT_FIELDS],
        reason.alias(REASON),
        too_late.alias(LATE),
    )


def _too_late(start: datetime, max_late_days: int | None) -> Column:
    """The late-event reason of a line older than `max_late_days` before `start` (None: no limit)."""
    if max_late_days is None:
        return F.lit(None).cast("string")
    earliest = start - timedelta(days=max_late_days)
    return F.when(F.col("ts") < F.lit(earliest), F.lit(f"late event: before {earliest.isoformat()}"))
