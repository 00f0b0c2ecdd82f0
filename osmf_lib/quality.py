"""Data-quality gates: a stage checks its night's data before anything downstream reads it.
Ingestion checks the day before it writes it (write-audit-publish: a failed gate leaves every
table as it was); the later stages check what they just wrote.

A gate is a list of `Check`s, numbers measured on the night's tables with the bounds they must
keep. Each stage that feeds others states its own, next to the data it knows
(the `quality_checks` of `ingest.stages`, `grouping.stages` and `pairs.stages`). `gate` records every
number in eval_metrics (stage 'quality', slice = the gated stage: passing nights are the baseline
a failing one is read against) and in the stage's MLflow run, then fails the stage naming each
check out of bounds, its number, its bounds and the setting that holds them. The task fails, so
Airflow runs nothing downstream of it (every task keeps the default trigger rule, all_success)
and a bad night never reaches serving. A rerun after the fix replaces the night's tables and
its checks.

Checks against the previous night compare like with like (impressions per event day, so a
history ingested as one ds is compared by its daily rate) and only against a baseline of at
least `quality.min_baseline`: the first nights of a look-back window are too small to judge by.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from osmf_lib import tables
from osmf_lib.config import Config
from osmf_lib.job import JobContext, StageError
from osmf_lib.tables import DS, Metric

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

log = logging.getLogger(__name__)

STAGE = "quality"
FAILED = "failed_checks"


@dataclass(frozen=True)
class Check:
    """A number measured on the night's tables and the closed range it must lie in (None: open).

    A check with neither bound is recorded, not enforced. `setting` names the config key that
    holds the bounds, so the failure says what to change if the night is right and the bound wrong.
    """

    name: str
    value: float
    low: float | None = None
    high: float | None = None
    setting: str = ""
    measured: str = ""

    @property
    def passed(self) -> bool:
        return (self.low is None or self.value >= self.low) and (self.high is None or self.value <= self.high)

    def _bounds(self) -> str:
        where = f"{self.setting} " if self.setting else ""
        if self.low is not None and self.high is not None:
            return f"{'in' if self.passed else 'outside'} {where}[{self.low:g}, {self.high:g}]"
        if self.high is not None:
            return f"{'<=' if self.passed else '>'} {where}{self.high:g}"
        if self.low is not None:
            return f"{'>=' if self.passed else '<'} {where}{self.low:g}"
        return "(recorded)"

    def __str__(self) -> str:
        verdict = "" if self.low is None and self.high is None else (" ok" if self.passed else " FAILED")
        measured = f" ({self.measured})" if self.measured else ""
        return f"{self.name} {self.value:.4g} {self._bounds()}{verdict}{measured}"


def versus_previous(
    cfg: Config, name: str, df: DataFrame, ds: date, unit: str, value: Column | None = None
) -> list[Check]:
    """`value` (an aggregate; default the row count) over the ds partition of a partitioned table
    `df` against the same over the latest earlier partition, within quality.change_band. No check
    on the table's first night or when that night's value is below quality.min_baseline."""
    from pyspark.sql import functions as F

    before = df.where(F.col(DS) < F.lit(ds)).agg(F.max(DS)).first()[0]
    nights = [night for night in (ds, before) if night is not None]
    rows = df.where(F.col(DS).isin(nights)).groupBy(DS).agg((F.count("*") if value is None else value).alias("v"))
    measured = {row[DS]: float(row["v"]) for row in rows.collect()}
    if before is None or measured.get(before, 0.0) < cfg.quality.min_baseline:
        return []
    tonight, previous = measured.get(ds, 0.0), measured[before]
    low, high = cfg.quality.change_band
    what = f"{tonight:,.0f} {unit} vs {previous:,.0f} on {before}"
    return [Check(f"{name}_vs_previous", tonight / previous, low, high, "quality.change_band", what)]


def gate(ctx: JobContext, checks: Sequence[Check], published: bool = True) -> None:
    """Record the checks of `ctx.stage` for the night, then fail the stage if any is out of bounds
    (`published`: whether the stage wrote its tables before its checks)."""
    import mlflow

    failed = [check for check in checks if not check.passed]
    metrics = [Metric(check.name, ctx.stage, check.value) for check in checks] + [
        Metric(FAILED, ctx.stage, len(failed))
    ]
    run_id = mlflow.active_run().info.run_id
    tables.write_metrics(ctx.spark, ctx.cfg, ctx.ds, STAGE, metrics, run_id, slice_=ctx.stage)
    mlflow.log_metrics({f"{STAGE}.{check.name}": check.value for check in checks})
    for check in checks:
        log.info(f"{STAGE} {ctx.stage}: {check}")
    if failed:
        kept = f"what {ctx.stage} wrote stays for inspection" if published else "nothing of the night was written"
        raise StageError(
            f"quality gate failed, so nothing downstream runs: {'; '.join(map(str, failed))} "
            f"({kept}; eval_metrics holds the night's checks)"
        )
