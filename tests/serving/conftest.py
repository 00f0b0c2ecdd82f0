"""A small night to serve: a PAAG trained on a log where women and men click opposite creatives,
one product split in two groups by it, one with a single group, one in the catalog without groups."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from osmf_lib.config import Config, GroupingConfig
from osmf_lib.grouping.groups import group_product
from osmf_lib.paag import fit_paag
from osmf_lib.paag.model import INTERESTS, SINGLE_VALUED_ATTRIBUTES
from osmf_lib.serving.model import ServingNight

DS = dt.date(2026, 11, 3)
USERS = 80
# p-two's audience splits by gender (women click the warm creative, men the cool one); p-one's
# audience is too small to split; p-quiet is in the catalog without an impression tonight.
PRODUCTS = ("p-two", "p-one", "p-quiet")
GROUPS = GroupingConfig(min_audience=30, min_group_size=5, k_min=2, k_max=2)


def make_users() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    users = pd.DataFrame({"user_id": [f"u{i:03d}" for i in range(USERS)]})
    for attribute in SINGLE_VALUED_ATTRIBUTES:
        users[attribute] = [f"{attribute}-{v}" for v in rng.integers(0, 3, USERS)]
    users["gender"] = np.where(np.arange(USERS) % 2, "male", "female")
    users[INTERESTS] = [["home", "films"][: int(n)] for n in rng.integers(0, 3, USERS)]
    return users


def _log(users: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(2)
    creatives = pd.DataFrame(
        {
            "creative_id": ["c-warm", "c-cool", "c-one", "c-quiet"],
            "product_id": ["p-two", "p-two", "p-one", "p-quiet"],
            "prompt": ["a sunlit beach, warm tones", "a frosty forest, cool tones", "a studio", "a shelf"],
        }
    )
    rows = users.iloc[rng.integers(0, USERS, 4000)].reset_index(drop=True)
    warm = rng.random(len(rows)) < 0.5
    rows["creative_id"] = np.where(warm, "c-warm", "c-cool")
    rows["product_id"] = "p-two"
    likes = (rows["gender"] == "female") == warm
    rows["clicked"] = rng.random(len(rows)) < np.where(likes, 0.5, 0.05)
    products = pd.DataFrame(
        {"product_id": list(PRODUCTS), "title": ["Two", "One", "Quiet"], "category": "home", "image_uri": None}
    )
    return rows, products, creatives


@pytest.fixture(scope="session")
def night(make_cfg: Callable[..., Config]) -> ServingNight:
    users = make_users()
    examples, products, creatives = _log(users)
    cfg = make_cfg("gpu.device=cpu", "paag.epochs=3", "paag.learning_rate=0.01")
    paag = fit_paag(examples, products, creatives, cfg).paag
    # As the stage does: every grouped product's features go into the model.
    paag.featurizer.store.ensure(products)
    audiences = {"p-two": users, "p-one": users.head(12)}
    members, groups = [], []
    for product_id, audience in audiences.items():
        pairs = audience.assign(product_id=product_id)
        embedded = pairs.assign(embedding=list(paag.embed(pairs)))
        assigned, profiles = group_product(embedded, GROUPS)
        members.append(assigned[["product_id", "user_id", "group_id"]])
        groups.append(profiles[["product_id", "group_id", "centroid"]])
    groups = pd.concat(groups, ignore_index=True)
    groups["creative_id"] = [f"gen-{p}-{g}" for p, g in zip(groups["product_id"], groups["group_id"], strict=True)]
    groups = groups.assign(origin="generated", prompt="a generated scene", image_uri="mem://x.png", traffic_share=1.0)
    fallback = creatives.assign(origin="logged", image_uri=None).drop_duplicates("product_id")
    return ServingNight(
        paag,
        groups,
        fallback[["product_id", "creative_id", "origin", "prompt", "image_uri"]],
        pd.concat(members, ignore_index=True),
        paag_version="osmf-paag/1",
        groups_ds=DS,
    )


@pytest.fixture
def users() -> pd.DataFrame:
    """The night's users: u000..u079, women at even numbers, men at odd ones."""
    return make_users()
