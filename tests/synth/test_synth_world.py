"""The simulated world: realistic users, products and creatives, and a click model worth learning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from osmf_lib.synth import SCALES, build_world
from osmf_lib.synth.images import IMAGE_SIZE, LOOKS, product_image
from osmf_lib.synth.oracle import Oracle, parse_prompt
from osmf_lib.synth.vocab import ATTRIBUTE_VALUES, CATEGORIES, STYLE, STYLE_ATTRIBUTES, TITLE_WORDS
from osmf_lib.synth.world import SEGMENTS, USER_EVOLUTION, World, segment_attributes


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(7, "tiny")


def test_scales_fit_their_purpose() -> None:
    tiny, demo, bench = SCALES["tiny"], SCALES["demo"], SCALES["bench"]
    assert 30_000 <= tiny.impressions_per_day <= 60_000 and tiny.products >= 20
    assert 1.9e6 <= 3 * demo.impressions_per_day <= 2.1e6
    assert (demo.users, demo.products) == (50_000, 500)
    assert bench.impressions_per_day >= 10 * demo.impressions_per_day


def test_the_same_seed_builds_the_same_world_and_another_seed_does_not(world: World) -> None:
    again, other = build_world(7, "tiny"), build_world(8, "tiny")
    for table in ("users", "products", "creatives"):
        pd.testing.assert_frame_equal(getattr(world, table), getattr(again, table))
    np.testing.assert_array_equal(world.click_model.preferences, again.click_model.preferences)
    assert not world.users.equals(other.users)
    assert not np.allclose(world.click_model.preferences, other.click_model.preferences)


def test_users_have_every_attribute_value_with_plausible_links(world: World) -> None:
    users = world.users
    assert users["user_id"].tolist() == sorted(users["user_id"]) and users["user_id"].iat[0] == "u000001"
    for attribute, values in ATTRIBUTE_VALUES.items():
        assert set(users[attribute]) == set(values), attribute
    students = users[users["occupation"] == "student"]
    assert (students["age_band"].isin(["18-24", "25-34"])).mean() > 0.9
    assert users.loc[users["occupation"] == "retired", "age_band"].eq("55+").mean() > 0.8
    interests = users["interests"]
    assert interests.map(len).between(1, 3).all() and interests.map(lambda row: len(set(row)) == len(row)).all()
    assert set().union(*interests) == set(CATEGORIES)
    cosmetics_fans = interests.map(lambda row: "cosmetics" in row)
    assert cosmetics_fans[users["gender"] == "female"].mean() > 2 * cosmetics_fans[users["gender"] == "male"].mean()


def test_products_span_the_categories_with_titles_from_their_vocabulary(world: World) -> None:
    products = world.products
    assert set(products["category"]) == set(CATEGORIES)
    assert len(CATEGORIES) >= 6
    for title, category in zip(products["title"], products["category"], strict=True):
        brands, _, nouns = TITLE_WORDS[category]
        assert any(title.startswith(brand) for brand in brands) and any(title.endswith(noun) for noun in nouns)


def test_each_product_has_distinct_creatives_with_one_phrase_per_style_attribute(world: World) -> None:
    per_product = world.creatives.groupby("product_id")["prompt"]
    assert per_product.size().eq(SCALES["tiny"].creatives_per_product).all()
    assert per_product.nunique().eq(SCALES["tiny"].creatives_per_product).all()
    for prompt in world.creatives["prompt"]:
        values = parse_prompt(prompt)
        assert list(values) == list(STYLE_ATTRIBUTES) and all(len(found) == 1 for found in values.values())


def test_style_phrases_can_be_found_unambiguously_in_free_text() -> None:
    phrases = [phrase for values in STYLE.values() for phrase in values.values()]
    assert len({len(values) for values in STYLE.values()}) == 1
    assert not [(a, b) for a in phrases for b in phrases if a != b and a in b]


def test_each_category_is_segmented_by_its_own_attributes(world: World) -> None:
    deciding = {category: segment_attributes(category) for category in CATEGORIES}
    assert len(set(deciding.values())) >= 6
    assert all(len(attributes) == 2 for attributes in deciding.values())
    # What changes from day to day must not move a user between segments.
    assert not set(USER_EVOLUTION.redraws) & set().union(*deciding.values())
    for c, category in enumerate(CATEGORIES):
        sizes = np.bincount(world.click_model.segment[:, c], minlength=len(SEGMENTS[category]))
        assert 2 <= len(SEGMENTS[category]) <= 4
        assert len(sizes) == len(SEGMENTS[category]) and sizes.min() >= 0.03 * len(world.users), category


def _lifts(oracle: Oracle, product: str, phrase: str) -> list[float]:
    """How much a style phrase multiplies each segment's CTR, against a prompt that says nothing."""
    segments = [oracle.segment_users(product, segment) for segment in oracle.segments(product)]
    return [oracle.expected_ctr(product, phrase, users) / oracle.expected_ctr(product, "", users) for users in segments]


def test_segments_of_a_category_disagree_about_some_style(world: World) -> None:
    """Some style value helps one segment and hurts another: one creative cannot please both."""
    oracle = Oracle(world)
    phrases = [phrase for values in STYLE.values() for phrase in values.values()]
    for category in CATEGORIES:
        product = world.products.loc[world.products["category"] == category, "product_id"].iat[0]
        lifts = [_lifts(oracle, product, phrase) for phrase in phrases]
        assert [lift for lift in lifts if max(lift) > 1.1 and min(lift) < 1 / 1.1], category


def test_attribute_changes_touch_only_mutable_columns(world: World) -> None:
    before, after = world.users_on(0), world.users_on(2)
    assert len(after) > len(before)  # late arrivals
    common = after.loc[before.index]
    changed = (common != before).any(axis=0)
    assert set(changed[changed].index) <= set(USER_EVOLUTION.redraws)
    assert (common["device"] != before["device"]).any() and (common["interests"] != before["interests"]).any()
    products = world.products_on(2).loc[world.products_on(0).index]
    assert (products[["title", "price_band"]] != world.products_on(0)[["title", "price_band"]]).any(axis=None)


def test_the_logging_policy_favours_interests_and_top_slots_get_more_clicks(world: World) -> None:
    impressions = world.traffic(0).draw(40_000, np.random.default_rng(0))
    categories = np.array(CATEGORIES)[world.click_model.product_category[impressions.product]]
    interests = world.users["interests"].to_numpy()[impressions.user]
    assert np.mean([c in row for c, row in zip(categories, interests, strict=True)]) > 0.7
    top, bottom = (impressions.clicked[impressions.position == p].mean() for p in (1, 5))
    assert top > 1.3 * bottom
    assert 0.01 < impressions.clicked.mean() < 0.08
    assert np.all(np.diff(impressions.second) >= 0) and impressions.second.max() < 86_400


@pytest.mark.parametrize("category", sorted(LOOKS))
def test_product_images_are_cutouts_on_a_transparent_background(category: str) -> None:
    image = product_image(category, np.random.default_rng(0))
    alpha = np.asarray(image)[..., 3]
    assert image.mode == "RGBA" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert alpha[0, 0] == alpha[0, -1] == alpha[-1, 0] == alpha[-1, -1] == 0
    assert 0.1 < (alpha > 128).mean() < 0.7


def test_categories_have_distinct_silhouettes() -> None:
    # All cut-outs are centred, so even unlike shapes overlap a lot; a shared silhouette would not.
    masks = {
        category: np.asarray(product_image(category, np.random.default_rng(0)))[..., 3] > 128 for category in LOOKS
    }
    for a, first in masks.items():
        for b, second in masks.items():
            if a < b:
                assert (first & second).sum() / (first | second).sum() < 0.9, (a, b)
