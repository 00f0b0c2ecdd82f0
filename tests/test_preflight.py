import mlflow
import pytest
from mlflow import MlflowClient

from osmf_lib import preflight
from osmf_lib.job import StageError, main
from osmf_lib.spark import SparkSetupError


def _job_args(cfg, *extra):
    return [
        "--ds",
        "2026-11-01",
        "--set",
        f"lakehouse.root={cfg.lakehouse.root}",
        "--set",
        f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}",
        "--set",
        f"mlflow.artifact_root={cfg.mlflow.artifact_root}",
        *extra,
    ]


def test_checks_pass_on_a_working_setup(spark, cfg):
    names = [check.name for check in preflight.run_checks(spark, cfg)]
    assert names == ["lakehouse root", "jars", "spark + delta", "mlflow"]


def test_jars_for_another_config_are_named_with_the_fix(make_cfg):
    cfg = make_cfg("spark.packages=[org.apache.hadoop:hadoop-aws:3.5.0]")
    with pytest.raises(SparkSetupError, match="run `osmf spark resolve-jars`"):
        preflight.check_jars(cfg)


def test_unwritable_root_is_named(spark, make_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = make_cfg(root=blocker / "lakehouse")
    with pytest.raises(StageError, match=f"lakehouse root {blocker}/lakehouse is not writable"):
        preflight.check_lakehouse_root(cfg)


def test_the_job_logs_a_stage_run(spark, cfg, capsys):
    main("preflight", preflight.preflight, _job_args(cfg, "--dag-run-id", "manual__preflight-test"))
    assert "preflight ok  spark + delta" in capsys.readouterr().out
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    (run,) = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`osmf.stage` = 'preflight' AND tags.`osmf.dag_run_id` = 'manual__preflight-test'",
    )
    assert run.info.status == "FINISHED"
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/preflight.json")
    assert set(logged) == {"lakehouse root", "jars", "spark + delta", "mlflow"}


def test_a_failing_job_exits_1_with_one_line(spark, make_cfg, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = make_cfg(root=blocker / "lakehouse")
    with pytest.raises(SystemExit) as exit_:
        main("preflight", preflight.preflight, _job_args(cfg))
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("osmf preflight failed for ds=2026-11-01: lakehouse root")


def test_bad_config_fails_the_job_naming_the_key(cfg, capsys):
    with pytest.raises(SystemExit) as exit_:
        main("preflight", preflight.preflight, _job_args(cfg, "--set", "grouping.k_max=many"))
    assert exit_.value.code == 1
    assert "config key 'grouping.k_max'" in capsys.readouterr().err


def test_bad_ds_is_a_usage_error(cfg):
    with pytest.raises(SystemExit) as exit_:
        main("preflight", preflight.preflight, ["--ds", "yesterday"])
    assert exit_.value.code == 2
