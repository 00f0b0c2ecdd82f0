import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pyspark.sql import Row

from osmf_lib import tables
from osmf_lib.cli import DDL_FOLDER
from osmf_lib.tables import EVAL_METRICS, TABLES, Column, Table, TableError

D1 = dt.date(2026, 11, 1)
D2 = dt.date(2026, 11, 2)


def _events(spark, ds, *rows):
    return spark.createDataFrame(
        [
            Row(
                event_id=e,
                ts=dt.datetime(ds.year, ds.month, ds.day, 12),
                user_id=u,
                product_id="p1",
                creative_id="c1",
                position=1,
                clicked=c,
                source_file="f.jsonl",
                ds=ds,
            )
            for e, u, c in rows
        ]
    )


def _rows(df):
    return sorted(tuple(r) for r in df.drop("ts").collect())


def test_contracts_match_the_design():
    assert set(TABLES) == {
        "impressions",
        "rejected_events",
        "landing_manifests",
        "users",
        "products",
        "creatives",
        "paag_embeddings",
        "user_groups",
        "group_profiles",
        "group_creative_ctr",
        "group_preference_pairs",
        "generated_creatives",
        "serving_creatives",
        "serving_assignments",
        "eval_metrics",
    }
    assert not TABLES["users"].partitioned and TABLES["impressions"].partitioned
    for table in TABLES.values():
        key_columns = [c for c in table.columns if c.name in table.keys]
        assert all(not c.nullable for c in key_columns), f"{table.name}: key columns must be NOT NULL"


def test_a_contract_rejects_keys_outside_its_schema():
    with pytest.raises(TableError, match="key columns \\['nope'\\] are not in its schema"):
        Table("t", "d", (Column("a", "INT"),), keys=("nope",), partitioned=False, producer="x")
    with pytest.raises(TableError, match="statistics columns \\['ts'\\] are not in its schema"):
        Table("t", "d", (Column("a", "INT"),), keys=("a",), partitioned=False, producer="x", stats_columns=("ts",))
    with pytest.raises(TableError, match="partitioned tables need a 'ds' column"):
        Table("t", "d", (Column("a", "INT"),), keys=("a",), partitioned=True, producer="x")


def test_sql_folder_holds_one_ddl_per_contract():
    assert {p.stem for p in DDL_FOLDER.glob("*.sql")} == set(TABLES)


def test_sql_ddl_creates_exactly_the_contract(spark, tmp_path):
    """Run every committed DDL file through Spark and compare the tables it makes with tables.py."""
    spark.sql(f"SET lakehouse_root={tmp_path}")
    for table in TABLES.values():
        spark.sql(f"DROP TABLE IF EXISTS {table.name}")
        spark.sql((DDL_FOLDER / f"{table.name}.sql").read_text().rstrip().rstrip(";"))
        created = spark.table(table.name).schema
        assert [(f.name, f.dataType, f.nullable) for f in created] == [
            (f.name, f.dataType, f.nullable) for f in table.schema()
        ], table.name
        detail = spark.sql(f"DESCRIBE DETAIL {table.name}").first()
        assert detail["partitionColumns"] == table.partition_columns, table.name
        assert table.properties.items() <= detail["properties"].items(), table.name
        assert detail["location"].rstrip("/").endswith(f"{tmp_path}/{table.name}")
        spark.sql(f"DROP TABLE {table.name}")


def test_delta_round_trip(spark, cfg):
    impressions = TABLES["impressions"]
    v0 = tables.overwrite_partition(
        spark, _events(spark, D1, ("e1", "u1", False), ("e2", "u2", True)), impressions, cfg, D1
    )
    tables.overwrite_partition(spark, _events(spark, D2, ("e3", "u3", False)), impressions, cfg, D2)

    # MERGE inserts unseen keys and rewrites seen ones.
    tables.merge(spark, _events(spark, D2, ("e3", "u3", True), ("e4", "u4", False)), impressions, cfg)
    assert _rows(tables.read(spark, impressions, cfg, ds=D2)) == [
        ("e3", "u3", "p1", "c1", 1, True, "f.jsonl", D2),
        ("e4", "u4", "p1", "c1", 1, False, "f.jsonl", D2),
    ]
    # Rerunning a ds replaces exactly that partition and gives the same rows.
    before = _rows(tables.read(spark, impressions, cfg))
    tables.overwrite_partition(spark, _events(spark, D1, ("e1", "u1", False), ("e2", "u2", True)), impressions, cfg, D1)
    assert _rows(tables.read(spark, impressions, cfg)) == before

    # Time travel: the first version holds only the first day.
    first = tables.read(spark, impressions, cfg, version=v0)
    assert [r["event_id"] for r in first.orderBy("event_id").collect()] == ["e1", "e2"]
    assert tables.latest_version(spark, impressions, cfg) > v0
    # The contract's table properties are set when a write creates the table.
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{impressions.location(cfg)}`").first()
    assert detail["properties"]["delta.dataSkippingStatsColumns"] == "ts,position"


def test_replace_where_refuses_rows_of_another_day(spark, cfg):
    with pytest.raises(Exception, match="(?i)replaceWhere|DELTA_REPLACE_WHERE_MISMATCH"):
        tables.overwrite_partition(spark, _events(spark, D2, ("e1", "u1", False)), TABLES["impressions"], cfg, D1)


def test_not_null_keys_are_enforced(spark, cfg):
    with pytest.raises(Exception, match="(?i)NOT NULL"):
        tables.overwrite_partition(
            spark, _events(spark, D1, ("e2", "u2", True), (None, "u1", False)), TABLES["impressions"], cfg, D1
        )


def test_conform_names_missing_and_unexpected_columns(spark):
    df = _events(spark, D1, ("e1", "u1", False)).drop("clicked").withColumnRenamed("position", "slot")
    with pytest.raises(TableError, match=r"missing columns \['position', 'clicked'\], unexpected columns \['slot'\]"):
        tables.conform(df, TABLES["impressions"])


def test_conform_orders_and_casts(spark):
    df = _events(spark, D1, ("e1", "u1", False))
    shuffled = df.select(*reversed(df.columns)).withColumn("position", df["position"].cast("bigint"))
    conformed = tables.conform(shuffled, TABLES["impressions"])
    assert [(f.name, f.dataType) for f in conformed.schema] == [
        (f.name, f.dataType) for f in TABLES["impressions"].schema()
    ]


def test_reading_a_missing_table_names_its_producer(spark, cfg):
    with pytest.raises(TableError, match="table 'user_groups' does not exist .* written by the 'group_users' stage"):
        tables.read(spark, TABLES["user_groups"], cfg)


def test_unpartitioned_tables_refuse_partition_overwrite(spark, cfg):
    with pytest.raises(TableError, match="has no ds partition; use merge"):
        tables.overwrite_partition(spark, spark.range(1), TABLES["users"], cfg, D1)


def test_bad_ds_is_named(spark, cfg):
    with pytest.raises(TableError, match="ds must be an ISO date like 2026-11-01, got 'yesterday'"):
        tables.overwrite_partition(
            spark, _events(spark, D1, ("e1", "u1", False)), TABLES["impressions"], cfg, "yesterday"
        )


def test_register_views_exposes_existing_tables(spark, cfg):
    tables.overwrite_partition(spark, _events(spark, D1, ("e1", "u1", False)), TABLES["impressions"], cfg, D1)
    assert tables.register_views(spark, cfg) == ["impressions"]
    assert spark.sql("SELECT count(*) AS n FROM impressions").first()["n"] == 1


def _user(spark, city, updated, user_id="u1"):
    return spark.createDataFrame(
        [
            Row(
                user_id=user_id,
                age_band="25-34",
                gender="f",
                city_tier=city,
                purchase_power="high",
                occupation="engineer",
                device="ios",
                interests=["books"],
                updated_ds=updated,
            )
        ]
    )


def test_merge_unless_newer_never_rolls_a_dimension_back(spark, cfg):
    def user(city, updated):
        return _user(spark, city, updated)

    users = TABLES["users"]
    tables.merge(spark, user("tier-1", D2), users, cfg, unless_newer="updated_ds")
    tables.merge(spark, user("tier-3", D1), users, cfg, unless_newer="updated_ds")  # a backfill of an older day
    assert tables.read(spark, users, cfg).first()["city_tier"] == "tier-1"
    tables.merge(spark, user("tier-2", D2), users, cfg, unless_newer="updated_ds")  # a rerun of the newest day
    assert tables.read(spark, users, cfg).first()["city_tier"] == "tier-2"


def test_a_dimension_reads_as_the_night_left_it(spark, cfg):
    users, d3 = TABLES["users"], D2 + dt.timedelta(days=1)
    tables.ensure(spark, users, cfg)
    tables.merge(spark, _user(spark, "tier-1", D1), users, cfg, unless_newer="updated_ds", ds=D1)
    tables.merge(spark, _user(spark, "tier-2", d3), users, cfg, unless_newer="updated_ds", ds=d3)
    # A backfill of D2 after D3 ran: its upsert lands after D3's, yet D2 must not see D3's rows.
    tables.merge(spark, _user(spark, "tier-4", D2, "u2"), users, cfg, unless_newer="updated_ds", ds=D2)

    def cities(as_of):
        return sorted((r["user_id"], r["city_tier"]) for r in tables.read(spark, users, cfg, as_of=as_of).collect())

    assert cities(D1) == cities(D2) == [("u1", "tier-1")]
    assert cities(d3) == [("u1", "tier-2"), ("u2", "tier-4")]
    assert tables.version_as_of(spark, users, cfg, D1 - dt.timedelta(days=1)) == 0  # only the empty table


def test_partition_writes_record_their_ds(spark, cfg):
    impressions = TABLES["impressions"]
    tables.overwrite_partition(spark, _events(spark, D2, ("e1", "u1", False)), impressions, cfg, D2)
    tables.overwrite_partition(spark, _events(spark, D1, ("e2", "u1", True)), impressions, cfg, D1)
    assert tables.version_as_of(spark, impressions, cfg, D1) == 0


def test_stages_writing_one_night_side_by_side_all_land(spark, cfg):
    # Where the DAG branches, tasks write their own stage's rows into eval_metrics's ds partition
    # at the same moment. Delta sees each such pair of commits as a conflict; every one must land.
    stages = [f"branch_{i}" for i in range(4)]
    tables.write_metrics(spark, cfg, D1, "earlier", [tables.Metric("kept", "all", 0.0)], "earlier")
    start = threading.Barrier(len(stages))

    def write(stage: str) -> None:
        start.wait()
        tables.write_metrics(spark, cfg, D1, stage, [tables.Metric("m", "all", 1.0)], stage)

    with ThreadPoolExecutor(len(stages)) as pool:
        list(pool.map(write, stages))
    landed = tables.read(spark, EVAL_METRICS, cfg, ds=D1).select("stage", "run_id").collect()
    assert sorted(tuple(r) for r in landed) == sorted([("earlier", "earlier"), *((s, s) for s in stages)])


def test_every_analyst_view_compiles_over_the_contracts(spark, cfg):
    for table in TABLES.values():
        tables.ensure(spark, table, cfg)
    registered = tables.register_views(spark, cfg)
    views = {p.stem for p in tables.VIEWS_FOLDER.glob("*.sql")}
    assert views <= set(registered)
    for view in views:
        spark.table(view).collect()  # empty, but planned and run against the real schemas


def test_membership_history_matches_renumbered_groups_by_their_members(spark, cfg):
    # Night 2 renumbers night 1's two groups (0 <-> 1); only u5 really changes group.
    night1 = {"u1": 0, "u2": 0, "u3": 0, "u4": 1, "u5": 1, "u6": 1}
    night2 = {"u1": 1, "u2": 1, "u3": 1, "u4": 0, "u5": 1, "u6": 0}
    rows = [
        Row(product_id="p1", user_id=u, group_id=g, distance=0.0, paag_version="osmf-paag/1", ds=ds)
        for ds, night in ((D1, night1), (D2, night2))
        for u, g in night.items()
    ]
    for ds in (D1, D2):
        night_rows = spark.createDataFrame([r for r in rows if r.ds == ds])
        tables.overwrite_partition(spark, night_rows, TABLES["user_groups"], cfg, ds)
    tables.register_views(spark, cfg)
    moved = spark.sql("SELECT user_id, moved FROM group_membership_history WHERE ds = DATE'2026-11-02'").collect()
    assert sorted(r["user_id"] for r in moved if r["moved"]) == ["u5"]


# A writer whose eight tasks each take two seconds, so it can be killed with part of its files written.
SLOW_WRITER = """
import sys, time
from pyspark.sql import functions as F
from osmf_lib import tables
from osmf_lib.config import load_config
from osmf_lib.spark import get_spark
from osmf_lib.tables import EVAL_METRICS

ds, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config(overrides=overrides, environ={})
spark = get_spark(cfg)
slow = F.udf(lambda i: time.sleep(2) or float(i), "double")
rows = spark.range(0, 8, numPartitions=8).select(
    F.lit("killed").alias("stage"), F.col("id").cast("string").alias("metric"), F.lit("all").alias("slice"),
    slow("id").alias("value"), F.lit("run").alias("run_id"), F.lit(ds).cast("date").alias("ds"),
)
tables.overwrite_partition(spark, rows, EVAL_METRICS, cfg, ds)
"""


def _stored(spark, cfg, ds):
    return sorted((r["metric"], r["value"]) for r in tables.read(spark, EVAL_METRICS, cfg, ds=ds).collect())


def test_a_writer_killed_mid_write_leaves_the_partition_as_it_was_and_a_rerun_completes(spark, cfg):
    tables.write_metrics(spark, cfg, D1, "killed", [tables.Metric("kept", "all", 1.0)], "earlier")
    folder = Path(EVAL_METRICS.location(cfg)) / f"ds={D1}"
    earlier = set(folder.glob("*.parquet"))
    overrides = [f"lakehouse.root={cfg.lakehouse.root}", "spark.master=local[2]", "spark.show_progress=false"]
    # Its own process group: the writer's JVM dies with it, as when a worker node is lost.
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, D1.isoformat(), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while not set(folder.glob("*.parquet")) - earlier:
        assert writer.poll() is None, writer.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the writer wrote no file in time"
        time.sleep(0.2)
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait()
    assert set(folder.glob("*.parquet")) - earlier  # its files are on disk, uncommitted ...
    assert _stored(spark, cfg, D1) == [("kept", 1.0)]  # ... and invisible
    tables.write_metrics(spark, cfg, D1, "killed", [tables.Metric("rerun", "all", 2.0)], "rerun")
    assert _stored(spark, cfg, D1) == [("rerun", 2.0)]
