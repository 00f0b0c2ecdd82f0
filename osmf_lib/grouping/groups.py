"""Grouping audiences: one product's (`group_product`, plain pandas) and every product's in one
Spark pass (`group_audiences`), both kinds of rows conforming to user_groups and group_profiles."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from osmf_lib import tables
from osmf_lib.config import Config, GroupingConfig
from osmf_lib.grouping.clustering import GroupingError, cluster_embeddings, embedding_matrix, nearest_centroids
from osmf_lib.grouping.profiles import anchor_rows, attribute_summaries, describe
from osmf_lib.inputs import LINEAGE
from osmf_lib.tables import (
    DS,
    GROUP_PROFILES,
    USER_ATTRIBUTES,
    USER_GROUPS,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


# What grouping one product computes; the night's columns (lineage, ds) are added around it.
ASSIGNMENT_COLUMNS = [c for c in USER_GROUPS.column_names if c not in (DS, LINEAGE)]
PROFILE_COLUMNS = [c for c in GROUP_PROFILES.column_names if c not in (DS, LINEAGE)]
# group_audiences' single pass emits both kinds of rows in one schema, told apart by this column.
KIND, ASSIGNMENT, PROFILE = "_kind", "assignment", "profile"


def group_product(audience: pd.DataFrame, cfg: GroupingConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group one product's audience -> (user_groups rows, group_profiles rows), both without ds.

    `audience`: product_id, user_id, embedding and any of the user attribute columns. Rows are
    sorted by user_id first, so the result does not depend on the order they arrive in.
    """
    if audience.empty:
        return pd.DataFrame(columns=ASSIGNMENT_COLUMNS), pd.DataFrame(columns=PROFILE_COLUMNS)
    audience = audience.sort_values("user_id", kind="stable").reset_index(drop=True)
    product_id = audience["product_id"].iloc[0]
    duplicated = audience["user_id"].duplicated()
    if duplicated.any():
        raise GroupingError(f"product {product_id}: user {audience['user_id'][duplicated].iloc[0]} appears twice")
    matrix = embedding_matrix(audience, product_id)
    labels, centroids, k, silhouette = cluster_embeddings(matrix, cfg)
    _, distances = nearest_centroids(matrix, centroids)
    assignments = pd.DataFrame(
        {
            "product_id": product_id,
            "user_id": audience["user_id"],
            "group_id": labels.astype(np.int32),
            "distance": distances,
        }
    )
    summaries = attribute_summaries(audience, labels, cfg)
    profiles = []
    for group in range(k):
        members = np.flatnonzero(labels == group)
        anchors = matrix[members[anchor_rows(distances[members], cfg)]].astype(np.float32)
        profiles.append(
            {
                "product_id": product_id,
                "group_id": group,
                "k": k,
                "size": len(members),
                "silhouette": silhouette,
                "centroid": centroids[group].astype(np.float32).tolist(),
                "anchors": anchors.tolist(),
                "attribute_summary": summaries[group],
                "description": describe(summaries[group], cfg.value_order),
            }
        )
    return assignments, pd.DataFrame(profiles, columns=PROFILE_COLUMNS)


def _pass_schema() -> str:
    """Assignment and profile columns in one schema (all nullable) plus the kind of row."""
    columns = {c.name: c.type for c in (*USER_GROUPS.columns, *GROUP_PROFILES.columns) if c.name != DS}
    return ", ".join([f"{KIND} STRING", *(f"{name} {type_}" for name, type_ in columns.items())])


def _group_rows(audience: pd.DataFrame, cfg: GroupingConfig) -> pd.DataFrame:
    versions = audience[LINEAGE].unique()
    if len(versions) != 1:
        raise GroupingError(
            f"product {audience['product_id'].iloc[0]}: embeddings of several models {sorted(versions)}"
        )
    assignments, profiles = group_product(audience.drop(columns=LINEAGE), cfg)
    both = pd.concat([assignments.assign(**{KIND: ASSIGNMENT}), profiles.assign(**{KIND: PROFILE})], ignore_index=True)
    both[LINEAGE] = versions[0]
    # The other kind's columns come out of concat as NaN, which Arrow takes for a value, not a null.
    return both.astype(object).where(both.notna(), None)


def group_audiences(embeddings: DataFrame, users: DataFrame, cfg: Config, ds: date) -> tuple[DataFrame, DataFrame]:
    """Group every product's audience of `ds` -> (user_groups, group_profiles), conforming to their contracts.

    One applyInPandas pass computes both kinds of rows and is persisted, so writing the two
    results clusters each product once. A user missing from `users` is summarised as "unknown".
    Both carry the embeddings' paag_version.
    """
    from pyspark.sql import functions as F

    grouping_cfg = cfg.grouping

    def one_product(audience: pd.DataFrame) -> pd.DataFrame:
        return _group_rows(audience, grouping_cfg)

    audience = embeddings.where(F.col(DS) == F.lit(ds)).select("product_id", "user_id", "embedding", LINEAGE)
    attributes = users.select("user_id", *USER_ATTRIBUTES)
    rows = (
        audience.join(attributes, "user_id", "left")
        .groupBy("product_id")
        .applyInPandas(one_product, _pass_schema())
        .persist()
    )

    def of_kind(kind: str, columns: list[str], table: tables.Table) -> DataFrame:
        picked = rows.where(F.col(KIND) == kind).select(*columns, LINEAGE, F.lit(ds).alias(DS))
        return tables.conform(picked, table)

    return of_kind(ASSIGNMENT, ASSIGNMENT_COLUMNS, USER_GROUPS), of_kind(PROFILE, PROFILE_COLUMNS, GROUP_PROFILES)
