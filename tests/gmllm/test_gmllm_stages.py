"""pretrain_gmllm and train_group_dpo as the DAG runs them, on a small lakehouse whose groups want
opposite backgrounds, judged by the night's osmf-grm."""

from __future__ import annotations

import datetime as dt
import logging

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from osmf_lib import promotion, tables
from osmf_lib.config import Config
from osmf_lib.gmllm import GmllmError, load_gmllm, stages
from osmf_lib.grm import stages as grm_stages
from osmf_lib.inputs import night_grm
from osmf_lib.job import StageResult
from osmf_lib.tables import EVAL_METRICS

DS = dt.date(2026, 11, 3)  # the night of make_group_lakehouse
SETTINGS = (
    # A weekly base, so that a later night of the test can reuse the one pre-trained on DS.
    "gmllm.fresh_days=7",
    "gmllm.epochs=20",
    "gmllm.batch_size=16",
    "gmllm.max_new_tokens=16",
    "group_dpo.rounds=1",
    "group_dpo.samples_per_group=3",
    "group_dpo.min_margin=0.0",
    "group_dpo.batch_size=16",
)


@pytest.fixture(scope="module")
def lakehouse(make_group_lakehouse, run_stage):
    cfg = make_group_lakehouse("gmllm", *SETTINGS)
    run_stage(grm_stages.train_grm, cfg)
    return cfg


@pytest.fixture(scope="module")
def pretrained(lakehouse, run_stage) -> StageResult:
    return run_stage(stages.pretrain_gmllm, lakehouse)


@pytest.fixture(scope="module")
def aligned(lakehouse, pretrained, run_stage) -> StageResult:
    return run_stage(stages.train_group_dpo, lakehouse)


def test_pretraining_registers_the_base_and_a_fresh_one_is_not_redone(lakehouse, pretrained, run_stage):
    assert pretrained.model == "osmf-gmllm-base/1" and not pretrained.reused
    client = MlflowClient()
    (base,) = client.search_model_versions("name = 'osmf-gmllm-base'")
    assert base.tags[promotion.TAG_CHAMPION_FROM] == DS.isoformat()
    examples = client.get_run(base.run_id).data.params
    assert int(examples["gmllm.examples.write_background"]) > 0
    assert pretrained.metrics["examples"] == sum(int(v) for k, v in examples.items() if k.startswith("gmllm.examples."))
    again = run_stage(stages.pretrain_gmllm, lakehouse, DS + dt.timedelta(days=3))
    assert again.skipped == "osmf-gmllm-base v1 is younger than gmllm.fresh_days=7"
    assert len(client.search_model_versions("name = 'osmf-gmllm-base'")) == 1


def test_a_rerun_crowns_a_base_a_stopped_run_left_uncrowned(lakehouse, pretrained, run_stage):
    client = MlflowClient()
    client.delete_model_version_tag("osmf-gmllm-base", "1", promotion.TAG_CHAMPION_FROM)
    assert promotion.version_for_ds("osmf-gmllm-base", DS) is None
    again = run_stage(stages.pretrain_gmllm, lakehouse)
    assert again.reused and promotion.version_for_ds("osmf-gmllm-base", DS) == "1"


def test_by_default_every_night_pre_trains_its_own_base(lakehouse, pretrained):
    nightly = lakehouse.model_copy(
        update={"gmllm": lakehouse.gmllm.model_copy(update={"fresh_days": Config().gmllm.fresh_days})}
    )
    assert stages.fresh_base(nightly, DS) == "1"  # a rerun of the night keeps it
    assert stages.fresh_base(nightly, DS + dt.timedelta(days=1)) is None


def test_a_fresh_base_made_with_other_settings_is_no_base_for_this_config(lakehouse, pretrained, caplog):
    caplog.set_level(logging.INFO, logger="osmf_lib")
    later = DS + dt.timedelta(days=3)
    assert stages.fresh_base(lakehouse, later) == "1"
    switched = lakehouse.model_copy(update={"models": lakehouse.models.model_copy(update={"profile": "small"})})
    assert stages.fresh_base(switched, later) is None
    # Why the base is not reused is the operator's to read: the log names each setting that moved.
    assert "profile: tiny -> small" in caplog.text
    wider = lakehouse.model_copy(update={"gmllm": lakehouse.gmllm.model_copy(update={"group_prefix_tokens": 2})})
    assert stages.fresh_base(wider, later) is None and "group_prefix_tokens: 4 -> 2" in caplog.text


def test_group_dpo_registers_a_champion_with_its_lineage_and_both_baselines(spark, lakehouse, aligned):
    client = MlflowClient()
    (version,) = client.search_model_versions("name = 'osmf-gmllm'")
    assert version.tags[stages.TAG_BASE] == "1" and version.tags[stages.TAG_GRM] == "1"
    assert aligned.model == "osmf-gmllm/1" and aligned.metrics["promoted"] == 1.0
    rounds = client.get_metric_history(version.run_id, "group_dpo.round.samples")
    assert [m.step for m in rounds] == list(range(1, lakehouse.group_dpo.rounds + 1))
    rewards = tables.read(spark, EVAL_METRICS, lakehouse, ds=DS).where("stage = 'group_dpo'").toPandas()
    assert set(rewards["slice"]) == set(stages.VARIANTS)
    by_variant = rewards.set_index("slice")["value"]
    served = version.tags[stages.TAG_VARIANT]
    assert served == stages.served_variant(by_variant.to_dict())
    assert aligned.metrics[stages.METRIC] == pytest.approx(by_variant[served])
    assert not load_gmllm(f"runs:/{version.run_id}/osmf-gmllm-onesize").group_aware
    group_dpo = load_gmllm(f"models:/osmf-gmllm/{version.version}")
    written = group_dpo.write(pd.DataFrame({"product_id": ["p00", "p00"], "group_id": [0, 1]}))
    assert written["usable"].all()


def test_the_served_variant_is_the_group_aware_one_the_validation_prefers():
    assert stages.served_variant({"group_dpo": 0.4, "prefix_dpo": 0.5, "onesize_dpo": 0.9}) == "prefix_dpo"
    assert stages.served_variant({"group_dpo": 0.5, "prefix_dpo": 0.5}) == "group_dpo"
    assert stages.served_variant({"group_dpo": 0.6, "prefix_dpo": 0.5}) == "group_dpo"
    assert stages.served_variant({}) == "group_dpo"  # no GRM to judge


def test_a_rerun_of_the_night_keeps_its_versions(lakehouse, aligned, run_stage):
    again = run_stage(stages.train_group_dpo, lakehouse)
    assert again.reused and again.model == "osmf-gmllm/1"
    assert len(MlflowClient().search_model_versions("name = 'osmf-gmllm'")) == 1
    pretrained = run_stage(stages.pretrain_gmllm, lakehouse)
    assert pretrained.skipped.startswith("osmf-gmllm-base v1 is younger")


def test_the_pyfunc_writes_for_product_and_group(lakehouse, aligned):
    model = mlflow.pyfunc.load_model("models:/osmf-gmllm@champion")
    out = model.predict(pd.DataFrame({"product_id": ["p01"], "group_id": [1]}))
    assert list(out.columns) == ["prompt", "usable"] and len(out) == 1


def test_a_missing_or_unloadable_reference_fails_naming_it(lakehouse, aligned):
    with pytest.raises(GmllmError, match="no pre-trained osmf-gmllm-base for ds=2026-11-02: run pretrain_gmllm"):
        stages.night_base(lakehouse, DS - dt.timedelta(days=1))
    with pytest.raises(GmllmError, match="cannot load models:/osmf-gmllm-base/9: "):
        load_gmllm("models:/osmf-gmllm-base/9")


def test_without_a_grm_for_the_night_only_logged_pairs_train(lakehouse, aligned):
    assert night_grm(lakehouse, DS - dt.timedelta(days=1)) is None


def test_logged_pairs_contrast_with_the_group_holding_the_opposite_pair():
    pairs = pd.DataFrame(
        {
            "product_id": ["p", "p", "p"],
            "group_id": [0, 1, 2],
            "chosen_prompt": ["a", "b", "a"],
            "rejected_prompt": ["b", "a", "c"],
            "split": "train",
        }
    )
    out = stages.logged_pairs(pairs, Config()).set_index("group_id")["contrast_group"]
    assert out.to_dict() == {0: 1, 1: 0, 2: stages.NO_CONTRAST}
