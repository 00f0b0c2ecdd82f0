"""The only SparkSession builder: Delta Lake configured, local or cluster master from Config.

Delta's JVM jars are resolved from Maven Central once (`make setup` -> `osmf spark resolve-jars`)
into `spark.jars_dir`; after that every session, test and spark-submit reads them offline.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from osmf_lib.config import Config

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

ARTIFACT_FILE = "ARTIFACT"


class SparkSetupError(RuntimeError):
    """Spark cannot start here; the message says which command fixes it."""


def delta_artifact() -> str:
    """The Maven coordinate of the Delta jar matching the installed delta-spark and pyspark.

    Since Delta 4.0 the artifact name carries Spark's major.minor (delta-spark_4.2_2.13).
    """
    spark_minor = ".".join(version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


def maven_packages(cfg: Config) -> list[str]:
    return [delta_artifact(), *cfg.spark.packages]


def delta_jars(cfg: Config) -> list[str]:
    """The resolved jars for Delta and `spark.packages`; fails with the fixing command if stale."""
    jars_dir = Path(cfg.spark.jars_dir)
    marker = jars_dir / ARTIFACT_FILE
    if not marker.exists():
        raise SparkSetupError(
            f"Delta Lake jars were never resolved into {jars_dir}; run `make setup` "
            "(or `osmf spark resolve-jars`) once with access to Maven Central"
        )
    held, wanted = marker.read_text().split(), maven_packages(cfg)
    if held != wanted:
        raise SparkSetupError(
            f"{jars_dir} holds jars for {held} but this configuration needs {wanted}; "
            "run `osmf spark resolve-jars` to refresh them"
        )
    return sorted(str(p) for p in jars_dir.glob("*.jar"))


def session_conf(cfg: Config) -> dict[str, str]:
    """Spark properties every OSMF session needs; spark-submit gets the same ones from the DAG."""
    conf = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": cfg.spark.driver_memory,
        "spark.ui.showConsoleProgress": str(cfg.spark.show_progress).lower(),
        # Small nightly batches: Arrow makes the pandas UDF and toPandas paths usable.
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.databricks.delta.snapshotPartitions": str(cfg.spark.delta_snapshot_partitions),
        # Cached frames live for one stage; compressing them cost ingestion 10 % of its time at
        # bench scale (bench/ingest.py) for memory the stages do not need.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
    }
    conf.update(cfg.spark.conf)
    return conf


def _check_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return
    if shutil.which("java"):
        return
    raise SparkSetupError(
        "Spark needs Java 17 but none was found (JAVA_HOME unset and no `java` on PATH); "
        "install it, e.g. `apt-get install openjdk-17-jre-headless`, then rerun"
    )


def _launched_by_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands Python the gateway port; master and jars
    # are then fixed by the submit command (the Airflow connection), not by this builder.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def ui_binding(cfg: Config) -> dict[str, str]:
    """The environment of a Spark with a local master, embedded or spark-submitted: it is this
    machine's alone, and its UI binds $SPARK_LOCAL_IP, else every interface, showing every query
    and config of the night. A SPARK_LOCAL_IP already set is kept."""
    if not cfg.spark.master.startswith("local"):
        return {}
    return {"SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}


def get_spark(cfg: Config, app_name: str | None = None) -> SparkSession:
    """Return the process's SparkSession, creating it from Config on first use."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name or cfg.spark.app_name)
    if not _launched_by_spark_submit():
        _check_java()
        builder = builder.master(cfg.spark.master).config("spark.jars", ",".join(delta_jars(cfg)))
        # pyspark starts its Python workers with $PYSPARK_PYTHON (else `python3` from PATH); they
        # must run this interpreter, the one with numpy, torch and osmf_lib.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.update(ui_binding(cfg))
    for key, value in session_conf(cfg).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


def resolve_jars(cfg: Config) -> list[Path]:
    """Download Delta's jar, `spark.packages` and their dependencies with Spark's own resolver.

    Idempotent: a jars_dir already holding the wanted packages is left as it is.
    """
    from pyspark.sql import SparkSession

    jars_dir = Path(cfg.spark.jars_dir)
    wanted = maven_packages(cfg)
    marker = jars_dir / ARTIFACT_FILE
    if marker.exists() and marker.read_text().split() == wanted:
        return sorted(jars_dir.glob("*.jar"))
    _check_java()
    with tempfile.TemporaryDirectory(prefix="osmf-ivy-") as ivy:
        spark = (
            SparkSession.builder.master("local[1]")
            .appName("osmf-resolve-jars")
            .config("spark.jars.packages", ",".join(wanted))
            .config("spark.jars.ivy", ivy)
            .getOrCreate()
        )
        spark.stop()
        resolved = sorted(Path(ivy, "jars").glob("*.jar"))
        if not resolved:
            raise SparkSetupError(f"Spark resolved no jars for {wanted}; is Maven Central reachable?")
        # Write to a fresh folder and swap it in, so an interrupted run never leaves half a set.
        jars_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".jars-", dir=jars_dir.parent))
        for jar in resolved:
            shutil.copy2(jar, staging / jar.name)
        (staging / ARTIFACT_FILE).write_text("\n".join(wanted) + "\n")
    if jars_dir.exists():
        shutil.rmtree(jars_dir)
    staging.rename(jars_dir)
    return sorted(jars_dir.glob("*.jar"))


def path_exists(spark: SparkSession, location: str) -> bool:
    """Whether a file or folder exists, on any file system Spark can reach (local, s3a, hdfs)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(location)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(path)


def named_in(dimension: DataFrame, rows: DataFrame, key: str) -> DataFrame:
    """The dimension's rows whose `key` occurs in `rows`: a stage pulls to the driver what the
    night's data names, never a whole dimension (whose size has no bound)."""
    return dimension.join(rows.select(key).distinct(), key, "left_semi")


def to_pandas(df: DataFrame) -> pd.DataFrame:
    """`df.toPandas()` with its interests as lists: Spark hands arrays over as numpy arrays, which
    the models' vocabularies and MLflow's input examples do not take for lists."""
    frame = df.toPandas()
    if "interests" in frame:
        frame["interests"] = frame["interests"].map(lambda v: [] if v is None else list(v))
    return frame


def ship_folder(spark: SparkSession, folder: Path, prefix: str) -> str:
    """Send a local folder to every executor, of a local master or a cluster's; returns the name
    `SparkFiles.get` finds it under there. It travels as a zip archive that each executor unpacks
    under that name: Spark ships a local folder itself to a local master's executors only. Spark
    refuses a second, different file under a name it already ships, so every call ships one under
    a name of its own."""
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}-")) / f"{prefix}-{uuid.uuid4().hex}"
    archive = shutil.make_archive(str(staging), "zip", folder)
    spark.sparkContext.addArchive(archive)
    return Path(archive).name
