"""Ingestion of simulated landing files (every fault class) and of a bring-your-own log."""

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import Row
from pyspark.sql import functions as F

from osmf_lib import ingest, tables
from osmf_lib.config import PROJECT_ROOT, load_config
from osmf_lib.job import StageError
from osmf_lib.synth import write_landing
from osmf_lib.tables import CREATIVES, IMPRESSIONS, PRODUCTS, REJECTED_EVENTS, USERS

D1, D2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
FAULTS = [
    "malformed_json",
    "missing_field",
    "extra_field",
    "wrong_type",
    "unknown_id",
    "late",
    "future",
    "duplicate_same_day",
    "duplicate_previous_day",
]
# Reason kind in rejected_events (text before the first colon) for each injected fault class.
REJECT_KIND = {
    "malformed_json": ["malformed JSON"],
    "missing_field": ["missing field"],
    "extra_field": ["unexpected fields"],
    "wrong_type": ["wrong type"],
    "unknown_id": ["unknown user_id", "unknown product_id", "unknown creative_id"],
    "late": ["late event"],
    "future": ["future timestamp"],
}


@pytest.fixture(scope="module")
def landed(make_cfg):
    """Two tiny simulated days with 1% of every fault class, ingested in order."""
    cfg = make_cfg(*[f"synth.faults.{fault}=0.01" for fault in FAULTS])
    summary = write_landing(cfg, scale="tiny", start=D1, days=2)
    from osmf_lib.spark import get_spark

    spark = get_spark(cfg)
    counts = {ds: ingest.ingest_day(spark, cfg, ds) for ds in (D1, D2)}
    return cfg, summary, counts


def _kinds(spark, cfg, ds):
    return ingest.reject_reasons(spark, cfg, ds)


def test_every_line_is_accounted_for(spark, landed):
    cfg, summary, counts = landed
    for ds in (D1, D2):
        day, got = summary.day(ds), counts[ds]
        assert got.balanced
        assert got.read == day.lines
        assert tables.read(spark, IMPRESSIONS, cfg, ds=ds).count() == got.accepted
        assert tables.read(spark, REJECTED_EVENTS, cfg, ds=ds).count() == got.rejected


def test_every_fault_class_is_rejected_with_its_reason(spark, landed):
    cfg, summary, _ = landed
    for ds in (D1, D2):
        injected, kinds = summary.day(ds).faults, _kinds(spark, cfg, ds)
        for fault, reasons in REJECT_KIND.items():
            assert injected[fault] > 0, fault
            assert sum(kinds.get(r, 0) for r in reasons) == injected[fault], (fault, kinds)
        assert set(kinds) == {r for reasons in REJECT_KIND.values() for r in reasons}


def test_duplicates_are_dropped_once_counted(spark, landed):
    cfg, summary, counts = landed
    assert counts[D1].duplicates == summary.day(D1).faults["duplicate_same_day"]
    day2 = summary.day(D2).faults
    assert counts[D2].duplicates == day2["duplicate_same_day"] + day2["duplicate_previous_day"]
    stored = tables.read(spark, IMPRESSIONS, cfg)
    assert stored.count() == stored.select("event_id").distinct().count()


def test_rejected_lines_point_at_their_file_and_line(spark, landed):
    cfg, _, _ = landed
    for row in (
        tables.read(spark, REJECTED_EVENTS, cfg, ds=D1).orderBy("source_file", "line_number").limit(20).collect()
    ):
        lines = Path(row["source_file"].removeprefix("file:")).read_text().split("\n")
        assert lines[row["line_number"] - 1] == row["raw"]


def test_dimensions_are_upserted(spark, landed):
    cfg, _, _ = landed
    world_users = sum(1 for _ in (Path(cfg.lakehouse.landing) / D1.isoformat() / "dims" / "users.jsonl").open())
    assert tables.read(spark, USERS, cfg).count() >= world_users
    assert tables.read(spark, USERS, cfg).where("updated_ds = DATE'2026-11-02'").count() > 0
    assert tables.read(spark, PRODUCTS, cfg).where("category IS NULL").count() == 0
    assert tables.read(spark, CREATIVES, cfg).where("origin != 'logged'").count() == 0


def test_rerunning_a_day_changes_nothing(spark, landed):
    cfg, _, counts = landed

    def snapshot():
        return (
            sorted(tuple(r) for r in tables.read(spark, IMPRESSIONS, cfg).collect()),
            sorted(tuple(r) for r in tables.read(spark, REJECTED_EVENTS, cfg).collect()),
            sorted(tuple(r) for r in tables.read(spark, USERS, cfg).collect()),
        )

    # The tiny world adds no creative on its second day, so that upsert has nothing to commit.
    assert (Path(cfg.lakehouse.landing) / D2.isoformat() / "dims" / "creatives.jsonl").read_text() == ""
    creatives_version = tables.latest_version(spark, CREATIVES, cfg)
    before = snapshot()
    assert ingest.ingest_day(spark, cfg, D2) == counts[D2]
    assert snapshot() == before
    assert tables.latest_version(spark, CREATIVES, cfg) == creatives_version


def test_a_missing_landing_folder_is_a_clear_failure(spark, make_cfg):
    cfg = make_cfg()
    with pytest.raises(StageError, match=r"no landing folder for ds=2026-11-05: .*2026-11-05 does not exist"):
        ingest.ingest_day(spark, cfg, dt.date(2026, 11, 5))


def test_an_empty_day_is_a_logged_no_op(spark, make_cfg, capsys):
    cfg = make_cfg()
    events = Path(cfg.lakehouse.landing) / "2026-11-03" / "events"
    events.mkdir(parents=True)
    (events / "part-00000.jsonl").write_text("")
    assert ingest.ingest_day(spark, cfg, dt.date(2026, 11, 3)) == ingest.Reconciliation(0, 0, 0, 0)
    assert "hold no events for ds=2026-11-03" in capsys.readouterr().out
    assert not tables.exists(spark, IMPRESSIONS, cfg)


# --- bring your own logs --------------------------------------------------------------------

RATINGS = """uid\titem\tstars\twhen
1\tm1\t5\t1793491200
1\tm2\t2\t1793494800
2\tm1\t4\t1793498400
2\tm9\t3\t1793502000
3\tm2\tfive\t1793505600
"""
USERS_CSV = "uid,age,sex,job\n1,23,F,student\n2,41,M,engineer\n3,67,F,retired\n"
MOVIES_CSV = "item,name,genre\nm1,Heat,crime\nm2,Up,animation\n"

BYO_EXAMPLE = PROJECT_ROOT / "conf" / "examples" / "byo-ratings.yaml"


def _byo(tmp_path, *overrides):
    """The README's worked example: its config file over sample files of that shape."""
    day = tmp_path / "landing" / "2026-11-01"
    day.mkdir(parents=True)
    # The external log has no event id column: the mapping must name one, so give it one.
    lines = RATINGS.splitlines()
    numbered = [f"event\t{lines[0]}"] + [f"r{i}\t{line}" for i, line in enumerate(lines[1:], start=1)]
    (day / "ratings.tsv").write_text("\n".join(numbered) + "\n")
    (day / "users.csv").write_text(USERS_CSV)
    (day / "movies.csv").write_text(MOVIES_CSV)
    return load_config(
        config_file=BYO_EXAMPLE,
        overrides=[
            f"lakehouse.root={tmp_path / 'lakehouse'}",
            f"lakehouse.landing={tmp_path / 'landing'}",
            "spark.show_progress=false",
            *overrides,
        ],
        environ={},
    )


def test_an_external_log_ingests_through_a_mapping(spark, tmp_path):
    cfg = _byo(tmp_path)
    counts = ingest.ingest_day(spark, cfg, D1)
    assert counts == ingest.Reconciliation(read=5, accepted=3, rejected=2, duplicates=0)
    rows = {r["event_id"]: r for r in tables.read(spark, IMPRESSIONS, cfg).collect()}
    assert {k: (r["clicked"], r["creative_id"], r["position"]) for k, r in rows.items()} == {
        "r1": (True, "m1-original", 1),
        "r2": (False, "m2-original", 1),
        "r3": (True, "m1-original", 1),
    }
    assert rows["r1"]["ts"] == dt.datetime(2026, 11, 1, 0, 0)
    reasons = {r["line_number"]: r["reason"] for r in tables.read(spark, REJECTED_EVENTS, cfg).collect()}
    assert reasons == {5: "unknown product_id: m9", 6: "wrong type: clicked='five' is not a click label"}
    users = {r["user_id"]: r for r in tables.read(spark, USERS, cfg).collect()}
    assert [users[u]["age_band"] for u in "123"] == ["18-24", "35-44", "55+"]
    assert users["2"]["occupation"] == "engineer" and users["2"]["city_tier"] is None
    originals = tables.read(spark, CREATIVES, cfg).collect()
    assert {(r["creative_id"], r["prompt"]) for r in originals} == {
        ("m1-original", ingest.ORIGINAL_CREATIVE_PROMPT),
        ("m2-original", ingest.ORIGINAL_CREATIVE_PROMPT),
    }


def test_a_wrong_mapping_fails_naming_the_column(spark, tmp_path):
    cfg = _byo(tmp_path, "ingest.events.columns.user_id=user")
    with pytest.raises(StageError, match=r"ratings.tsv: the mapping names columns \['user'\] that the file does not"):
        ingest.ingest_day(spark, cfg, D1)


# --- the pure transforms ----------------------------------------------------------------------


def test_a_late_redelivery_is_a_duplicate_and_a_late_new_event_is_rejected(spark):
    validated = spark.createDataFrame(
        [
            Row(source_file="f", _split=0, _row=1, raw="a", event_id="old", reason=None, _late="late event: x"),
            Row(source_file="f", _split=0, _row=2, raw="b", event_id="new", reason=None, _late="late event: x"),
            Row(source_file="f", _split=0, _row=3, raw="c", event_id="dup", reason="wrong type: x", _late=None),
            Row(source_file="f", _split=0, _row=4, raw="d", event_id="dup", reason=None, _late=None),
            Row(source_file="f", _split=0, _row=5, raw="e", event_id="twice", reason=None, _late=None),
            Row(source_file="f", _split=9, _row=0, raw="f", event_id="twice", reason=None, _late=None),
            Row(source_file="e", _split=0, _row=7, raw="g", event_id="twice", reason=None, _late=None),
        ],
        "source_file string, _split long, _row long, raw string, event_id string, reason string, _late string",
    )
    stored = spark.createDataFrame([Row(event_id="old")])
    repeated = ingest.repeated_ids(validated, stored)
    classified = ingest.classify_events(validated, ingest.first_copies(validated, repeated))
    status = {r["_row"]: (r[ingest.STATUS], r["reason"]) for r in classified.collect()}
    assert status == {
        1: (ingest.DUPLICATE, None),
        2: (ingest.REJECTED, "late event: x"),
        3: (ingest.REJECTED, "wrong type: x"),
        4: (ingest.ACCEPTED, None),  # a rejected line with the same id does not make it a duplicate
        5: (ingest.DUPLICATE, None),
        0: (ingest.DUPLICATE, None),
        7: (ingest.ACCEPTED, None),  # the first in file order: file e before f
    }


def test_only_stored_events_within_the_days_event_times_are_read_for_deduplication(spark):
    at = "2026-11-{} {}:00:00"
    validated = spark.createDataFrame(
        [
            Row(source_file="f", _split=0, _row=1, ts=at.format("01", "23"), reason=None),  # a late line
            Row(source_file="f", _split=0, _row=2, ts=at.format("02", "05"), reason=None),
            Row(source_file="f", _split=0, _row=3, ts=at.format("02", "07"), reason=None),
            Row(source_file="f", _split=0, _row=4, ts=at.format("05", "00"), reason="future timestamp: x"),
        ],
        "source_file string, _split long, _row long, ts string, reason string",
    ).withColumn("ts", F.to_timestamp("ts"))
    survey = ingest.survey_events(validated).collect()
    stored = spark.createDataFrame(
        [
            (f"e{day}{hour}", at.format(day, hour))
            for day in ("01", "02", "03", "05")
            for hour in ("04", "05", "06", "23")
        ],
        "event_id string, ts string",
    ).withColumn("ts", F.to_timestamp("ts"))
    kept = {r["event_id"] for r in ingest.repeatable(stored, ingest.event_times(survey)).collect()}
    assert kept == {"e0123", "e0205", "e0206"}
    assert ingest.LineNumbers.of(survey).lines == 4
    assert ingest.repeatable(stored, []).count() == 0


def test_the_ingestion_view_summarises_each_day(spark, landed):
    cfg, _, counts = landed
    assert "ingestion_daily" in tables.register_views(spark, cfg)
    day = spark.sql("SELECT * FROM ingestion_daily WHERE ds = DATE'2026-11-01'").first()
    assert (day["impressions"], day["rejected"]) == (counts[D1].accepted, counts[D1].rejected)
    assert day["by_reason"] == ingest.reject_reasons(spark, cfg, D1)


def test_deduplication_reads_only_the_stored_files_within_the_days_event_times(spark, landed):
    cfg, _, _ = landed
    stored = tables.read(spark, IMPRESSIONS, cfg)
    second_day = tables.read(spark, IMPRESSIONS, cfg, ds=D2).select(
        F.unix_micros(F.min("ts")).alias("first"), F.unix_micros(F.max("ts")).alias("last")
    )
    kept = set(ingest.repeatable(stored, [tuple(second_day.first())]).inputFiles())
    assert kept == set(tables.read(spark, IMPRESSIONS, cfg, ds=D2).inputFiles())  # day 1's files are skipped


def test_line_numbers_stay_exact_when_a_file_is_split(spark, tmp_path, cfg):
    events = tmp_path / "events"
    events.mkdir()
    (events / "a.jsonl").write_text("".join(f'{{"event_id": "a{i}"}}\n' for i in range(1, 4001)))
    (events / "b.jsonl").write_text("".join(f'{{"event_id": "b{i}"}}\n' for i in range(1, 11)))
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16k")  # a.jsonl (~90 KB) spans several splits
    try:
        landed = ingest.read_source(spark, str(events), cfg.ingest.events, ["event_id"])
        extents = landed.rows.groupBy(ingest.FILE, ingest.SPLIT).agg(*ingest.split_extent()).collect()
        numbers = ingest.LineNumbers.of(extents)
        rows = numbers.apply(spark, landed.rows).collect()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    assert len(extents) > 3
    assert len(rows) == numbers.lines == 4010
    assert all(r["event_id"] == f"{r['source_file'][-7]}{r['line_number']}" for r in rows)
