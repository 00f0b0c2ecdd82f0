"""What a group looks like: its anchor members, the attribute values over-represented in it versus
the product's audience, and a one-line description ("women 25-34 into running")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from osmf_lib.config import GroupingConfig
from osmf_lib.tables import (
    MULTI_VALUED_ATTRIBUTES,
    SINGLE_VALUED_ATTRIBUTES,
)

UNKNOWN = "unknown"
BROAD_AUDIENCE = "broad audience"
_GENDER_NOUNS = {"female": "women", "f": "women", "male": "men", "m": "men"}
_GENDER_ADJECTIVES = {"female": "female", "f": "female", "male": "male", "m": "male"}
_OCCUPATIONS = {
    "student": "students",
    "office_worker": "office workers",
    "engineer": "engineers",
    "service_worker": "service workers",
    "self_employed": "self-employed people",
    "retired": "retirees",
}
_DEVICES = {"ios": "iOS", "android": "Android", "pc": "PC"}


def anchor_counts(total: int, ratio: Sequence[int]) -> list[int]:
    """Split `total` anchors in `ratio` (largest remainder), e.g. 10 in 2:3:5 -> [2, 3, 5]."""
    exact = [share * total / sum(ratio) for share in ratio]
    counts = [int(x) for x in exact]
    # Equal remainders favour the farther percentile, which the paper's ratio weights most.
    by_remainder = sorted(range(len(ratio)), key=lambda i: (counts[i] - exact[i], -i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def anchor_rows(distances: np.ndarray, cfg: GroupingConfig) -> np.ndarray:
    """Positions of a group's anchors: per percentile, the members nearest its distance, none twice."""
    counts = anchor_counts(min(cfg.anchors_per_group, len(distances)), cfg.anchor_ratio)
    taken = np.zeros(len(distances), dtype=bool)
    picked = []
    for percentile, count in zip(cfg.anchor_percentiles, counts, strict=True):
        gaps = np.abs(distances - np.quantile(distances, percentile))
        gaps[taken] = np.inf
        rows = np.argsort(gaps, kind="stable")[:count]
        taken[rows] = True
        picked.append(rows)
    return np.concatenate(picked)


def _values(audience: pd.DataFrame) -> pd.DataFrame:
    """One (row, attribute, value) per user and attribute value; missing values become "unknown"."""
    single = [a for a in SINGLE_VALUED_ATTRIBUTES if a in audience]
    long = audience[single].astype(object).where(audience[single].notna(), UNKNOWN).astype(str)
    parts = [long.melt(var_name="attribute", value_name="value", ignore_index=False)]
    for attribute in (a for a in MULTI_VALUED_ATTRIBUTES if a in audience):
        # A user counts once per distinct value: interests are a set, whatever the source sends.
        listed = audience[attribute].map(_distinct_values).explode()
        parts.append(pd.DataFrame({"attribute": attribute, "value": listed}))
    return pd.concat(parts).rename_axis("row").reset_index()


def _distinct_values(values: object) -> list[str]:
    # None from Spark, NaN from a pandas join: both mean the list is missing.
    listed = values if isinstance(values, Iterable) and not isinstance(values, str) else []
    return sorted({str(v) for v in listed if v is not None}) or [UNKNOWN]


def attribute_summaries(audience: pd.DataFrame, labels: np.ndarray, cfg: GroupingConfig) -> list[list[dict]]:
    """Per group, the values over-represented versus the whole audience: share, lift, sorted by lift.

    share = members with the value / group size; lift = share / the value's share of the audience.
    """
    k = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=k)
    values = _values(audience.reset_index(drop=True))
    values["group"] = labels[values["row"].to_numpy()]
    overall = values.groupby(["attribute", "value"]).size().rename("overall") / len(labels)
    counts = values.groupby(["group", "attribute", "value"]).size().rename("count").reset_index()
    counts["share"] = counts["count"] / sizes[counts["group"].to_numpy()]
    counts["lift"] = counts["share"] / overall.reindex(pd.MultiIndex.from_frame(counts[["attribute", "value"]])).values
    kept = counts[(counts["lift"] >= cfg.summary_min_lift) & (counts["share"] >= cfg.summary_min_share)]
    kept = kept.sort_values(
        ["group", "lift", "share", "attribute", "value"], ascending=[True, False, False, True, True]
    )
    summaries: list[list[dict]] = [[] for _ in range(k)]
    for group, rows in kept.groupby("group", sort=True):
        top = rows.head(cfg.summary_max_items)
        summaries[group] = [
            {"attribute": a, "value": v, "share": float(s), "lift": float(li)}
            for a, v, s, li in zip(top["attribute"], top["value"], top["share"], top["lift"], strict=True)
        ]
    return summaries


def _words(values: Mapping[str, list[str]], attribute: str, words: Mapping[str, str] = {}, sep: str = "/") -> str:
    return sep.join(words.get(v, v.replace("_", " ")) for v in values.get(attribute, []))


def _who(values: Mapping[str, list[str]]) -> str:
    genders = values.get("gender", [])
    gender = genders[0].lower() if len(genders) == 1 else ""
    occupations = _words(values, "occupation", _OCCUPATIONS)
    noun = (
        f"{_GENDER_ADJECTIVES.get(gender, '')} {occupations}".strip() if occupations else _GENDER_NOUNS.get(gender, "")
    )
    ages = _words(values, "age_band")
    if ages:
        return f"{noun} {ages}" if noun else f"aged {ages}"
    return noun


def _in_order(values: list[str], order: Sequence[str]) -> list[str]:
    """Values in the configured order (ages ascending, low to high); unlisted ones after, alphabetically."""
    return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))


def describe(summary: Sequence[Mapping], value_order: Mapping[str, Sequence[str]] = {}) -> str:
    """A readable line from an attribute summary, e.g. "women 25-34, tier-1 cities, high purchase power".

    `value_order` (grouping.value_order) says how to list several values of one attribute.
    """
    values: dict[str, list[str]] = {}
    for item in summary:
        if item["value"] != UNKNOWN:
            values.setdefault(item["attribute"], []).append(item["value"])
    values = {attribute: _in_order(found, value_order.get(attribute, ())) for attribute, found in values.items()}
    phrases = [
        (_who(values), "{}"),
        (_words(values, "city_tier"), "{} cities"),
        (_words(values, "purchase_power"), "{} purchase power"),
        (_words(values, "device", _DEVICES), "on {}"),
        (_words(values, "interests", sep=" and "), "into {}"),
    ]
    return ", ".join(template.format(words) for words, template in phrases if words) or BROAD_AUDIENCE
