"""Preflight: prove the night can run before any stage touches data.

Checks the lakehouse root is writable, the jars folder holds the jars this Config needs, Spark
can write and read back a Delta table there (so the Delta jars and extensions are wired), and
MLflow tracking answers. Each failed check names what is wrong and how to fix it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from osmf_lib.config import Config
from osmf_lib.job import JobContext, StageError, StageResult

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

PROBE_TABLE = "_preflight"


@dataclass(frozen=True)
class Check:
    name: str
    detail: str


def check_lakehouse_root(cfg: Config) -> Check:
    root = cfg.lakehouse.root
    if "://" in root:
        return Check("lakehouse root", f"{root} (object store: checked through Spark below)")
    probe = Path(root) / ".osmf-write-probe"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StageError(f"lakehouse root {root} is not writable: {err}; set lakehouse.root") from err
    return Check("lakehouse root", f"{root} is writable")


def check_jars(cfg: Config) -> Check:
    """The jars folder holds what this Config needs (the DAG hands Spark the folder, unchecked)."""
    from osmf_lib.spark import delta_jars, maven_packages

    jars = delta_jars(cfg)
    return Check("jars", f"{len(jars)} jars for {', '.join(maven_packages(cfg))} in {cfg.spark.jars_dir}")


def check_delta(spark: SparkSession, cfg: Config) -> Check:
    """Overwrite a two-row Delta table under the root and read it back."""
    location = f"{cfg.lakehouse.root.rstrip('/')}/{PROBE_TABLE}"
    try:
        spark.range(2).write.format("delta").mode("overwrite").save(location)
        rows = spark.read.format("delta").load(location).count()
    except Exception as err:
        raise StageError(
            f"Spark could not write a Delta table at {location}: {str(err).splitlines()[0]}; "
            "check the Delta jars (`make setup`) and the lakehouse root"
        ) from err
    if rows != 2:
        raise StageError(f"Delta probe at {location} read back {rows} rows instead of 2")
    return Check(
        "spark + delta",
        f"Spark {spark.version}, delta-spark {version('delta-spark')}, master {spark.sparkContext.master}",
    )


def check_mlflow(cfg: Config) -> Check:
    from osmf_lib.tracking import configure

    experiment_id = configure(cfg)
    return Check("mlflow", f"{cfg.mlflow.tracking_uri} (experiment {cfg.mlflow.experiment} = {experiment_id})")


def run_checks(spark: SparkSession, cfg: Config) -> list[Check]:
    return [check_lakehouse_root(cfg), check_jars(cfg), check_delta(spark, cfg), check_mlflow(cfg)]


def preflight(ctx: JobContext) -> StageResult:
    import mlflow

    checks = run_checks(ctx.spark, ctx.cfg)
    for check in checks:
        log.info(f"preflight ok  {check.name:<15} {check.detail}")
    mlflow.log_dict({c.name: c.detail for c in checks}, "preflight.json")
    return StageResult()
