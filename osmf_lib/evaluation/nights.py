"""Night over night: does the closed loop learn? One row per published night, from what each night
recorded (`osmf nights`, `make demo NIGHTS=N`, and the report's curve; docs/design.md#night-over-night).

| column | from |
|---|---|
| served, members, newcomers | publish_oracle: oracle CTR of what osmf-serving drew for next day's held-out traffic |
| best original, best logged | publish_oracle: the groups' best creative of the ad server's own, and of any origin |
| ceiling | publish_oracle: the oracle's best prompt per group |
| headroom | publish_oracle: (served - best original) / (ceiling - best original), all traffic: what OSMF adds |
| best-only | publish_oracle: the same had every impression taken its group's best (no exploring) |
| candidates | publish_oracle: the same had each group taken its best candidate by the oracle (perfect picking) |
| over best logged | publish_oracle: (served - best logged) / (ceiling - best logged): what the night adds |
| generated | serving_coverage of the next day: share of all its impressions shown a generated creative |
| explored | publish: share of the groups' traffic on candidates other than their best |
| A/B served, control | closed_loop_ab of the next day: observed CTR of the two arms |
| generated pairs | build_preference_pairs: the night's pairs with a generated creative on either side |
| paag, grm, gmllm, serving | the registry version each model had for the night, `*` where the night promoted it |
| variant | the Group-DPO variant osmf-gmllm registered for the night, by its validation reward |
| onesize_dpo, prefix_dpo, group_dpo | gmllm_oracle: oracle CTR of each variant's greedy descriptions (test products) |

The oracle columns exist only on a simulated world; on real logs they stay empty.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from osmf_lib import promotion, tables, tracking
from osmf_lib.config import Config
from osmf_lib.evaluation.gmllm import STAGE as GMLLM_ORACLE_STAGE
from osmf_lib.evaluation.publish import STAGE as ORACLE_STAGE
from osmf_lib.gmllm.registry import TAG_VARIANT
from osmf_lib.night import GMLLM, GRM, PAAG, SERVING
from osmf_lib.serving.coverage import STAGE as COVERAGE_STAGE
from osmf_lib.tables import DS, EVAL_METRICS, GENERATED

ORACLE = {
    "served": "served",
    "members": "served.members",
    "newcomers": "served.newcomers",
    "best original": "best_original",
    "best logged": "best_logged",
    "ceiling": "ceiling",
}
MODELS = {"paag": PAAG, "grm": GRM, "gmllm": GMLLM, "serving": SERVING}
# Does the variant the validation picks also win on the oracle, and does the contrast term start
# to pay as the loop's data grows?
DPO_VARIANTS = ("onesize_dpo", "prefix_dpo", "group_dpo")
# The stages whose eval_metrics rows the table reads.
PUBLISH_STAGE, PAIRS_STAGE = "publish", "build_preference_pairs"
ONE_DAY = timedelta(days=1)


def _metrics(spark: SparkSession, cfg: Config) -> pd.Series:
    """eval_metrics as one value per (ds, stage, metric, slice)."""
    rows = tables.read(spark, EVAL_METRICS, cfg).select(DS, "stage", "metric", "slice", "value").toPandas()
    return rows.set_index([DS, "stage", "metric", "slice"])["value"]


def _generated_pairs(values: pd.Series) -> pd.Series:
    """Per night, its pairs with a generated creative on either side."""
    pairs = values[(values.index.get_level_values("stage") == PAIRS_STAGE)].droplevel(["stage", "metric"])
    generated = pairs[pairs.index.get_level_values("slice").str.contains(GENERATED)]
    return generated.groupby(level=DS).sum()


def _closed_loop(spark: SparkSession, cfg: Config) -> pd.DataFrame:
    """Observed CTR per served day (rows) and arm (columns) over all of the day's placed traffic."""
    tables.register_views(spark, cfg)
    if not spark.catalog.tableExists("closed_loop_ab"):  # registered once its tables exist
        return pd.DataFrame(columns=["served", "control"], dtype=float)
    ab = spark.sql("SELECT ds, arm, ctr FROM closed_loop_ab WHERE audience = 'all'").toPandas()
    return ab.pivot(index="ds", columns="arm", values="ctr").reindex(columns=["served", "control"])


def _versions(ds: date) -> dict[str, str]:
    """Each model's version for night ds, starred where night ds promoted it; the served variant."""
    out, tonight = {}, {}
    for column, model in MODELS.items():
        version, before = promotion.version_for_ds(model.name, ds), promotion.version_for_ds(model.name, ds - ONE_DAY)
        tonight[model.name] = version
        out[column] = "" if version is None else f"{version}{'*' if version != before else ''}"
    gmllm = tonight[GMLLM.name]
    out["variant"] = MlflowClient().get_model_version(GMLLM.name, gmllm).tags.get(TAG_VARIANT, "") if gmllm else ""
    return out


def night_table(spark: SparkSession, cfg: Config) -> pd.DataFrame:
    """One row per night that published serving_creatives, oldest first; see the module docstring."""
    tracking.configure(cfg)
    values = _metrics(spark, cfg)
    generated_pairs = _generated_pairs(values)
    ab = _closed_loop(spark, cfg)
    nan = float("nan")

    def value(ds: date, stage: str, metric: str, slice_: str) -> float:
        return float(values.get((ds, stage, metric, slice_), nan))

    rows = []
    for ds in sorted({ds for ds, stage, *_ in values.index if stage == PUBLISH_STAGE}):
        served = ds + ONE_DAY
        arms = ab.loc[served] if served in ab.index else pd.Series({"served": nan, "control": nan})
        row = {"night": ds.isoformat()}
        row |= {name: value(ds, ORACLE_STAGE, "oracle_ctr", key) for name, key in ORACLE.items()}
        row |= {
            "headroom": value(ds, ORACLE_STAGE, "headroom_over_original", "served"),
            "best-only": value(ds, ORACLE_STAGE, "headroom_over_original", "selected"),
            "candidates": value(ds, ORACLE_STAGE, "headroom_over_original", "best_candidate"),
            "over best logged": value(ds, ORACLE_STAGE, "headroom_captured", "served"),
            "generated": value(served, COVERAGE_STAGE, "generated_share", "all"),
            "explored": value(ds, PUBLISH_STAGE, "explore_share", "all"),
            "A/B served": float(arms["served"]),
            "A/B control": float(arms["control"]),
            "generated pairs": float(generated_pairs.get(ds, nan)),
        }
        row |= {name: value(ds, GMLLM_ORACLE_STAGE, "oracle_ctr", name) for name in DPO_VARIANTS}
        rows.append(row | _versions(ds))
    return pd.DataFrame(rows)
