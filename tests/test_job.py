"""What a stage returns and how a job records it: the log line, the MLflow tags, stdout."""

import json
import logging

import mlflow
import pytest

from osmf_lib.job import SUMMARY_METRICS, StageResult, configure_logging, record


def test_a_result_says_what_was_written_registered_or_why_it_skipped():
    done = StageResult(written={"impressions": 1200}, model="osmf-grm/3", metrics={"val_pair_accuracy": 0.71234})
    assert done.summary() == "wrote impressions (1,200 rows); registered osmf-grm/3; val_pair_accuracy 0.7123"
    assert StageResult(model="osmf-grm/3", reused=True).summary() == "reused osmf-grm/3"
    assert StageResult(written={"x": 1}, skipped="no pairs").summary() == "skipped: no pairs"
    many = StageResult(metrics={f"m{i}": float(i) for i in range(SUMMARY_METRICS + 3)})
    assert many.summary().endswith("; 3 more metrics in the run's osmf.result tag")


@pytest.fixture
def experiment(tmp_path):
    """An experiment of a store of its own; the process's tracking URI is put back after."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    # By id: an earlier test in this process may have made another store's experiment the active one.
    yield mlflow.MlflowClient().create_experiment("stage-results")
    mlflow.set_tracking_uri(before)


def test_a_recorded_result_is_a_tag_on_the_stage_run(experiment, caplog):
    caplog.set_level(logging.INFO, logger="osmf_lib")
    result = StageResult(written={"user_groups": 40}, skipped=None, metrics={"groups": 4.0})
    with mlflow.start_run(experiment_id=experiment) as run:
        record("group_users", result)
        record("group_users", None)  # a stage that returns nothing records nothing
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert StageResult(**json.loads(tags["osmf.result"])) == result
    assert "osmf.skipped" not in tags
    assert "group_users: wrote user_groups (40 rows); groups 4" in caplog.text
    with mlflow.start_run(experiment_id=experiment) as run:
        record("train_grm", StageResult(skipped="no training pairs"))
    assert mlflow.get_run(run.info.run_id).data.tags["osmf.skipped"] == "no training pairs"


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_library_prints_its_lines_on_whatever_stdout_is_now(capsys, jobs):
    """Jobs run one after another in a process (tests, the CLI): each sees its own lines."""
    for _ in range(jobs):
        configure_logging()
    logging.getLogger("osmf_lib.ingest.stages").info("ingest events 2026-11-01: read 3 = accepted 3")
    assert capsys.readouterr().out == "ingest events 2026-11-01: read 3 = accepted 3\n"
    assert sum(type(h).__name__ == "_Stdout" for h in logging.getLogger("osmf_lib").handlers) == 1
