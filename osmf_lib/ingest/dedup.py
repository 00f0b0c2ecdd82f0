"""Deduplication against the stored days, each line's fate (accepted, rejected, duplicate) and the
reconciliation that checks every line read has exactly one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from functools import reduce
from itertools import pairwise
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from osmf_lib.ingest.read import (
    ACCEPTED,
    DUPLICATE,
    FILE,
    LATE,
    POSITION,
    RAW,
    REASON,
    REJECTED,
    SPLIT,
    STATUS,
    split_extent,
    widest,
)
from osmf_lib.ingest.validate import EVENT_FIELDS
from osmf_lib.job import StageError
from osmf_lib.tables import DS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pyspark.sql import Row

log = logging.getLogger(__name__)


# A night's valid events fall on one to three dates (the day and its late lines), one event-time
# range each; a history of months would otherwise put hundreds of ranges into the
# deduplication's filter, which every stored file's statistics and every stored row is tested on.
MAX_TIME_RANGES = 8


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
        log.info(self.line(what))
        if not self.balanced:
            raise StageError(f"reconciliation failed, nothing of it written: {self.line(what)}")
        return self


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
    return merge_closest(sorted(widest(valid, lambda row: row["_date"], "_from", "_to").values()), MAX_TIME_RANGES)


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
