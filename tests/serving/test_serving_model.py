"""ServingNight.assign: every request gets a row that says what it was served and why."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osmf_lib.paag.model import USER_ATTRIBUTES
from osmf_lib.serving.model import GROUP_COLUMNS, OUTPUT_COLUMNS, ServingError, ServingNight
from osmf_lib.tables import ASSIGNED, FALLBACK, MEMBER, UNKNOWN_PRODUCT


def _requests(users: pd.DataFrame, product_id: str, with_ids: bool = True) -> pd.DataFrame:
    frame = users.assign(product_id=product_id)[["product_id", "user_id", *USER_ATTRIBUTES]]
    return frame if with_ids else frame.drop(columns="user_id")


def test_the_night_splits_its_two_group_product_by_gender(night: ServingNight, users: pd.DataFrame) -> None:
    members = night.members[night.members["product_id"] == "p-two"].merge(users, on="user_id")
    # The planted taste is what PAAG learnt and K-Means split on: otherwise the tests below say little.
    assert pd.crosstab(members["group_id"], members["gender"]).to_numpy().max(axis=1).tolist() == [40, 40]


def test_members_are_found_by_id_and_placed_in_their_own_group_by_attributes_alone(
    night: ServingNight, users: pd.DataFrame
) -> None:
    members = night.members.set_index(["product_id", "user_id"])["group_id"]
    for product_id in ("p-two", "p-one"):
        audience = users[users["user_id"].isin(members.loc[product_id].index)]
        by_id = night.assign(_requests(audience, product_id))
        by_attributes = night.assign(_requests(audience, product_id, with_ids=False))
        own = members.loc[product_id].loc[audience["user_id"]].tolist()
        assert (by_id["reason"] == MEMBER).all() and by_id["group_id"].tolist() == own
        assert (by_attributes["reason"] == ASSIGNED).all() and by_attributes["group_id"].tolist() == own
    assert list(by_id.columns) == list(OUTPUT_COLUMNS)
    assert by_id["creative_id"].tolist() == [f"gen-p-one-{g}" for g in own]
    assert (by_id["paag_version"] == "osmf-paag/1").all() and (by_id["groups_ds"] == "2026-11-03").all()


def test_a_newcomer_is_placed_by_its_attributes_whatever_rows_come_with_it(
    night: ServingNight, users: pd.DataFrame
) -> None:
    strangers = users.assign(user_id=[f"new{i}" for i in range(len(users))])
    alone = pd.concat([night.assign(_requests(strangers.iloc[[i]], "p-two")) for i in range(0, len(users), 7)])
    together = night.assign(_requests(strangers, "p-two")).iloc[::7]
    assert (together["reason"] == ASSIGNED).all()
    pd.testing.assert_frame_equal(alone.reset_index(drop=True), together.reset_index(drop=True))
    own = night.members.set_index("user_id").loc[users["user_id"].iloc[::7]]
    assert together["group_id"].tolist() == own[own["product_id"] == "p-two"]["group_id"].tolist()


def test_missing_and_unknown_attributes_are_unknown_not_errors(night: ServingNight) -> None:
    requests = pd.DataFrame(
        {
            "product_id": ["p-two"] * 4,
            "user_id": [None, "nobody", None, None],
            "gender": [None, "female", "nonbinary", np.nan],
            "interests": [None, [], ["astronomy"], np.nan],
        }
    )
    answered = night.assign(requests)
    assert (answered["reason"] == ASSIGNED).all() and answered["group_id"].isin([0, 1]).all()
    # No attribute at all is the same request as attributes nobody was trained on.
    no_columns = night.assign(pd.DataFrame({"product_id": ["p-two"]}))
    assert no_columns["group_id"].tolist() == [answered["group_id"].iat[0]]
    assert answered["group_id"].iat[2] == answered["group_id"].iat[3]


def test_products_without_two_groups_fall_back_or_say_they_are_unknown(night: ServingNight) -> None:
    requests = pd.DataFrame({"product_id": ["p-one", "p-quiet", "p-gone", None], "user_id": ["x1", "x2", None, "u000"]})
    answered = night.assign(requests).set_index(requests["product_id"].fillna("null"))
    assert answered.loc["p-one", ["group_id", "creative_id", "reason"]].tolist() == [0, "gen-p-one-0", ASSIGNED]
    quiet = answered.loc["p-quiet"]
    assert (quiet["group_id"], quiet["creative_id"], quiet["origin"], quiet["reason"]) == (
        None,
        "c-quiet",
        "logged",
        FALLBACK,
    )
    for missing in ("p-gone", "null"):
        row = answered.loc[missing]
        assert row["reason"] == UNKNOWN_PRODUCT
        assert row[["group_id", "creative_id", "image_uri", "origin"]].isna().all()


def test_a_group_without_a_creative_gets_the_products_fallback(night: ServingNight) -> None:
    groups = night.groups.assign(creative_id=night.groups["creative_id"].where(night.groups["product_id"] != "p-two"))
    patched = ServingNight(night.paag, groups, night.fallback, night.members, night.paag_version, night.groups_ds)
    answered = patched.assign(pd.DataFrame({"product_id": ["p-two"], "user_id": ["u000"]}))
    assert answered.loc[0, ["creative_id", "reason"]].tolist() == ["c-warm", FALLBACK]
    assert answered.loc[0, "group_id"] in (0, 1)


def test_no_requests_and_no_product_column(night: ServingNight) -> None:
    empty = night.assign(pd.DataFrame({"product_id": pd.Series([], dtype=object)}))
    assert empty.empty and list(empty.columns) == list(OUTPUT_COLUMNS)
    with pytest.raises(ServingError, match=r"serving requests lack columns \['product_id'\]"):
        night.assign(pd.DataFrame({"user_id": ["u000"]}))


def test_a_saved_night_answers_as_it_did(night: ServingNight, users: pd.DataFrame, tmp_path: Path) -> None:
    night.save(tmp_path / "serving")
    loaded = ServingNight.load(tmp_path / "serving")
    requests = pd.concat([_requests(users, "p-two"), _requests(users, "p-one", with_ids=False)])
    requests = pd.concat([requests, pd.DataFrame({"product_id": ["p-quiet", "p-gone"]})], ignore_index=True)
    pd.testing.assert_frame_equal(loaded.assign(requests), night.assign(requests))


def test_a_night_without_groups_needs_no_paag() -> None:
    ds = dt.date(2026, 11, 3)
    fallback = pd.DataFrame(
        {"product_id": ["p"], "creative_id": ["c"], "origin": ["logged"], "prompt": ["x"], "image_uri": [None]}
    )
    empty = pd.DataFrame(columns=list(GROUP_COLUMNS))
    members = pd.DataFrame(columns=["product_id", "user_id", "group_id"])
    night = ServingNight(None, empty, fallback, members, paag_version=None, groups_ds=ds)
    answered = night.assign(pd.DataFrame({"product_id": ["p", "q"], "user_id": ["u", "v"]}))
    assert answered["reason"].tolist() == [FALLBACK, UNKNOWN_PRODUCT]
    with pytest.raises(ServingError, match="needs the PAAG model"):
        groups = night.fallback.assign(group_id=0, centroid=[[0.0]], traffic_share=1.0)
        ServingNight(None, groups, fallback, members, None, ds)


def _explored(night: ServingNight, shares: dict[str, float], groups_ds: dt.date | None = None) -> ServingNight:
    """The night with p-two's groups each served several creatives at these traffic shares."""
    two = night.groups[night.groups["product_id"] == "p-two"]
    rows = [
        two.assign(creative_id=two["creative_id"] + suffix, traffic_share=share) for suffix, share in shares.items()
    ]
    groups = pd.concat([night.groups[night.groups["product_id"] != "p-two"], *rows], ignore_index=True)
    return ServingNight(
        night.paag, groups, night.fallback, night.members, night.paag_version, groups_ds or night.groups_ds
    )


def test_a_groups_traffic_is_drawn_by_its_shares_and_a_user_keeps_their_draw(night: ServingNight) -> None:
    explored = _explored(night, {"-best": 0.7, "-a": 0.2, "-b": 0.1})
    crowd = pd.DataFrame({"product_id": "p-two", "user_id": [f"x{i}" for i in range(20_000)]})
    answered = explored.assign(crowd)
    shares = answered["creative_id"].str.extract(r"(-best|-a|-b)$")[0].value_counts(normalize=True)
    assert shares.to_dict() == pytest.approx({"-best": 0.7, "-a": 0.2, "-b": 0.1}, abs=0.015)
    # Each (product, user) keeps its creative for the night, whatever rows come with it.
    again = explored.assign(crowd.iloc[::-1].reset_index(drop=True)).iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, answered)
    # The next night draws anew; a request without a user id gets the group's best.
    later = _explored(night, {"-best": 0.7, "-a": 0.2, "-b": 0.1}, night.groups_ds + dt.timedelta(days=1))
    moved = (later.assign(crowd)["creative_id"] != answered["creative_id"]).mean()
    assert 0.3 < moved < 0.6
    anonymous = explored.assign(pd.DataFrame({"product_id": ["p-two"] * 50}))
    assert anonymous["creative_id"].str.endswith("-best").all()


def test_a_group_served_alone_gets_all_its_traffic(night: ServingNight) -> None:
    crowd = pd.DataFrame({"product_id": "p-two", "user_id": [f"x{i}" for i in range(2_000)]})
    answered = _explored(night, {"-best": 1.0}).assign(crowd)
    assert answered["creative_id"].str.endswith("-best").all()
