import ipaddress
from pathlib import Path

import pytest

from osmf_lib import spark as spark_setup
from osmf_lib.config import Config
from osmf_lib.spark import ARTIFACT_FILE, SparkSetupError, delta_artifact, delta_jars, session_conf


def test_session_has_delta_and_configured_shuffles(spark, make_cfg):
    # The process keeps one session; a later Config's runtime settings apply to it.
    session = spark_setup.get_spark(make_cfg("spark.shuffle_partitions=3"))
    assert session is spark
    assert spark.conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    spark_setup.get_spark(make_cfg())
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"


def test_artifact_matches_installed_spark_and_delta():
    from importlib.metadata import version

    spark_minor = ".".join(version("pyspark").split(".")[:2])
    assert delta_artifact() == f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


def test_missing_jars_say_which_command_fixes_it(make_cfg, tmp_path):
    cfg = make_cfg(f"spark.jars_dir={tmp_path / 'none'}")
    with pytest.raises(SparkSetupError, match="never resolved .* run `make setup`"):
        delta_jars(cfg)


def test_jars_for_another_delta_version_are_refused(make_cfg, tmp_path):
    (tmp_path / ARTIFACT_FILE).write_text("io.delta:delta-spark_4.0_2.13:4.0.0\n")
    cfg = make_cfg(f"spark.jars_dir={tmp_path}")
    with pytest.raises(SparkSetupError, match="run `osmf spark resolve-jars`"):
        delta_jars(cfg)


def test_missing_java_is_named(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SparkSetupError, match="Spark needs Java 17 but none was found"):
        spark_setup.get_spark(Config())


def test_user_conf_extends_the_session_conf(make_cfg):
    conf = session_conf(make_cfg('spark.conf={"spark.sql.ansi.enabled": "true"}', "spark.delta_snapshot_partitions=3"))
    assert conf["spark.sql.ansi.enabled"] == "true"
    assert conf["spark.databricks.delta.snapshotPartitions"] == "3"
    assert conf["spark.sql.catalog.spark_catalog"].endswith("DeltaCatalog")


def _listening(port: int) -> set[str]:
    """The addresses a local TCP port listens on, from /proc/net/tcp and tcp6."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                words = [bytes.fromhex(address[i : i + 8])[::-1].hex() for i in range(0, width, 8)]
                found.add(str(ipaddress.ip_address(bytes.fromhex("".join(words)))))
    return found


def test_an_embedded_spark_ui_listens_on_this_machine_only(spark):
    addresses = _listening(int(spark.sparkContext.uiWebUrl.rsplit(":", 1)[1]))
    assert addresses and addresses <= {"127.0.0.1", "::ffff:7f00:1"}, addresses
