"""The one promotion rule: like-for-like scores, no promotion by NaN or tie, a champion per night."""

import datetime as dt
import math

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from osmf_lib import promotion, tables, tracking
from osmf_lib.tables import EVAL_METRICS

D1, D2, D3, D4 = (dt.date(2026, 11, day) for day in (1, 2, 3, 4))


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        return model_input["x"]


@pytest.mark.parametrize(
    ("challenger", "champion", "has_champion", "promoted", "why"),
    [
        (0.70, None, False, True, "first version"),
        (math.nan, None, False, False, "no usable score"),
        (None, 0.6, True, False, "no usable score"),
        (0.71, math.nan, True, False, "champion could not be scored"),
        (0.70, 0.70, True, False, "not better"),  # a tie keeps the champion
        (0.705, 0.70, True, False, "not better by more than 0.01"),
        (0.75, 0.70, True, True, "better by 0.0500"),
    ],
)
def test_the_rule(challenger, champion, has_champion, promoted, why):
    decided, reason = promotion.decide(challenger, champion, has_champion=has_champion, min_improvement=0.01)
    assert decided is promoted and why in reason


def test_lower_is_better_metrics_flip_the_comparison():
    assert promotion.decide(0.2, 0.3, has_champion=True, higher_is_better=False)[0]
    assert not promotion.decide(0.3, 0.2, has_champion=True, higher_is_better=False)[0]


@pytest.fixture
def registry(make_cfg, tmp_path):
    cfg = make_cfg(f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"mlflow.artifact_root={tmp_path}/art")
    tracking.configure(cfg)
    return cfg


def _version(name: str) -> str:
    info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), input_example=pd.DataFrame({"x": [1.0]}))
    return tracking.register(info.model_uri, name)


def test_each_night_keeps_its_champion_and_a_backfill_never_moves_the_alias(spark, registry):
    name = "osmf-test"

    def night(ds, challenger_score, champion_score):
        with mlflow.start_run():
            version = _version(name)
            champion = promotion.version_for_ds(name, ds)
            promoted, reason = promotion.decide(challenger_score, champion_score, has_champion=champion is not None)
            decision = promotion.Decision(
                name, "auc", version, challenger_score, champion, champion_score, promoted, reason
            )
            promotion.record(spark, registry, ds, decision)
            return version, decision

    v1, first = night(D1, 0.6, None)
    v2, second = night(D3, 0.7, 0.6)
    assert first.promoted and second.promoted and second.champion == v1
    # D2 runs late (a backfill): it is judged against D1's champion, not D3's, and wins there.
    v3, backfill = night(D2, 0.65, 0.6)
    assert backfill.champion == v1 and backfill.promoted
    assert [promotion.version_for_ds(name, ds) for ds in (D1, D2, D3)] == [v1, v3, v2]
    assert promotion.version_for_ds(name, D1 - dt.timedelta(days=1)) is None
    assert tracking.alias_version(name) == v2  # consumers keep the newest night's champion

    v4, lost = night(D3, math.nan, 0.7)
    assert not lost.promoted and promotion.version_for_ds(name, D3) == v2
    tags = MlflowClient().get_model_version(name, v4).tags
    assert "kept the champion" in tags[promotion.TAG_DECISION] and promotion.TAG_CHAMPION_FROM not in tags
    # The night after a loss promotes again: the version that lost champions no night, date.max included.
    v5, won = night(D4, 0.8, 0.7)
    assert won.promoted and won.champion == v2 and promotion.version_for_ds(name, dt.date.max) == v5
    assert tracking.alias_version(name) == v5

    stored = tables.read(spark, EVAL_METRICS, registry, ds=D2).where("stage = 'promotion'").toPandas()
    assert dict(zip(stored["metric"], stored["value"], strict=True)) == {
        "auc.challenger": 0.65,
        "auc.champion": 0.6,
        "challenger_version": float(v3),
        "champion_version": float(v1),
        "promoted": 1.0,
    }
    assert set(stored["slice"]) == {name}


def test_a_rerun_puts_back_the_alias_a_stopped_run_left_behind(registry):
    name = "osmf-test"
    with mlflow.start_run():
        first, second = _version(name), _version(name)
        promotion.crown(name, first, D1)
        # Stopped after tagging the second version champion, before the alias moved.
        MlflowClient().set_model_version_tag(name, second, promotion.TAG_CHAMPION_FROM, D2.isoformat())
        assert tracking.alias_version(name) == first
        promotion.reused("train_test", MlflowClient().get_model_version(name, second), D2)
    assert tracking.alias_version(name) == second
