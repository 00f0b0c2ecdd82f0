"""Reading a landing source: any format -> one row per line with our column names, all as text,
each row keeping its file and position for rejects and lineage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from osmf_lib.config import Config, Source
from osmf_lib.job import StageError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable

    from pyspark.sql import Row


# Columns every read source carries next to its data, for lineage and rejects.
FILE, LINE, RAW, KEYS = "source_file", "line_number", "raw", "_keys"
# Where a row sits until it needs a line number (only rejected rows do): its file split and row id.
SPLIT, ROW = "_split", "_row"
POSITION = (FILE, SPLIT, ROW)
# What validation and deduplication add: each line's reason, fate and lateness.
REASON, STATUS, LATE = "reason", "_status", "_late"
ACCEPTED, REJECTED, DUPLICATE = "accepted", "rejected", "duplicate"


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


def widest(rows: Iterable[Row], key: Callable[[Row], Hashable], first: str, last: str) -> dict:
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
        spans = widest(extents, lambda row: (row[FILE], row[SPLIT]), "_first", "_last")
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
