"""The shared command line of every job in jobs/: parse, load Config, track, run, exit.

A job is `python jobs/<stage>.py --ds 2026-11-01 [--config FILE] [--set key=value ...]`.
It exits 0 on success, 1 on a failure it can explain (printed as one line naming the cause),
2 on bad arguments. The same stage runs under spark-submit, a GPU pod or by hand.

A stage logs through the `osmf_lib` loggers (a job prints their lines on stdout, as they are) and
returns a StageResult, which the job logs as its last line and tags on the stage's MLflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import cached_property
from typing import TYPE_CHECKING

from osmf_lib.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class StageError(RuntimeError):
    """A stage found its input or output unacceptable; the message says what and where."""


def worker_error(err: BaseException, kind: type[BaseException]) -> str | None:
    """The message of a `kind` error that a Spark Python worker raised, or None if `err` holds none.

    The driver gets the worker's traceback only as text inside the JVM/py4j exception, with the
    error as a line "<class>: <message>", the class qualified by its module unless it is a
    builtin. A subclass of `kind` is named by its own class, so it does not match.
    """
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    prefix = f"{name}: "
    lines = (line.strip() for line in str(err).splitlines())
    return next((line.removeprefix(prefix) for line in lines if line.startswith(prefix)), None)


@contextmanager
def worker_errors_as_stage_errors(kind: type[BaseException], what: str) -> Iterator[None]:
    """Re-raise a `kind` error from a Spark Python worker as the one-line StageError "<what>: <message>"
    (a job prints that, not the JVM stack); any other error passes unchanged."""
    try:
        yield
    except Exception as err:
        reason = worker_error(err, kind)
        if reason is None:
            raise
        raise StageError(f"{what}: {reason}") from err


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count` equal parts of a stage's work (`--shard index/count`)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, _, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected INDEX/COUNT such as 0/4, got '{text}'") from None
        if not 0 <= shard.index < shard.count:
            raise argparse.ArgumentTypeError(f"shard {text}: need 0 <= INDEX < COUNT")
        return shard

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# A result's metrics in its log line; the MLflow tag holds them all.
SUMMARY_METRICS = 6


@dataclass
class StageResult:
    """What a stage did: the tables it wrote with their rows for the night, the model version it
    registered (or `reused`: an earlier run of the night trained it on the same data and settings),
    why it skipped the night, and its headline numbers."""

    written: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    reused: bool = False
    skipped: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        parts = [f"wrote {table} ({rows:,} rows)" for table, rows in self.written.items()]
        if self.model:
            parts.append(f"{'reused' if self.reused else 'registered'} {self.model}")
        shown = list(self.metrics.items())[:SUMMARY_METRICS]
        parts += [f"{name} {value:.4g}" for name, value in shown]
        if len(self.metrics) > len(shown):
            parts.append(f"{len(self.metrics) - len(shown)} more metrics in the run's osmf.result tag")
        return "; ".join(parts) or "done"


class _Stdout(logging.StreamHandler):
    """Writes to sys.stdout as it is when a line is logged, not as it was when the job started:
    several jobs run in one process (tests, `osmf` commands) and each may redirect it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure_logging() -> None:
    """The osmf_lib loggers print each line as it is, on stdout: what a job has always shown."""
    logger = logging.getLogger("osmf_lib")
    if not any(isinstance(handler, _Stdout) for handler in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def record(stage: str, result: StageResult | None) -> None:
    """Log a stage's result and tag it on the active MLflow run (`osmf.result`, as JSON)."""
    import mlflow

    if result is None:
        return
    logging.getLogger(__name__).info(f"{stage}: {result.summary()}")
    mlflow.set_tag("osmf.result", json.dumps(asdict(result), sort_keys=True))
    if result.skipped:
        mlflow.set_tag("osmf.skipped", result.skipped)


@dataclass
class JobContext:
    stage: str
    cfg: Config
    ds: date
    dag_run_id: str

    @cached_property
    def spark(self) -> SparkSession:
        from osmf_lib.spark import get_spark

        return get_spark(self.cfg, app_name=f"osmf-{self.stage}")


def _parse(stage: str, argv: Sequence[str] | None, sharded: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"OSMF stage '{stage}' for one ds")
    parser.add_argument("--ds", required=True, type=date.fromisoformat, help="logical date, e.g. 2026-11-01")
    parser.add_argument("--config", help="YAML file layered over conf/osmf.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--dag-run-id", help="Airflow run id; defaults to manual__<ds>")
    if sharded:
        parser.add_argument(
            "--shard",
            type=Shard.parse,
            default=Shard(0, 1),
            metavar="I/N",
            help="do part I of N of the work, for N parallel workers (default 0/1: all)",
        )
    return parser.parse_args(argv)


def main(
    stage: str,
    body: Callable[..., StageResult | None],
    argv: Sequence[str] | None = None,
    *,
    sharded: bool = False,
) -> None:
    """Run `body(ctx)` (with `shard=` as well when the stage is `sharded`) in the stage's MLflow run,
    and record what it returns."""
    from osmf_lib.spark import SparkSetupError
    from osmf_lib.tables import TableError
    from osmf_lib.tracking import TrackingError, stage_run

    args = _parse(stage, argv, sharded)
    configure_logging()
    try:
        cfg = load_config(args.config, args.set)
        ctx = JobContext(stage, cfg, args.ds, args.dag_run_id or f"manual__{args.ds.isoformat()}")
        with stage_run(cfg, stage, ctx.ds, ctx.dag_run_id):
            record(stage, body(ctx, shard=args.shard) if sharded else body(ctx))
    except (ConfigError, SparkSetupError, TableError, TrackingError, StageError) as err:
        print(f"osmf {stage} failed for ds={args.ds}: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        print(f"osmf {stage} failed for ds={args.ds} with an unexpected error (traceback above)", file=sys.stderr)
        sys.exit(1)
