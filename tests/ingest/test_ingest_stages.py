"""Ingestion of simulated landing files (every fault class) and of a bring-your-own log."""

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import Row
from pyspark.sql import functions as F

from osmf_lib import tables, tracking
from osmf_lib.config import PROJECT_ROOT, QualityConfig, load_config
from osmf_lib.ingest import stages as ingest_stages
from osmf_lib.ingest.dedup import (
    MAX_TIME_RANGES,
    Reconciliation,
    classify_events,
    event_times,
    first_copies,
    merge_closest,
    repeatable,
    repeated_ids,
    survey_events,
)
from osmf_lib.ingest.dimensions import validate_dimension
from osmf_lib.ingest.read import (
    ACCEPTED,
    DUPLICATE,
    FILE,
    REASON,
    REJECTED,
    SPLIT,
    STATUS,
    LineNumbers,
    read_source,
    split_extent,
)
from osmf_lib.ingest.stages import ingest_day, ingest_events, quality_checks, reject_reasons, stage_day
from osmf_lib.ingest.validate import EVENT_FIELDS, ORIGINAL_CREATIVE_PROMPT, validate_events
from osmf_lib.inputs import world_of
from osmf_lib.job import StageError
from osmf_lib.synth import write_landing
from osmf_lib.tables import (
    CREATIVES,
    IMPRESSIONS,
    LANDING_MANIFESTS,
    PRODUCTS,
    REJECTED_EVENTS,
    USER_ATTRIBUTES,
    USERS,
)

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
    counts = {ds: ingest_day(spark, cfg, ds) for ds in (D1, D2)}
    return cfg, summary, counts


def _kinds(spark, cfg, ds):
    return reject_reasons(spark, cfg, ds)


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
    assert ingest_day(spark, cfg, D2) == counts[D2]
    assert snapshot() == before
    assert tables.latest_version(spark, CREATIVES, cfg) == creatives_version


def test_a_missing_landing_folder_is_a_clear_failure(spark, make_cfg):
    cfg = make_cfg()
    with pytest.raises(StageError, match=r"no landing folder for ds=2026-11-05: .*2026-11-05 does not exist"):
        ingest_day(spark, cfg, dt.date(2026, 11, 5))


def test_the_simulated_world_of_each_day_is_recorded(spark, landed):
    cfg, _, _ = landed
    for ds in (D1, D2):
        assert world_of(spark, cfg, ds) == (cfg.synth.seed, "tiny")
        (row,) = tables.read(spark, LANDING_MANIFESTS, cfg, ds=ds).collect()
        assert row["manifest_file"].endswith(f"/{ds.isoformat()}/synth-manifest.json")
    assert world_of(spark, cfg, dt.date(2026, 11, 3)) is None


def test_the_quality_gate_compares_the_day_with_the_previous_one(spark, landed):
    cfg, _, counts = landed
    # The checks read the staged day: a rerun's, here, which is the stored one again.
    first, second = stage_day(spark, cfg, D1), stage_day(spark, cfg, D2)
    # The first day has no previous one to compare with.
    assert {c.name for c in quality_checks(spark, cfg, first)} == {"rejected_share", "attribute_null_share"}
    checks = {c.name: c for c in quality_checks(spark, cfg, second)}
    assert 0.5 < checks["impressions_per_day_vs_previous"].value < 2 and checks["attribute_null_share"].value == 0.0
    # 1% of each of seven refused fault classes is more than the default bound of 5% allows.
    refused = checks["rejected_share"]
    assert refused.value == pytest.approx(counts[D2].rejected / counts[D2].read) and refused.value > 0.05
    assert [c.name for c in checks.values() if not c.passed] == ["rejected_share"]
    assert str(refused).startswith(f"rejected_share {refused.value:.4g} > quality.max_rejected_share 0.05 FAILED")
    # A feed known to refuse that many says so in its config.
    lenient = cfg.model_copy(update={"quality": QualityConfig(max_rejected_share=0.1)})
    assert all(c.passed for c in quality_checks(spark, lenient, second))


# --- a hand-written JSON-lines day -------------------------------------------------------------

USER = {"user_id": "u1", "gender": "female"}
DIMENSION_LINES = {
    "users": [USER],
    "products": [{"product_id": "p1", "title": "Desk lamp", "category": "home"}],
    "creatives": [{"creative_id": "c1", "product_id": "p1", "prompt": "on an oak desk"}],
}
EVENT = {
    "event_id": "e1",
    "ts": "2026-11-01T10:00:00Z",
    "user_id": "u1",
    "product_id": "p1",
    "creative_id": "c1",
    "position": 1,
    "clicked": False,
}


def _land(cfg, events: list, manifest: str | None = None, **dimensions: list) -> None:
    """D1 in the default layout; lines are dicts (written as JSON) or text (written as is)."""
    day = Path(cfg.lakehouse.landing) / D1.isoformat()
    files = {"events/part-00000.jsonl": events, "synth-manifest.json": [manifest] if manifest else None}
    files |= {f"dims/{name}.jsonl": dimensions.get(name, lines) for name, lines in DIMENSION_LINES.items()}
    for name, lines in files.items():
        (day / name).parent.mkdir(parents=True, exist_ok=True)
        if lines is None:
            (day / name).unlink(missing_ok=True)
        else:
            (day / name).write_text("".join(f"{json.dumps(x) if isinstance(x, dict) else x}\n" for x in lines))


def test_ids_that_could_be_paths_and_images_from_elsewhere_are_rejected_naming_why(spark, make_cfg):
    cfg = make_cfg()
    pictures = Path(cfg.lakehouse.landing) / "images" / "products"
    lamp = DIMENSION_LINES["products"][0]
    products = [
        lamp,
        {**lamp, "product_id": "../../outside"},
        {**lamp, "product_id": "p\u0007"},
        {**lamp, "product_id": "p" * 129},
        {**lamp, "product_id": ".."},
        {**lamp, "product_id": "p2", "image_uri": "/etc/passwd"},
        {**lamp, "product_id": "p3", "image_uri": "http://169.254.169.254/latest/meta-data"},
        {**lamp, "product_id": "p4", "image_uri": f"{pictures}/../../../outside.png"},
        {**lamp, "product_id": "p5", "image_uri": f"{pictures}/p5.png"},
        {**lamp, "product_id": "p6", "image_uri": ""},
    ]
    events = [EVENT, {**EVENT, "event_id": "e2", "user_id": "../u1"}, {**EVENT, "event_id": "e3", "user_id": "u1\n"}]
    _land(cfg, events, products=products)
    assert ingest_day(spark, cfg, D1) == Reconciliation(3, 1, 2, 0)
    rule = "(1 to 128 letters, digits, '.', '_' or '-', and not '.' or '..')"
    roots = f"{Path(cfg.lakehouse.landing)}/images/, {Path(cfg.render.artifacts)}/"
    stores = "abfs, abfss, file, gcs, gs, s3, s3a"
    reasons = {
        (Path(r["source_file"]).name, r["line_number"]): r["reason"]
        for r in tables.read(spark, REJECTED_EVENTS, cfg, ds=D1).collect()
    }
    assert reasons == {
        ("products.jsonl", 2): f"unsafe product_id: '../../outside' {rule}",
        ("products.jsonl", 3): f"unsafe product_id: a control character {rule}",
        ("products.jsonl", 4): f"unsafe product_id: '{'p' * 64}' {rule}",
        ("products.jsonl", 5): f"unsafe product_id: '..' {rule}",
        ("products.jsonl", 6): f"refused image_uri: outside images.roots ({roots})",
        ("products.jsonl", 7): f"refused image_uri: scheme http:// (images come from {stores})",
        ("products.jsonl", 8): "refused image_uri: a '.' or '..' segment",
        ("part-00000.jsonl", 2): f"unsafe user_id: '../u1' {rule}",
        ("part-00000.jsonl", 3): f"unsafe user_id: a control character {rule}",
    }
    stored = tables.read(spark, PRODUCTS, cfg).select("product_id", "image_uri").collect()
    assert {r["product_id"]: r["image_uri"] for r in stored} == {"p1": None, "p5": f"{pictures}/p5.png", "p6": ""}


def test_an_empty_rerun_that_may_shrink_leaves_no_rows_of_the_earlier_run(spark, make_cfg):
    cfg = make_cfg("ingest.allow_shrink=true")
    _land(cfg, [EVENT, "{cut off"], manifest='{"seed": 3, "scale": "tiny"}')
    assert ingest_day(spark, cfg, D1) == Reconciliation(2, 1, 1, 0)
    assert world_of(spark, cfg, D1) == (3, "tiny")
    # The day is shipped again with its events withdrawn, and from real logs (no manifest).
    _land(cfg, [])
    assert ingest_day(spark, cfg, D1) == Reconciliation(0, 0, 0, 0)
    for table in (IMPRESSIONS, REJECTED_EVENTS, LANDING_MANIFESTS):
        assert tables.read(spark, table, cfg, ds=D1).count() == 0, table.name
    assert world_of(spark, cfg, D1) is None


def test_a_failed_gate_or_a_rerun_that_loses_events_leaves_every_table_as_it_was(spark, make_cfg, run_stage):
    cfg = make_cfg()
    events = [EVENT, {**EVENT, "event_id": "e2"}]
    user, newcomer = ({"user_id": u, **{a: "x" for a in USER_ATTRIBUTES}} for u in ("u1", "u2"))
    _land(cfg, events, users=[user])
    tracking.configure(cfg)
    run_stage(ingest_events, cfg, D1)
    written = (IMPRESSIONS, REJECTED_EVENTS, LANDING_MANIFESTS, USERS, PRODUCTS, CREATIVES)

    def versions() -> dict[str, int]:
        return {table.name: tables.latest_version(spark, table, cfg) for table in written}

    before = versions()
    # Shipped again with a new user, but most of its lines cut off: the gate refuses the day.
    _land(cfg, [*events, "{cut", "{cut", "{cut"], users=[user, newcomer])
    refused = r"quality gate failed.*rejected_share 0\.6 >.*nothing of the night was written"
    with pytest.raises(StageError, match=refused):
        run_stage(ingest_events, cfg, D1)
    assert versions() == before
    # Shipped again with one of its two events lost: refused, naming both counts.
    _land(cfg, events[:1], users=[user, newcomer])
    lost = r"holds 1 impressions where the stored run of the ds holds 2, and 1 of those events would be lost"
    with pytest.raises(StageError, match=rf"{lost} \(50\.0% > quality.max_shrink 0\); nothing was written.*shrink"):
        ingest_day(spark, cfg, D1)
    assert versions() == before
    meant = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"allow_shrink": True})})
    assert ingest_day(spark, meant, D1) == Reconciliation(1, 1, 0, 0)
    assert {r["user_id"] for r in tables.read(spark, USERS, cfg).collect()} == {"u1", "u2"}


def test_users_missing_an_attribute_the_users_file_carries_fail_the_gate(spark, make_cfg):
    cfg = make_cfg()
    _land(cfg, [EVENT])  # its one user has a gender and nothing else
    staged = stage_day(spark, cfg, D1)
    (missing,) = [c for c in quality_checks(spark, cfg, staged) if c.name == "attribute_null_share"]
    assert not missing.passed and missing.measured == "age_band: 1 of the day's 1 users"
    # A source that lacks those attributes says so in its mapping; then only gender is checked.
    absent = {a: None for a in USER_ATTRIBUTES if a != "gender"}
    users = cfg.ingest.users.model_copy(update={"columns": absent})
    mapped = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"users": users})})
    (carried,) = [c for c in quality_checks(spark, mapped, staged) if c.name == "attribute_null_share"]
    assert carried.passed and carried.measured == "gender: 0 of the day's 1 users"


def test_dimension_files_are_reconciled_naming_the_file(spark, make_cfg, caplog):
    caplog.set_level(logging.INFO, logger="osmf_lib")
    cfg = make_cfg()
    _land(cfg, [EVENT], users=[USER, "{cut off", {**USER, "gender": "male"}])
    ingest_day(spark, cfg, D1)
    users = Path(cfg.lakehouse.landing) / D1.isoformat() / "dims" / "users.jsonl"
    # The reconciliation is the operator's line: each file read, and where every line went.
    assert f"ingest users 2026-11-01 from {users}: read 3 = accepted 1 + rejected 1 + duplicates 1 (ok)" in caplog.text
    assert [r["gender"] for r in tables.read(spark, USERS, cfg).collect()] == ["male"]
    (reject,) = tables.read(spark, REJECTED_EVENTS, cfg, ds=D1).collect()
    assert reject["source_file"].endswith("dims/users.jsonl") and reject["line_number"] == 2


def test_a_dimension_file_that_does_not_add_up_fails_the_job_unwritten(spark, make_cfg, monkeypatch):
    cfg = make_cfg()
    _land(cfg, [EVENT])
    validate = validate_dimension

    def doubled(*args):
        rows = validate(*args)
        return rows.unionByName(rows)  # as a join that multiplies rows would

    monkeypatch.setattr(ingest_stages, "validate_dimension", doubled)
    with pytest.raises(StageError, match=r"ingest users 2026-11-01 from .*users.jsonl: read 1 = .*DOES NOT ADD UP"):
        ingest_day(spark, cfg, D1)
    assert not tables.exists(spark, USERS, cfg)


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [('{"seed": 7', "it is not JSON"), ('{"seed": "7", "scale": "tiny"}', "got"), ("[7, 8]", "got")],
)
def test_a_malformed_manifest_fails_naming_the_file_before_anything_is_written(spark, make_cfg, manifest, problem):
    cfg = make_cfg()
    _land(cfg, [EVENT], manifest=manifest)
    with pytest.raises(StageError, match=rf"2026-11-01/synth-manifest.json: malformed simulator manifest.*{problem}"):
        ingest_day(spark, cfg, D1)
    assert not tables.exists(spark, USERS, cfg)


def test_world_of_a_lakehouse_without_manifests_is_none(spark, cfg):
    assert world_of(spark, cfg, D1) is None


# --- bring your own logs --------------------------------------------------------------------

RATINGS_HEADER = "uid\titem\tstars\twhen\n"
RATINGS = """1\tm1\t5\t1793491200
1\tm2\t2\t1793494800
2\tm1\t4\t1793498400
2\tm9\t3\t1793502000
3\tm2\tfive\t1793505600
"""
USERS_CSV = "uid,age,sex,job\n1,23,F,student\n2,41,M,engineer\n3,67,F,retired\n"
MOVIES_CSV = "item,name,genre\nm1,Heat,crime\nm2,Up,animation\n"

BYO_EXAMPLE = PROJECT_ROOT / "conf" / "examples" / "byo-ratings.yaml"


def _ship_ratings(tmp_path, ds, ratings=RATINGS):
    day = tmp_path / "landing" / ds.isoformat()
    day.mkdir(parents=True, exist_ok=True)
    (day / "ratings.tsv").write_text(RATINGS_HEADER + ratings)


def _byo(tmp_path, *overrides):
    """The worked example of docs/stages/ingest.md: its config file over sample files of that shape."""
    _ship_ratings(tmp_path, D1)
    day = tmp_path / "landing" / D1.isoformat()
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
    counts = ingest_day(spark, cfg, D1)
    assert counts == Reconciliation(read=5, accepted=3, rejected=2, duplicates=0)
    rows = {(r["user_id"], r["product_id"]): r for r in tables.read(spark, IMPRESSIONS, cfg).collect()}
    assert {k: (r["clicked"], r["creative_id"], r["position"]) for k, r in rows.items()} == {
        ("1", "m1"): (True, "m1-original", 1),
        ("1", "m2"): (False, "m2-original", 1),
        ("2", "m1"): (True, "m1-original", 1),
    }
    assert rows["1", "m1"]["ts"] == dt.datetime(2026, 11, 1, 0, 0)
    # The log has no event ids: each row's is derived from its content.
    ids = {r["event_id"] for r in rows.values()}
    assert len(ids) == 3 and all(len(i) == 64 and int(i, 16) >= 0 for i in ids)
    reasons = {r["line_number"]: r["reason"] for r in tables.read(spark, REJECTED_EVENTS, cfg).collect()}
    assert reasons == {5: "unknown product_id: m9", 6: "wrong type: clicked='five' is not a click label"}
    users = {r["user_id"]: r for r in tables.read(spark, USERS, cfg).collect()}
    assert [users[u]["age_band"] for u in "123"] == ["18-24", "35-44", "55+"]
    assert users["2"]["occupation"] == "engineer" and users["2"]["city_tier"] is None
    originals = tables.read(spark, CREATIVES, cfg).collect()
    assert {(r["creative_id"], r["prompt"]) for r in originals} == {
        ("m1-original", ORIGINAL_CREATIVE_PROMPT),
        ("m2-original", ORIGINAL_CREATIVE_PROMPT),
    }


def test_a_redelivered_log_without_event_ids_deduplicates_against_what_is_stored(spark, tmp_path):
    cfg = _byo(tmp_path)
    ingest_day(spark, cfg, D1)
    first = {r["event_id"] for r in tables.read(spark, IMPRESSIONS, cfg).collect()}
    # The next day's file re-sends the whole of the first, then one new rating.
    _ship_ratings(tmp_path, D2, RATINGS + "3\tm1\t4\t1793577600\n")
    assert ingest_day(spark, cfg, D2) == Reconciliation(read=6, accepted=1, rejected=2, duplicates=3)
    (new,) = tables.read(spark, IMPRESSIONS, cfg, ds=D2).collect()
    assert (new["user_id"], new["product_id"]) == ("3", "m1") and new["event_id"] not in first


def test_a_history_of_months_ingests_as_one_ds(spark, tmp_path):
    """The example keeps events of any age (ingest.max_late_days: null), so a log's whole history
    lands under one ds; a redelivery of it still finds every stored copy."""
    cfg = _byo(tmp_path)
    ds = dt.date(2026, 11, 1)
    days = range(0, 123, 3)  # 2026-07-01 .. 2026-11-01
    start = int(dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC).timestamp())
    history = "".join(f"{1 + day % 2}\tm{1 + day % 2}\t{day % 5 + 1}\t{start + day * 86_400}\n" for day in days)
    _ship_ratings(tmp_path, ds, history)
    assert ingest_day(spark, cfg, ds) == Reconciliation(len(days), len(days), 0, 0)
    assert tables.read(spark, IMPRESSIONS, cfg).agg(F.min("ts")).first()[0] == dt.datetime(2026, 7, 1, 12)
    _ship_ratings(tmp_path, D2, history)
    assert ingest_day(spark, cfg, D2) == Reconciliation(len(days), 0, 0, len(days))


def test_a_wrong_mapping_fails_naming_the_column(spark, tmp_path):
    cfg = _byo(tmp_path, "ingest.events.columns.user_id=user")
    with pytest.raises(StageError, match=r"ratings.tsv: the mapping names columns \['user'\] that the file does not"):
        ingest_day(spark, cfg, D1)


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
    repeated = repeated_ids(validated, stored)
    classified = classify_events(validated, first_copies(validated, repeated))
    status = {r["_row"]: (r[STATUS], r["reason"]) for r in classified.collect()}
    assert status == {
        1: (DUPLICATE, None),
        2: (REJECTED, "late event: x"),
        3: (REJECTED, "wrong type: x"),
        4: (ACCEPTED, None),  # a rejected line with the same id does not make it a duplicate
        5: (DUPLICATE, None),
        0: (DUPLICATE, None),
        7: (ACCEPTED, None),  # the first in file order: file e before f
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
    survey = survey_events(validated).collect()
    stored = spark.createDataFrame(
        [
            (f"e{day}{hour}", at.format(day, hour))
            for day in ("01", "02", "03", "05")
            for hour in ("04", "05", "06", "23")
        ],
        "event_id string, ts string",
    ).withColumn("ts", F.to_timestamp("ts"))
    kept = {r["event_id"] for r in repeatable(stored, event_times(survey)).collect()}
    assert kept == {"e0123", "e0205", "e0206"}
    assert LineNumbers.of(survey).lines == 4
    assert repeatable(stored, []).count() == 0


def test_a_history_of_months_is_deduplicated_over_a_few_event_time_ranges():
    hour, day = 3_600_000_000, 86_400_000_000
    # One range per date for 120 dates, with a week missing after the 50th.
    dates = [*range(50), *range(57, 127)]
    ranges = [(d * day + 8 * hour, d * day + 20 * hour) for d in dates]
    merged = merge_closest(ranges, MAX_TIME_RANGES)
    assert len(merged) == MAX_TIME_RANGES
    assert merged == sorted(merged) and all(first <= last for first, last in merged)
    assert all(any(a <= first and last <= b for a, b in merged) for first, last in ranges)
    assert not any(a <= ranges[49][1] and ranges[50][0] <= b for a, b in merged)  # the widest gap stays out
    assert merge_closest(ranges[:3], MAX_TIME_RANGES) == ranges[:3]


def test_the_ingestion_view_summarises_each_day(spark, landed):
    cfg, _, counts = landed
    assert "ingestion_daily" in tables.register_views(spark, cfg)
    day = spark.sql("SELECT * FROM ingestion_daily WHERE ds = DATE'2026-11-01'").first()
    assert (day["impressions"], day["rejected"]) == (counts[D1].accepted, counts[D1].rejected)
    assert day["by_reason"] == reject_reasons(spark, cfg, D1)


def test_deduplication_reads_only_the_stored_files_within_the_days_event_times(spark, landed):
    cfg, _, _ = landed
    stored = tables.read(spark, IMPRESSIONS, cfg)
    second_day = tables.read(spark, IMPRESSIONS, cfg, ds=D2).select(
        F.unix_micros(F.min("ts")).alias("first"), F.unix_micros(F.max("ts")).alias("last")
    )
    kept = set(repeatable(stored, [tuple(second_day.first())]).inputFiles())
    assert kept == set(tables.read(spark, IMPRESSIONS, cfg, ds=D2).inputFiles())  # day 1's files are skipped


def test_line_numbers_stay_exact_when_a_file_is_split(spark, tmp_path, cfg):
    events = tmp_path / "events"
    events.mkdir()
    (events / "a.jsonl").write_text("".join(f'{{"event_id": "a{i}"}}\n' for i in range(1, 4001)))
    (events / "b.jsonl").write_text("".join(f'{{"event_id": "b{i}"}}\n' for i in range(1, 11)))
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16k")  # a.jsonl (~90 KB) spans several splits
    try:
        landed = read_source(spark, str(events), cfg.ingest.events, ["event_id"])
        extents = landed.rows.groupBy(FILE, SPLIT).agg(*split_extent()).collect()
        numbers = LineNumbers.of(extents)
        rows = numbers.apply(spark, landed.rows).collect()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    assert len(extents) > 3
    assert len(rows) == numbers.lines == 4010
    assert all(r["event_id"] == f"{r['source_file'][-7]}{r['line_number']}" for r in rows)


@pytest.mark.slow
def test_spark_reads_a_landing_on_an_object_store_as_from_a_folder(object_store, spark, make_cfg, tmp_path):
    """The compose deployment's path: the simulator writes through s3fs, `ingest_events` reads
    with Spark's S3A (the hadoop-aws package the compose profile names; about 750 MB of jars,
    resolved into .jars-s3a on first use), and the rows are those a landing folder gives."""
    compose = load_config(environ={"OSMF_CONFIG": str(PROJECT_ROOT / "conf/profiles/compose.yaml")}, base_file=None)
    s3a = {"endpoint": os.environ["AWS_ENDPOINT_URL_S3"], "endpoint.region": "us-east-1", "path.style.access": "true"}
    env = {
        **os.environ,
        "OSMF_SPARK__JARS_DIR": str(PROJECT_ROOT / ".jars-s3a"),
        "OSMF_SPARK__PACKAGES": json.dumps(compose.spark.packages),
        "OSMF_SPARK__CONF": json.dumps({f"spark.hadoop.fs.s3a.{key}": value for key, value in s3a.items()}),
    }
    subprocess.run([str(Path(sys.executable).parent / "osmf"), "spark", "resolve-jars"], env=env, check=True)
    ingested = {}
    for name, landing in (("object store", f"{object_store}/ingest-landing"), ("folder", tmp_path / "landing")):
        cfg = make_cfg(f"lakehouse.landing={landing}")
        write_landing(cfg, scale="tiny", start=D1, days=1)
        settings = [
            f"{key}={value}"
            for key, value in (
                ("lakehouse.root", cfg.lakehouse.root),
                ("lakehouse.landing", cfg.lakehouse.landing),
                ("mlflow.tracking_uri", cfg.mlflow.tracking_uri),
                ("mlflow.artifact_root", cfg.mlflow.artifact_root),
            )
        ]
        job = [sys.executable, str(PROJECT_ROOT / "jobs" / "ingest_events.py"), "--ds", D1.isoformat()]
        subprocess.run([*job, *[arg for setting in settings for arg in ("--set", setting)]], env=env, check=True)
        ingested[name] = cfg
    # Columns that name the landing (or the run) differ by design; every other value must not.
    located = ["image_uri", "source_file", "manifest_file", "run_id"]
    for table in (IMPRESSIONS, USERS, PRODUCTS, CREATIVES, LANDING_MANIFESTS):
        there, here = (tables.read(spark, table, cfg).drop(*located) for cfg in ingested.values())
        assert there.count() == here.count() > 0, table.name
        assert there.exceptAll(here).count() == 0 and here.exceptAll(there).count() == 0, table.name


def test_events_are_checked_against_a_dimension_too_big_to_broadcast_without_broadcasting_it(spark, tmp_path, cfg):
    """A users table of any size: Spark may broadcast a dimension it finds small, but nothing
    forces a whole dimension into the driver's memory."""
    events = tmp_path / "events.jsonl"
    line = {"event_id": "e1", "ts": "2026-11-01T10:00:00Z", "user_id": "u1", "product_id": "p1"}
    events.write_text(json.dumps({**line, "creative_id": "c1", "position": 1, "clicked": 1}) + "\n")
    landed = read_source(spark, str(events), cfg.ingest.events, EVENT_FIELDS)
    users = spark.createDataFrame([Row(user_id="u1"), Row(user_id="u2")])
    products = spark.createDataFrame([Row(product_id="p1")])
    creatives = spark.createDataFrame([Row(creative_id="c1", product_id="p1")])
    previous = spark.conf.get("spark.sql.autoBroadcastJoinThreshold")
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")  # every dimension counts as big
    try:
        validated = validate_events(landed.rows, users, products, creatives, D1, cfg.ingest)
        plan = validated._jdf.queryExecution().executedPlan().toString()
        reasons = [r[REASON] for r in validated.collect()]
    finally:
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", previous)
    assert reasons == [None]
    assert "Broadcast" not in plan
