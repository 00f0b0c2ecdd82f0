"""The night's osmf-serving, built from the lakehouse and registered by evaluate_and_publish.

    night_of(spark, cfg, ds, served)  the night's groups, served creatives, fallbacks and members
                                      with the PAAG version that built the groups -> ServingNight
    register_night(ctx, night, ...)   osmf-serving version for the night, pinned as every model is

Pinning follows osmf_lib.promotion: the version is tagged with its night, is the champion from that
night on (a backfill of an old night never moves the alias back), and a rerun of the night on the
same rows and settings reuses its version instead of registering a new one. There is no
challenger: a night's groups are only served by that night's model.
"""

from __future__ import annotations

from datetime import date

import mlflow
import pandas as pd
from mlflow import MlflowClient
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from osmf_lib import promotion, tables, tracking
from osmf_lib.config import Config
from osmf_lib.inputs import LINEAGE, PRODUCT_FEATURES
from osmf_lib.job import JobContext, StageError
from osmf_lib.serving.model import (
    CREATIVE_COLUMNS,
    FALLBACK_COLUMNS,
    FORMAT,
    GROUP_COLUMNS,
    MEMBER_COLUMNS,
    ServingNight,
)
from osmf_lib.serving.registry import MODEL_NAME, REQUEST_COLUMNS, log_serving
from osmf_lib.spark import to_pandas
from osmf_lib.tables import (
    CREATIVES,
    GROUP_CREATIVE_CTR,
    GROUP_PROFILES,
    GROUPS_DS,
    PRODUCTS,
    SERVING_CREATIVES,
    USER_ATTRIBUTES,
    USER_GROUPS,
    USERS,
    Metric,
)

KEY = list(GROUP_PROFILES.keys)
EXAMPLE_ROWS = 3


def product_fallback(ctr: DataFrame, creatives: DataFrame, products: DataFrame) -> DataFrame:
    """Per catalog product with a creative: the one with the highest smoothed CTR over all its
    groups' impressions of the night (the product's prior, as group_creative_ctr fitted it), or
    its lowest creative id without impressions. Columns: FALLBACK_COLUMNS."""
    pooled = ctr.groupBy("product_id", "creative_id").agg(
        F.sum("impressions").alias("n"),
        F.sum("clicks").alias("k"),
        # The prior is the product's: every row of the product holds the same one.
        F.max("prior_alpha").alias("alpha"),
        F.max("prior_beta").alias("beta"),
    )
    score = (F.col("alpha") + F.col("k")) / (F.col("alpha") + F.col("beta") + F.col("n"))
    order = Window.partitionBy("product_id").orderBy(score.desc_nulls_last(), F.col("creative_id"))
    return (
        creatives.join(products.select("product_id"), "product_id")
        .join(pooled, ["product_id", "creative_id"], "left")
        .withColumn("_rank", F.row_number().over(order))
        .where("_rank = 1")
        .select(*FALLBACK_COLUMNS)
    )


def _paag_version(profiles: DataFrame, ds: date) -> str | None:
    versions = sorted(row[LINEAGE] for row in profiles.select(LINEAGE).distinct().collect())
    if len(versions) > 1:
        raise StageError(f"group_profiles of ds={ds} were built by several PAAG versions {versions}: rerun group_users")
    return versions[0] if versions else None


def night_of(spark: SparkSession, cfg: Config, ds: date, served: DataFrame) -> ServingNight:
    """The night's ServingNight from its tables; `served` is the night's serving_creatives."""
    from osmf_lib.paag import load_paag

    profiles = tables.read(spark, GROUP_PROFILES, cfg, ds=ds)
    paag_version = _paag_version(profiles, ds)
    groups = profiles.select(*KEY, "centroid").join(
        served.select(*KEY, *CREATIVE_COLUMNS, "traffic_share"), KEY, "left"
    )
    ctr = tables.read(spark, GROUP_CREATIVE_CTR, cfg, ds=ds).where(F.col(GROUPS_DS) == F.lit(ds))
    catalog = tables.read(spark, PRODUCTS, cfg, as_of=ds)
    fallback = product_fallback(ctr, tables.read(spark, CREATIVES, cfg, as_of=ds), catalog)
    members = tables.read(spark, USER_GROUPS, cfg, ds=ds).select(*MEMBER_COLUMNS)
    paag = None
    if paag_version is not None:
        name, _, number = paag_version.partition("/")
        paag = load_paag(f"models:/{name}/{number}", unreadable_image=cfg.models.unreadable_image)
        # Every grouped product's features go into the model, so serving never reads an image or
        # loads a text encoder.
        grouped = catalog.join(profiles.select("product_id").distinct(), "product_id").select(*PRODUCT_FEATURES)
        paag.featurizer.store.ensure(grouped.toPandas())
    frames = (frame.toPandas() for frame in (groups.select(*GROUP_COLUMNS), fallback, members))
    return ServingNight(paag, *frames, paag_version=paag_version, groups_ds=ds)


def _attributes(spark: SparkSession, cfg: Config, ds: date, user_ids: pd.Series) -> pd.DataFrame:
    """user_id and the attributes of these users as the night knew them."""
    wanted = spark.createDataFrame(pd.DataFrame({"user_id": user_ids.unique()}))
    return to_pandas(
        tables.read(spark, USERS, cfg, as_of=ds).join(wanted, "user_id").select("user_id", *USER_ATTRIBUTES)
    )


def _example(spark: SparkSession, cfg: Config, ds: date, night: ServingNight) -> pd.DataFrame:
    """A member, the same user as a stranger with no id, and a product nobody knows."""
    users = tables.read(spark, USERS, cfg, as_of=ds)
    members = night.members.head(EXAMPLE_ROWS - 2)
    known = to_pandas(
        users.where(F.col("user_id").isin(members["user_id"].tolist())).select("user_id", *USER_ATTRIBUTES)
    )
    rows = members[["product_id", "user_id"]].merge(known, on="user_id", how="left")
    stranger = rows.assign(user_id=None)
    unknown = pd.DataFrame({"product_id": ["an-unknown-product"]})
    return pd.concat([rows, stranger, unknown], ignore_index=True).reindex(columns=list(REQUEST_COLUMNS))


def _training_tags(spark: SparkSession, cfg: Config, ds: date, served: DataFrame) -> dict[str, str]:
    data = {
        "serving_creatives": promotion.fingerprint(served, SERVING_CREATIVES.column_names),
        "group_profiles": promotion.fingerprint(
            tables.read(spark, GROUP_PROFILES, cfg, ds=ds), [*KEY, "centroid", LINEAGE]
        ),
        "user_groups": promotion.fingerprint(tables.read(spark, USER_GROUPS, cfg, ds=ds), [*MEMBER_COLUMNS, LINEAGE]),
        "creatives": promotion.fingerprint(tables.read(spark, CREATIVES, cfg, as_of=ds), CREATIVES.column_names),
        "products": promotion.fingerprint(tables.read(spark, PRODUCTS, cfg, as_of=ds), PRODUCTS.column_names),
    }
    return promotion.training_tags(ds, data, {"format": FORMAT})


def register_night(ctx: JobContext, served: DataFrame) -> tuple[str, ServingNight]:
    """Build, log and register the night's osmf-serving (or reuse the version a run of this night
    registered from the same rows), and make it the champion from ds on -> (version, model)."""
    spark, cfg, ds = ctx.spark, ctx.cfg, ctx.ds
    tags = _training_tags(spark, cfg, ds, served)
    night = night_of(spark, cfg, ds, served)
    reused = promotion.reusable_version(MODEL_NAME, tags)
    if reused is None:
        uri = log_serving(night, _example(spark, cfg, ds, night))
        version = tracking.register(uri, MODEL_NAME)
        for key, value in tags.items():
            MlflowClient().set_model_version_tag(MODEL_NAME, version, key, value)
    else:
        version = reused.version
        mlflow.set_tag("osmf.reused_version", version)
    decision = f"{MODEL_NAME} v{version}: the serving model of night {ds} (groups from {night.paag_version})"
    MlflowClient().set_model_version_tag(MODEL_NAME, version, promotion.TAG_DECISION, decision)
    promotion.crown(MODEL_NAME, version, ds)
    for table in (SERVING_CREATIVES, GROUP_PROFILES, USER_GROUPS):
        tracking.log_table_input(spark, table, cfg, context="serving")
    mlflow.log_params({"serving.version": version, "serving.paag_version": night.paag_version})
    return version, night


def member_agreement(spark: SparkSession, cfg: Config, ds: date, night: ServingNight, rows: int) -> list[Metric]:
    """Members placed by their attributes alone (no user id), as a newcomer would be: the share that
    gets its own group back, on a stable sample of at most `rows` members of products with several
    groups (a product with one group agrees by construction)."""
    several = night.groups.groupby("product_id")["group_id"].transform("nunique") > 1
    split = set(night.groups.loc[several, "product_id"])
    members = night.members[night.members["product_id"].isin(split)]
    if members.empty:
        return []
    sample = members.assign(_h=pd.util.hash_array(members["user_id"].to_numpy(dtype=object)))
    sample = sample.sort_values(["_h", "product_id"]).head(rows).drop(columns="_h")
    requests = sample.merge(_attributes(spark, cfg, ds, sample["user_id"]), on="user_id", how="left")
    answered = night.assign(requests.drop(columns=["user_id", "group_id"]))
    agree = answered["group_id"].to_numpy() == requests["group_id"].to_numpy()
    return [
        Metric("member_agreement", "sample", float(agree.mean())),
        Metric("member_agreement_rows", "sample", float(len(agree))),
    ]
