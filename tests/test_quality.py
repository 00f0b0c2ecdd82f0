"""Data-quality gates: what a check says, the comparison with the previous night, and a gate that
records every check and fails naming those out of bounds."""

import datetime as dt

import mlflow
import pytest
from pyspark.sql import functions as F

from osmf_lib import quality, tables, tracking
from osmf_lib.job import JobContext, StageError
from osmf_lib.quality import Check
from osmf_lib.tables import EVAL_METRICS

D0, D1, D2, D3 = (dt.date(2026, 11, day) for day in (1, 2, 3, 4))


def test_a_check_says_its_number_its_bounds_and_the_setting_that_holds_them() -> None:
    refused = Check("rejected_share", 0.01, high=0.05, setting="quality.max_rejected_share", measured="1 of 100 lines")
    assert refused.passed
    assert str(refused) == "rejected_share 0.01 <= quality.max_rejected_share 0.05 ok (1 of 100 lines)"
    jump = Check("groups_vs_previous", 5.0, 0.25, 4.0, "quality.change_band")
    assert not jump.passed and str(jump) == "groups_vs_previous 5 outside quality.change_band [0.25, 4] FAILED"
    small = Check("smallest_group", 12, low=30, setting="grouping.min_group_size")
    assert not small.passed and str(small) == "smallest_group 12 < grouping.min_group_size 30 FAILED"
    assert Check("pairs_per_group", 3.0).passed and str(Check("pairs_per_group", 3.0)) == "pairs_per_group 3 (recorded)"


@pytest.mark.parametrize(
    ("counts", "ratio"),
    [
        ({D2: 300}, None),  # the table's first night: nothing to compare with
        ({D1: 50, D2: 300}, None),  # a previous night below quality.min_baseline is no baseline
        ({D1: 200, D2: 300}, 1.5),
        ({D0: 1000, D1: 200, D2: 300, D3: 9000}, 1.5),  # the latest earlier night; later ones do not count
        ({D1: 200, D2: 1000}, 5.0),
        ({D1: 200}, 0.0),  # nothing tonight
    ],
)
def test_a_night_is_compared_with_the_latest_earlier_one(spark, cfg, counts, ratio) -> None:
    rows = spark.createDataFrame([(night,) for night, n in counts.items() for _ in range(n)], "ds DATE")
    checks = quality.versus_previous(cfg, "pairs", rows, D2, "pairs")
    if ratio is None:
        assert checks == []
        return
    (check,) = checks
    assert (check.name, check.value) == ("pairs_vs_previous", pytest.approx(ratio))
    assert check.passed == (0.25 <= ratio <= 4.0)
    assert check.measured == f"{counts.get(D2, 0):,} pairs vs {counts[D1]:,} on {D1}"


def test_the_compared_value_can_be_any_aggregate(spark, cfg) -> None:
    # Two event days landed under D1 (a history), one under D2: compared per event day, they match.
    rows = [(D1, dt.datetime(2026, 11, day, 9)) for day in (1, 2) for _ in range(150)]
    rows += [(D2, dt.datetime(2026, 11, 3, 9)) for _ in range(150)]
    stored = spark.createDataFrame(rows, "ds DATE, ts TIMESTAMP")
    daily = F.count("*") / F.countDistinct(F.to_date("ts"))
    (check,) = quality.versus_previous(cfg, "impressions_per_day", stored, D2, "impressions a day", daily)
    assert check.value == pytest.approx(1.0)


def _recorded(spark, cfg, stage):
    rows = tables.read(spark, EVAL_METRICS, cfg, ds=D2).where((F.col("stage") == "quality") & (F.col("slice") == stage))
    return {(row["metric"], row["value"]) for row in rows.collect()}


def test_a_gate_records_every_check_and_fails_naming_those_out_of_bounds(spark, cfg) -> None:
    tracking.configure(cfg)
    ctx = JobContext("build_preference_pairs", cfg, D2, "test")
    orphans = Check("pairs_of_unknown_groups", 2, high=0, measured="pairs whose group is not in group_profiles")
    with mlflow.start_run(), pytest.raises(StageError) as failure:
        quality.gate(ctx, [Check("pairs_per_group", 3.0), orphans])
    said = str(failure.value)
    assert said.startswith("quality gate failed, so nothing downstream runs: pairs_of_unknown_groups 2 > 0 FAILED")
    assert _recorded(spark, cfg, ctx.stage) == {
        ("pairs_per_group", 3.0),
        ("pairs_of_unknown_groups", 2.0),
        ("failed_checks", 1.0),
    }
    # The rerun after the fix replaces the night's checks of that stage, and only those.
    with mlflow.start_run():
        quality.gate(JobContext("group_users", cfg, D2, "test"), [Check("grouped_share", 0.9)])
        quality.gate(ctx, [Check("pairs_per_group", 4.0)])
    assert _recorded(spark, cfg, ctx.stage) == {("pairs_per_group", 4.0), ("failed_checks", 0.0)}
    assert _recorded(spark, cfg, "group_users") == {("grouped_share", 0.9), ("failed_checks", 0.0)}
