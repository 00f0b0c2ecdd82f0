"""Ingest one day of landing files into the lakehouse (docs/design.md#ingest).

    {landing}/{ds}/events/...        impressions (JSON lines by default; CSV, TSV or Parquet by mapping)
    {landing}/{ds}/dims/...          users, products, creatives: upserts, each file optional
    {landing}/{ds}/synth-manifest.json   the simulated world's (seed, scale): `landing_manifests`

Every line read ends up in exactly one place: its table (`impressions` or the dimension's),
`rejected_events` (with its file, line and reason) or the duplicate count. The job checks
`read = accepted + rejected + duplicates` for the events and for each dimension file, and fails
if it does not hold. An external log in another schema comes in through
`ingest.<source>.columns` (and buckets, timestamp format, click threshold) in the config.

Transforms are pure DataFrame functions; `stage_day` is the only place that reads landing files
and `publish_day` the only one that writes tables (write-audit-publish: `ingest_day`).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import reduce
from itertools import pairwise
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from osmf_lib import images, quality, tables
from osmf_lib.config import Config, IngestConfig, Source
from osmf_lib.job import JobContext, StageError
from osmf_lib.quality import Check
from osmf_lib.serving import coverage
from osmf_lib.spark import path_exists
from osmf_lib.tables import (
    CREATIVES,
    DS,
    IMPRESSIONS,
    LANDING_MANIFESTS,
    LOGGED,
    PRODUCTS,
    REJECTED_EVENTS,
    SAFE_ID,
    SAFE_ID_RULE,
    USER_ATTRIBUTES,
    USERS,
    Table,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

    from pyspark.sql import Row

# Columns every read source carries next to its data, for lineage and rejects.
FILE, LINE, RAW, KEYS = "source_file", "line_number", "raw", "_keys"
# Where a row sits until it needs a line number (only rejected rows do): its file split and row id.
SPLIT, ROW = "_split", "_row"
POSITION = (FILE, SPLIT, ROW)
REASON, STATUS, LATE = "reason", "_status", "_late"
ACCEPTED, REJECTED, DUPLICATE = "accepted", "rejected", "duplicate"

# What an event line carries: the impressions contract less what ingestion adds itself.
EVENT_FIELDS = tuple(c for c in IMPRESSIONS.column_names if c not in (FILE, DS))
# What a source that lacks a column gets (documented in docs/stages/ingest.md#bring-your-own-logs).
DEFAULT_POSITION = 1
ORIGINAL_CREATIVE_SUFFIX = "-original"
ORIGINAL_CREATIVE_PROMPT = "original product image"
# The manifest the simulated world writes beside a day's landing files (osmf_lib.synth.landing).
# Named here rather than imported, so that ingesting real logs never loads the simulator.
MANIFEST_FILE = "synth-manifest.json"
# A night's valid events fall on one to three dates (the day and its late lines), one event-time
# range each; a history of months would otherwise put hundreds of ranges into the
# deduplication's filter, which every stored file's statistics and every stored row is tested on.
MAX_TIME_RANGES = 8


# The ids of an event line, each checked against tables.SAFE_ID.
EVENT_IDS = ("user_id", "product_id", "creative_id")


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


@dataclass(frozen=True)
class Reconciliation:
    """A source's lines as read (counted from the row ids the scan gave each file split) against
    their fates after validation and deduplication, so a join that multiplied rows cannot pass."""

    read: int
    accepted: int
    rejected: int
    duplicates: int

    @classmethod
    def of(cls, read: int, fates: Mapping[str, int]) -> Reconciliation:
        """From the lines read and the number of lines per status."""
        return cls(read, fates.get(ACCEPTED, 0), fates.get(REJECTED, 0), fates.get(DUPLICATE, 0))

    @property
    def balanced(self) -> bool:
        return self.read == self.accepted + self.rejected + self.duplicates

    def line(self, what: str) -> str:
        verdict = "ok" if self.balanced else "DOES NOT ADD UP"
        return (
            f"{what}: read {self.read} = accepted {self.accepted} + rejected {self.rejected} "
            f"+ duplicates {self.duplicates} ({verdict})"
        )

    def checked(self, what: str) -> Reconciliation:
        """Print the line, and fail when it does not add up: callers check before they write."""
        print(self.line(what))
        if not self.balanced:
            raise StageError(f"reconciliation failed, nothing of it written: {self.line(what)}")
        return self


# ---------------------------------------------------------------------------------------------
# Reading: any source format -> one row per line with our column names, all as text.


def source_location(cfg: Config, ds: date, source: Source) -> str:
    return f"{cfg.lakehouse.landing.rstrip('/')}/{ds.isoformat()}/{source.path}"


def source_columns(source: Source, fields: Iterable[str]) -> dict[str, str]:
    """Our column -> the source's column, for the fields the source has (null-mapped are absent)."""
    mapped = {}
    for field in fields:
        name = source.buckets[field].column if field in source.buckets else source.columns.get(field, field)
        if name is not None:
            mapped[field] = name
    return mapped


@dataclass(frozen=True)
class Landed:
    """A landing source read as rows in file order; `LineNumbers` numbers them later."""

    rows: DataFrame
    header_lines: int


def _positioned(df: DataFrame) -> DataFrame:
    """Add where each row sits: its file, the file split it was read from, and a row id."""
    return df.select(
        "*",
        F.col("_metadata.file_path").alias(FILE),
        F.col("_metadata.file_block_start").alias(SPLIT),
        F.monotonically_increasing_id().alias(ROW),
    )


def split_extent() -> tuple[Column, Column]:
    """The aggregates over (FILE, SPLIT, ...) groups that LineNumbers.of reads."""
    return F.min(ROW).alias("_first"), F.max(ROW).alias("_last")


def _widest(rows: Iterable[Row], key: Callable[[Row], Hashable], first: str, last: str) -> dict:
    """Per key, the smallest `first` and the largest `last` over summary rows that share keys."""
    spans: dict = {}
    for row in rows:
        low, high = spans.get(key(row), (row[first], row[last]))
        spans[key(row)] = (min(low, row[first]), max(high, row[last]))
    return spans


@dataclass(frozen=True)
class LineNumbers:
    """Turns (file, split, row id) into the 1-based line number, exact even when a file is split.

    The rows of one file split are read in order into one partition, so their
    monotonically_increasing_id values are consecutive: a line's number is its id's offset from
    the split's first row plus the lines of the file's earlier splits. The extents come from a
    small aggregation over rows the stage caches anyway, so numbering costs no extra read of the
    day; only rejected rows are ever numbered.
    """

    offsets: tuple[tuple[str, int, int], ...]  # (file, split, row id of the split's line 0)
    lines: int  # lines read (rows, for a table source), headers not counted

    @classmethod
    def of(cls, extents: Iterable[Row], header_lines: int = 0) -> LineNumbers:
        """From rows of (FILE, SPLIT, _first, _last), several per split allowed (any extra grouping)."""
        spans = _widest(extents, lambda row: (row[FILE], row[SPLIT]), "_first", "_last")
        offsets, before, file = [], 0, None
        for (path, split), (first, last) in sorted(spans.items()):
            before = before if path == file else header_lines
            offsets.append((path, split, first - before))
            before, file = before + last - first + 1, path
        return cls(tuple(offsets), sum(last - first + 1 for first, last in spans.values()))

    def apply(self, spark: SparkSession, df: DataFrame) -> DataFrame:
        """Replace SPLIT and ROW with LINE."""
        offsets = spark.createDataFrame(list(self.offsets), f"{FILE} STRING, {SPLIT} LONG, _offset LONG")
        return (
            df.join(F.broadcast(offsets), [FILE, SPLIT], "left")
            .withColumn(LINE, (F.col(ROW) - F.col("_offset") + 1).cast("long"))
            .drop(SPLIT, ROW, "_offset")
        )


def read_source(spark: SparkSession, location: str, source: Source, fields: Iterable[str]) -> Landed:
    """Read a landing source into (source_file, _split, _row, raw, _keys, <our fields as STRING>).

    `_keys` lists the fields a JSON line really has (NULL when the line is not a JSON object), so
    missing, extra and malformed input can be told apart later.
    """
    mapped = source_columns(source, fields)
    if source.format == "jsonl":
        lines = _positioned(spark.read.text(location))
        # One parse into a map gives every field as text and the keys the line really has
        # (NULL when it is not a JSON object), which tells missing, extra and malformed apart.
        parsed = lines.select(
            *POSITION, F.col("value").alias(RAW), F.from_json("value", "MAP<STRING, STRING>").alias("_map")
        )
        keyed = parsed.select(
            *POSITION,
            RAW,
            F.map_keys("_map").alias(KEYS),
            *[F.col("_map").getItem(src).alias(ours) for ours, src in mapped.items()],
        )
        return Landed(keyed, header_lines=0)
    if source.format in ("csv", "tsv"):
        separator = source.separator or ("\t" if source.format == "tsv" else ",")
        frame = spark.read.option("header", source.header).option("sep", separator).csv(location)
        header_lines = 1 if source.header else 0
    else:
        frame = spark.read.parquet(location)
        header_lines = 0
    missing = sorted(set(mapped.values()) - set(frame.columns))
    if missing:
        raise StageError(
            f"{location}: the mapping names columns {missing} that the file does not have "
            f"(it has {sorted(frame.columns)}); fix ingest.<source>.columns"
        )
    keyed = _positioned(frame).select(
        *POSITION,
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in frame.columns])).alias(RAW),
        F.array(*[F.lit(src) for src in mapped.values()]).alias(KEYS),
        *[F.col(f"`{src}`").cast("string").alias(ours) for ours, src in mapped.items()],
    )
    return Landed(keyed, header_lines)


# ---------------------------------------------------------------------------------------------
# Validation: pure transforms that add a reason (NULL when the row is fine).


def _first_reason(*checks: tuple[Column, Column | str]) -> Column:
    """The reason of the first failing check, so each rejected row states one clear cause."""
    return F.coalesce(
        *[F.when(failed, reason if isinstance(reason, Column) else F.lit(reason)) for failed, reason in checks]
    )


def _shape_checks(source: Source, fields: Iterable[str], required: Iterable[str]) -> list[tuple[Column, Column | str]]:
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


def _unsafe_id(column: str) -> tuple[Column, Column]:
    """An id outside tables.SAFE_ID, quoted in the reason (a control character only named)."""
    value = F.col(column)
    # \z, not $: Java's $ also matches before a final line break.
    unsafe = ~value.rlike(f"^{SAFE_ID}\\z") | value.isin(".", "..")
    shown = F.when(value.rlike(r"\p{Cc}"), F.lit("a control character")).otherwise(
        F.concat(F.lit("'"), F.substring(value, 1, 64), F.lit("'"))
    )
    return (value.isNotNull() & unsafe, F.concat(F.lit(f"unsafe {column}: "), shown, F.lit(f" ({SAFE_ID_RULE})")))


def _refused_image(allowed: Sequence[str]) -> tuple[Column, Column]:
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
    shaped = raw.withColumn("_shape", _first_reason(*_shape_checks(ingest.events, EVENT_FIELDS, EVENT_FIELDS)))
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
    reason = _first_reason(
        (F.col("_shape").isNotNull(), F.col("_shape")),
        *type_checks,
        (F.col("ts") >= F.lit(latest), F.lit(f"future timestamp: after {latest.isoformat()}")),
        *[_unsafe_id(column) for column in EVENT_IDS],
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


def survey_events(validated: DataFrame) -> DataFrame:
    """One small summary of the validated day: each file split's row ids (for LineNumbers), and
    per event date the first and last time of the lines that passed validation (for `repeatable`)."""
    valid_ts = F.when(F.col(REASON).isNull(), F.col("ts"))
    return validated.groupBy(FILE, SPLIT, F.to_date(valid_ts).alias("_date")).agg(
        *split_extent(),
        F.unix_micros(F.min(valid_ts)).alias("_from"),
        F.unix_micros(F.max(valid_ts)).alias("_to"),
    )


def event_times(survey: Iterable[Row]) -> list[tuple[int, int]]:
    """(first, last) event time in microseconds, per date the day's valid lines fall on; over
    MAX_TIME_RANGES dates (a history), the nearest dates' ranges are merged."""
    valid = (row for row in survey if row["_date"] is not None)
    return merge_closest(sorted(_widest(valid, lambda row: row["_date"], "_from", "_to").values()), MAX_TIME_RANGES)


def merge_closest(ranges: list[tuple[int, int]], most: int) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges as at most `most` ranges, cut at the widest gaps between them.

    A merged range also covers the gaps it spans, so deduplication reads a few more stored events
    than it needs, never fewer; cutting at the widest gaps keeps those extra events fewest.
    """
    if len(ranges) <= most:
        return ranges
    by_gap = sorted(range(1, len(ranges)), key=lambda i: ranges[i][0] - ranges[i - 1][1])
    cuts = [0, *sorted(by_gap[len(ranges) - most :]), len(ranges)]
    return [(ranges[start][0], ranges[end - 1][1]) for start, end in pairwise(cuts)]


def repeatable(stored: DataFrame, times: Iterable[tuple[int, int]]) -> DataFrame:
    """The stored events a line of the day can repeat: those within the day's event times.

    An event id names one event, which happened at one time, so a redelivery carries its stored
    copy's `ts`. Filtering on `ts` lets Delta skip every file whose time statistics miss the
    day's times, which keeps the deduplication's cost to the days the lines are about instead of
    growing with the whole history.
    """
    ranges = [
        F.col("ts").between(F.timestamp_micros(F.lit(first)), F.timestamp_micros(F.lit(last))) for first, last in times
    ]
    return stored.where(reduce(Column.__or__, ranges)) if ranges else stored.limit(0)


def repeated_ids(validated: DataFrame, stored_elsewhere: DataFrame) -> DataFrame:
    """The ids that can make a valid line a duplicate: (event_id, _lines, _stored), a small frame.

    An id repeats when several valid lines of the day carry it (`_lines` > 1) or when it is already
    stored under another ds (`_stored`: a redelivery, however late; `stored_elsewhere` needs only
    the stored events `repeatable` keeps). Only valid lines count, so a rejected line never makes a
    valid one with its id a duplicate. Counting alone keeps the aggregation a hash aggregation;
    where each repeated id first occurs is found by `first_copies` over the few lines concerned.
    """
    lines = validated.where(F.col(REASON).isNull()).groupBy("event_id").agg(F.count("*").alias("_lines"))
    stored = stored_elsewhere.select("event_id", F.lit(True).alias("_stored")).dropDuplicates(["event_id"])
    return (
        lines.join(stored, "event_id", "left")
        .where((F.col("_lines") > 1) | F.col("_stored"))
        .select("event_id", "_lines", F.coalesce("_stored", F.lit(False)).alias("_stored"))
    )


def first_copies(validated: DataFrame, repeated: DataFrame) -> DataFrame:
    """(event_id, _first, _stored) per repeated id; `_first` is where the first valid line of an id
    repeated within the day sits (file order), NULL for an id seen once.

    The minimum over positions carries the file path, which forces a sort-based aggregation: over
    the whole day that was three sorts of every line (7 s of a bench-scale night); over the lines
    whose id repeats it is nothing. Pass `repeated` materialised, so that Spark sees how small it
    is and broadcasts it instead of shuffling the day.
    """
    within_day = repeated.where(F.col("_lines") > 1).select("event_id")
    first = (
        validated.where(F.col(REASON).isNull())
        .join(within_day, "event_id", "left_semi")
        .groupBy("event_id")
        .agg(F.min(F.struct(*POSITION)).alias("_first"))
    )
    return repeated.join(first, "event_id", "left").select("event_id", "_first", "_stored")


def classify_events(validated: DataFrame, repeated: DataFrame) -> DataFrame:
    """Mark each line accepted, rejected or duplicate, and settle its final reason.

    A line with a problem is rejected. Otherwise it is a duplicate when its id is stored already
    or an earlier valid line of the day has it (`repeated`, from first_copies). What is left is
    rejected if it is too late, else accepted. A rerun of a ds does not count its own stored rows,
    so it classifies every line the same way again.
    """
    is_duplicate = F.col("_stored") | (F.col("_first") != F.struct(*POSITION))
    status = (
        F.when(F.col(REASON).isNotNull(), REJECTED)
        .when(is_duplicate, DUPLICATE)
        .when(F.col(LATE).isNotNull(), REJECTED)
        .otherwise(ACCEPTED)
    )
    return (
        validated.join(repeated, "event_id", "left")
        .withColumn(STATUS, status)
        .withColumn(REASON, F.when(F.col(STATUS) == REJECTED, F.coalesce(REASON, LATE)))
        .drop("_first", "_stored", LATE)
    )


def impressions_of(classified: DataFrame, ds: date) -> DataFrame:
    return classified.where(F.col(STATUS) == ACCEPTED).select(*EVENT_FIELDS, FILE, F.lit(ds).alias(DS))


def rejects_of(classified: DataFrame, ds: date) -> DataFrame:
    """Rejected lines, still to be numbered (LineNumbers.apply)."""
    return classified.where(F.col(STATUS) == REJECTED).select(*POSITION, RAW, REASON, F.lit(ds).alias(DS))


def reconcile(classified: DataFrame, read: int) -> Reconciliation:
    fates = classified.groupBy(STATUS).agg(F.count("*").alias("n")).collect()
    return Reconciliation.of(read, {row[STATUS]: row["n"] for row in fates})


# ---------------------------------------------------------------------------------------------
# Dimensions


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
    checks = [*_shape_checks(source, columns, dim.required), *[_unsafe_id(column) for column in dim.ids]]
    if "image_uri" in raw.columns:
        checks.append(_refused_image(image_roots))
    return (
        raw.select("*", _first_reason(*checks).alias(REASON))
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


# ---------------------------------------------------------------------------------------------
# The stage: the only place that reads landing files and writes tables.


@dataclass(frozen=True)
class StagedDimension:
    """A dimension's accepted rows of the day, not merged yet."""

    table: Table
    accepted: DataFrame  # the table's columns
    rows: int  # a file with none makes the table and merges nothing


def _stage_dimension(
    spark: SparkSession, cfg: Config, ds: date, dim: Dimension
) -> tuple[StagedDimension, DataFrame] | None:
    """Read, validate and reconcile one dimension file if the day has it -> (its accepted rows,
    its rejected lines as rejected_events rows)."""
    source: Source = getattr(cfg.ingest, dim.source_attr)
    location = source_location(cfg, ds, source)
    if not path_exists(spark, location):
        print(f"ingest {dim.table.name}: no file at {location}, nothing to upsert")
        return None
    columns = [c for c in dim.table.column_names if c != "updated_ds"]
    landed = read_source(spark, location, source, columns)
    rows = validate_dimension(landed.rows, dim, source, ds, images.roots(cfg)).cache()
    try:
        tally = rows.groupBy(FILE, SPLIT, STATUS).agg(*split_extent(), F.count("*").alias("n")).collect()
        numbers = LineNumbers.of(tally, landed.header_lines)
        fates = Counter()
        for group in tally:
            fates[group[STATUS]] += group["n"]
        counts = Reconciliation.of(numbers.lines, fates).checked(f"ingest {dim.table.name} {ds} from {location}")
        # Checkpointed and the cache let go: a cached plan is matched by its text, so a rerun in the
        # same session would read the file as it was before it was shipped again.
        accepted = rows.where(F.col(STATUS) == ACCEPTED).select(*dim.table.column_names).localCheckpoint()
        rejected = rows.where(F.col(STATUS) == REJECTED).select(*POSITION, RAW, REASON, F.lit(ds).alias(DS))
        return StagedDimension(dim.table, accepted, counts.accepted), numbers.apply(spark, rejected).localCheckpoint()
    finally:
        rows.unpersist()


def _as_merged(stored: DataFrame | None, staged: DataFrame | None, key: str) -> DataFrame:
    """The dimension as it will be once `staged` is merged: a staged row replaces its key's."""
    if staged is None or stored is None:
        return stored if staged is None else staged
    return staged.unionByName(stored.join(staged.select(key), key, "left_anti"))


def parse_manifest(text: str, location: str) -> tuple[int, str]:
    """(seed, scale) from a simulator manifest's text; a clear failure naming the file otherwise."""
    malformed = f'{location}: malformed simulator manifest, expected {{"seed": <int>, "scale": "<name>"}}'
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise StageError(f"{malformed}; it is not JSON ({err})") from None
    seed, scale = (manifest.get("seed"), manifest.get("scale")) if isinstance(manifest, dict) else (None, None)
    # bool is an int to Python; the seed column is a 32-bit INT.
    if type(seed) is not int or not 0 <= seed < 2**31 or not isinstance(scale, str) or not scale:
        raise StageError(f"{malformed}, got {text.strip()[:200]!r}")
    return seed, scale


def manifest_of(spark: SparkSession, day: str, ds: date) -> DataFrame:
    """The day's `landing_manifests` rows: one when the simulated world wrote the day, else none."""
    location = f"{day}/{MANIFEST_FILE}"
    rows = []
    if path_exists(spark, location):
        # Read through Spark, which reaches object stores as well as local files.
        landed = spark.read.text(location, wholetext=True).select("value", F.col("_metadata.file_path")).first()
        text, file = (landed["value"], landed["file_path"]) if landed else ("", location)
        rows.append((file, *parse_manifest(text, location), ds))
    return spark.createDataFrame(rows, LANDING_MANIFESTS.schema())


def world_of(spark: SparkSession, cfg: Config, ds: date) -> tuple[int, str] | None:
    """(seed, scale) of the simulated world ds's landing files came from; None for real logs or
    a ds not ingested yet."""
    if not tables.exists(spark, LANDING_MANIFESTS, cfg):
        return None
    row = tables.read(spark, LANDING_MANIFESTS, cfg, ds=ds).select("seed", "scale").first()
    return None if row is None else (row["seed"], row["scale"])


def first_day_of(spark: SparkSession, cfg: Config, world: tuple[int, str]) -> date:
    """The first ds ingested from the simulated world (seed, scale): the world's day 0."""
    seed, scale = world
    manifests = tables.read(spark, LANDING_MANIFESTS, cfg)
    return manifests.where((F.col("seed") == seed) & (F.col("scale") == scale)).agg(F.min("ds")).first()[0]


@dataclass(frozen=True)
class StagedDay:
    """A landing day read, validated, deduplicated and reconciled, nothing of it written yet: what
    `publish_day` will write, materialised apart from the tables it was checked against, so
    writing one of them recomputes nothing."""

    ds: date
    counts: Reconciliation
    dimensions: tuple[StagedDimension, ...]  # in DIMENSIONS order
    impressions: DataFrame
    rejects: DataFrame
    manifest: DataFrame
    stored: int  # impressions a stored run of the ds holds (0 on a first run)
    lost: int  # of those, events the staged day neither accepts nor counts as duplicates


def stage_day(spark: SparkSession, cfg: Config, ds: date) -> StagedDay:
    """Read and check `{landing}/{ds}` without writing: dimensions first (a new user's first
    events land the same day, so events are checked against the dimensions as they will be)."""
    day = f"{cfg.lakehouse.landing.rstrip('/')}/{ds.isoformat()}"
    if not path_exists(spark, day):
        raise StageError(f"no landing folder for ds={ds}: {day} does not exist (has the log shipper run?)")
    events_location = source_location(cfg, ds, cfg.ingest.events)
    if not path_exists(spark, events_location):
        raise StageError(f"no events for ds={ds}: {events_location} does not exist")
    manifest = manifest_of(spark, day, ds)

    # The dimension files are independent, so they are read and reconciled side by side: each is
    # mostly small jobs, which overlap well (bench/ingest.py has the figures).
    with ThreadPoolExecutor(len(DIMENSIONS)) as pool:
        staged = [s for s in pool.map(lambda dim: _stage_dimension(spark, cfg, ds, dim), DIMENSIONS) if s]
    upserts = {upsert.table.name: upsert for upsert, _ in staged}

    def as_merged(table: Table) -> DataFrame:
        upsert = upserts.get(table.name)
        return _as_merged(tables.read_or_empty(spark, table, cfg), upsert and upsert.accepted, table.keys[0])

    landed = read_source(spark, events_location, cfg.ingest.events, EVENT_FIELDS)
    if cfg.ingest.events.columns.get("creative_id", "creative_id") is None:
        known = as_merged(PRODUCTS).select("product_id")
        originals = original_creatives(type_events(landed.rows, cfg.ingest).join(known, "product_id", "left_semi"), ds)
        shipped = upserts.get(CREATIVES.name)
        # Checkpointed, as everything staged that reads a table: publishing writes that table.
        rows = _as_merged(originals, shipped and shipped.accepted, "creative_id").localCheckpoint()
        upserts[CREATIVES.name] = StagedDimension(CREATIVES, rows, rows.count())
    # The day is read and validated once, into memory; everything after reads the cache.
    dims = [as_merged(table) for table in (USERS, PRODUCTS, CREATIVES)]
    validated = validate_events(landed.rows, *dims, ds, cfg.ingest).cache()
    try:
        counts, impressions, rejects, (stored, lost) = _stage_events(spark, cfg, ds, validated, landed.header_lines)
    finally:
        validated.unpersist()
    rejects = reduce(DataFrame.unionByName, [rejects, *(rejected for _, rejected in staged)])
    return StagedDay(ds, counts, tuple(upserts.values()), impressions, rejects, manifest, stored, lost)


def _stage_events(
    spark: SparkSession, cfg: Config, ds: date, validated: DataFrame, header_lines: int
) -> tuple[Reconciliation, DataFrame, DataFrame, tuple[int, int]]:
    """Deduplicate and reconcile the validated day -> (counts, impressions, rejects, (impressions
    stored for the ds, how many of them the day would lose)), both frames checkpointed.

    An empty day goes the same way: nothing to publish in place of what is stored, and every
    stored event counted lost.
    """
    survey = survey_events(validated).collect()
    numbers = LineNumbers.of(survey, header_lines)
    every = tables.read_or_empty(spark, IMPRESSIONS, cfg)
    stored = every.where(F.col(DS) != F.lit(ds))
    repeated = repeated_ids(validated, repeatable(stored, event_times(survey))).cache()
    repeated.count()  # materialised: first_copies broadcasts it
    copies = first_copies(validated, repeated).cache()
    classified = classify_events(validated, copies)
    try:
        counts = reconcile(classified, numbers.lines).checked(f"ingest events {ds}")
        impressions = impressions_of(classified, ds).localCheckpoint()
        rejects = numbers.apply(spark, rejects_of(classified, ds)).localCheckpoint()
        kept = classified.where(F.col(STATUS) != REJECTED).select("event_id")
        before = every.where(F.col(DS) == F.lit(ds)).select("event_id")
        lost = before.join(kept, "event_id", "left_anti").count()
        return counts, impressions, rejects, (before.count(), lost)
    finally:
        copies.unpersist()
        repeated.unpersist()


def refuse_loss(cfg: Config, staged: StagedDay) -> None:
    """A rerun of a ds that would drop more of its stored events than quality.max_shrink (as when
    the landing day lost files) fails naming both counts, unless ingest.allow_shrink says the
    loss is meant."""
    share = staged.lost / staged.stored if staged.stored else 0.0
    if share <= cfg.quality.max_shrink or cfg.ingest.allow_shrink:
        return
    raise StageError(
        f"ingest {staged.ds}: the landing day holds {staged.counts.accepted:,} impressions where the stored "
        f"run of the ds holds {staged.stored:,}, and {staged.lost:,} of those events would be lost "
        f"({share:.1%} > quality.max_shrink {cfg.quality.max_shrink:g}); nothing was written. If the loss "
        "is meant (a source withdrew events), rerun with --set ingest.allow_shrink=true"
    )


def publish_day(spark: SparkSession, cfg: Config, staged: StagedDay) -> None:
    """Write an audited day: the dimensions, then its rejects, impressions and manifest. A run
    killed in between leaves each table whole, and a rerun of the ds completes it."""
    for upsert in staged.dimensions:
        if upsert.rows:
            tables.merge(spark, upsert.accepted, upsert.table, cfg, unless_newer="updated_ds", ds=staged.ds)
        else:
            # A MERGE of no rows commits nothing yet costs about what a real one does (the table's
            # log replay and scan), and a file with nothing new is common once a catalogue is stable.
            tables.ensure(spark, upsert.table, cfg)
    tables.overwrite_partition(spark, staged.rejects, REJECTED_EVENTS, cfg, staged.ds)
    tables.overwrite_partition(spark, staged.impressions, IMPRESSIONS, cfg, staged.ds)
    tables.overwrite_partition(spark, staged.manifest, LANDING_MANIFESTS, cfg, staged.ds)


def ingest_day(
    spark: SparkSession, cfg: Config, ds: date, gate: Callable[[list[Check]], None] | None = None
) -> Reconciliation:
    """Ingest `{landing}/{ds}` by write-audit-publish: stage the day (`stage_day`), refuse a rerun
    that loses stored events (`refuse_loss`), hand the quality checks of the staged day to `gate`
    (which fails the stage), and only then write (`publish_day`). A failed audit leaves every
    table at its previous version."""
    staged = stage_day(spark, cfg, ds)
    refuse_loss(cfg, staged)
    if gate is not None:
        gate(quality_checks(spark, cfg, staged))
    publish_day(spark, cfg, staged)
    return staged.counts


def reject_reasons(spark: SparkSession, cfg: Config, ds: date) -> dict[str, int]:
    """Rejected lines of the day per kind of reason (the text before the first colon)."""
    rows = (
        tables.read(spark, REJECTED_EVENTS, cfg, ds=ds).groupBy(F.substring_index(REASON, ":", 1).alias("kind")).count()
    )
    return {r["kind"]: r["count"] for r in rows.collect()}


def quality_checks(spark: SparkSession, cfg: Config, staged: StagedDay) -> list[Check]:
    """The day's gate, on the staged day: refused lines, impressions per event day against the
    previous night, and the share of the day's users missing the most-missed attribute the users
    file carries."""
    counts = staged.counts
    refused = Check(
        "rejected_share",
        counts.rejected / counts.read if counts.read else 0.0,
        high=cfg.quality.max_rejected_share,
        setting="quality.max_rejected_share",
        measured=f"{counts.rejected:,} of {counts.read:,} event lines",
    )
    # Per event day, so a night that ingested a history is compared by its daily rate.
    daily = F.count("*") / F.countDistinct(F.to_date("ts"))
    others = tables.read_or_empty(spark, IMPRESSIONS, cfg).where(F.col(DS) != F.lit(staged.ds))
    with_day = others.unionByName(staged.impressions)
    change = quality.versus_previous(cfg, "impressions_per_day", with_day, staged.ds, "impressions a day", daily)
    return [refused, *change, *_missing_attributes(spark, cfg, staged)]


def _missing_attributes(spark: SparkSession, cfg: Config, staged: StagedDay) -> list[Check]:
    """The attribute the most of the day's users lack, among those the users file carries. A user
    with impressions but no row in users lacks them all; a log that never shipped a users file
    has no attributes to check."""
    carried = list(source_columns(cfg.ingest.users, USER_ATTRIBUTES))
    seen = staged.impressions.select("user_id").distinct()
    arriving = next((upsert.accepted for upsert in staged.dimensions if upsert.table is USERS), None)
    stored = tables.read(spark, USERS, cfg, as_of=staged.ds) if tables.exists(spark, USERS, cfg) else None
    if not carried or (stored is None and arriving is None) or seen.first() is None:
        return []
    users = _as_merged(stored, arriving, "user_id").select("user_id", *carried)
    row = (
        seen.join(users, "user_id", "left")
        .agg(F.count("*").alias("users"), *(F.count(F.when(F.col(a).isNull(), 1)).alias(a) for a in carried))
        .first()
    )
    worst = max(carried, key=lambda attribute: row[attribute])
    return [
        Check(
            "attribute_null_share",
            row[worst] / row["users"],
            high=cfg.quality.max_null_share,
            setting="quality.max_null_share",
            measured=f"{worst}: {row[worst]:,} of the day's {row['users']:,} users",
        )
    ]


def run(ctx: JobContext) -> None:
    import mlflow

    counts = ingest_day(ctx.spark, ctx.cfg, ctx.ds, gate=lambda checks: quality.gate(ctx, checks, published=False))
    mlflow.log_metrics(
        {
            "events_read": counts.read,
            "events_accepted": counts.accepted,
            "events_rejected": counts.rejected,
            "events_duplicates": counts.duplicates,
        }
    )
    mlflow.set_tag("osmf.reconciliation", counts.line("events"))
    reasons = reject_reasons(ctx.spark, ctx.cfg, ctx.ds)
    mlflow.log_metrics({f"rejected.{kind.replace(' ', '_')}": n for kind, n in reasons.items()})
    for table in (IMPRESSIONS, REJECTED_EVENTS, LANDING_MANIFESTS, USERS, PRODUCTS, CREATIVES):
        if tables.exists(ctx.spark, table, ctx.cfg):
            mlflow.log_param(f"output.{table.name}.version", tables.latest_version(ctx.spark, table, ctx.cfg))
    # Always written, so a rerun after the day's assignments were dropped leaves none behind.
    reached = coverage.coverage(ctx.spark, ctx.cfg, ctx.ds)
    tables.write_metrics(ctx.spark, ctx.cfg, ctx.ds, coverage.STAGE, reached, mlflow.active_run().info.run_id)
    if reached:
        mlflow.log_metrics({f"{coverage.STAGE}.{m.metric}.{m.slice.replace(' ', '_')}": m.value for m in reached})
        for m in reached:
            print(f"{ctx.stage}: {coverage.STAGE} {m.metric} {m.slice}: {m.value:.4f}")
