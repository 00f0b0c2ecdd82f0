"""The click oracle: true expected CTRs of any prompt, and the best prompts per segment and overall."""

from __future__ import annotations

import numpy as np
import pytest

from osmf_lib.synth import build_world
from osmf_lib.synth.oracle import Oracle, parse_prompt
from osmf_lib.synth.world import World


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(7, "tiny")


@pytest.fixture(scope="module")
def oracle(world: World) -> Oracle:
    return Oracle(world)


@pytest.fixture(scope="module")
def product(world: World) -> str:
    return world.products["product_id"].iat[0]


def test_prompts_are_read_as_free_text(oracle: Oracle, product: str) -> None:
    canonical = "a cozy living room scene, warm golden tones, minimalist style, soft morning light, with potted plants"
    rewritten = (
        "Soft  morning light on A COZY LIVING ROOM SCENE with potted plants; warm golden tones, minimalist style!"
    )
    assert parse_prompt(canonical) == parse_prompt(rewritten)
    assert oracle.expected_ctr(product, canonical) == pytest.approx(oracle.expected_ctr(product, rewritten))
    # Words the world does not know count for nothing.
    assert oracle.expected_ctr(product, canonical + ", ultra detailed, 8k") == oracle.expected_ctr(product, canonical)
    assert oracle.expected_ctr(product, "a photo of a dog") == oracle.expected_ctr(product, "")


def test_a_group_is_the_mean_of_its_users(oracle: Oracle, product: str, world: World) -> None:
    prompt = world.creatives["prompt"].iat[0]
    group = world.users["user_id"].iloc[:50].tolist()
    singles = [oracle.expected_ctr(product, prompt, user) for user in group]
    assert oracle.expected_ctr(product, prompt, group[0]) == oracle.expected_ctr(product, prompt, group[:1])
    assert oracle.expected_ctr(product, prompt, group) == pytest.approx(np.mean(singles))
    assert 0.0 < min(singles) < max(singles) < 1.0


def test_unknown_ids_are_named(oracle: Oracle, product: str) -> None:
    with pytest.raises(KeyError, match="p99999"):
        oracle.expected_ctr("p99999", "")
    with pytest.raises(KeyError, match="u999999"):
        oracle.expected_ctr(product, "", ["u000001", "u999999"])
    with pytest.raises(KeyError, match="no segment"):
        oracle.segment_best_prompt(product, "martians")


def test_targeting_a_segment_beats_one_size_for_all(oracle: Oracle, world: World) -> None:
    """For its own users, a segment's best prompt is never worse than the population's best, and
    usually better: the lift group-targeted creatives can reach."""
    wins = total = 0
    for product in world.products["product_id"]:
        overall = oracle.population_best_prompt(product)
        for segment in oracle.segments(product):
            users = oracle.segment_users(product, segment)
            best = oracle.segment_best_prompt(product, segment)
            targeted, shared = oracle.expected_ctr(product, best, users), oracle.expected_ctr(product, overall, users)
            assert targeted >= shared - 1e-12, (product, segment)
            wins += targeted > shared + 1e-12
            total += 1
    assert wins >= 0.6 * total


def test_best_prompts_are_optimal(oracle: Oracle, world: World, product: str) -> None:
    segment = oracle.segments(product)[0]
    users = oracle.segment_users(product, segment)
    assert set(oracle.segment_of(product, users)) == {segment}
    assert oracle.best_prompt(product, users) == oracle.segment_best_prompt(product, segment)
    overall = oracle.expected_ctr(product, oracle.population_best_prompt(product))
    logged = world.creatives.loc[world.creatives["product_id"] == product, "prompt"]
    assert all(oracle.expected_ctr(product, prompt) <= overall for prompt in logged)
    # Piling up phrases of one attribute averages them: never better than the best one alone.
    greedy = oracle.population_best_prompt(product) + ", " + ", ".join(logged)
    assert oracle.expected_ctr(product, greedy) < overall


def test_logged_creatives_differ_enough_for_groups_to_notice(oracle: Oracle, world: World) -> None:
    """Per product and segment the best logged creative gets about 2-3x the worst one's CTR."""
    ratios = []
    for product, prompts in world.creatives.groupby("product_id")["prompt"]:
        for segment in oracle.segments(product):
            users = oracle.segment_users(product, segment)
            ctr = [oracle.expected_ctr(product, prompt, users) for prompt in prompts]
            ratios.append(max(ctr) / min(ctr))
    assert 2.0 <= np.median(ratios) <= 4.0


def test_the_oracle_predicts_the_simulated_clicks(oracle: Oracle, world: World) -> None:
    impressions = world.traffic(0).draw(30_000, np.random.default_rng(3))
    users = world.users["user_id"].to_numpy()[impressions.user]
    expected = 0.0
    for creative in np.unique(impressions.creative):
        shown = impressions.creative == creative
        row = world.creatives.iloc[creative]
        expected += shown.sum() * oracle.expected_ctr(row["product_id"], row["prompt"], users[shown].tolist())
    observed = impressions.clicked.sum()
    assert abs(observed - expected) < 4 * np.sqrt(expected)


def test_the_oracle_of_a_manifest_knows_the_world_it_landed(oracle: Oracle, product: str) -> None:
    named = Oracle.of_world(seed=7, scale="tiny")
    prompt = named.population_best_prompt(product)
    assert prompt == oracle.population_best_prompt(product)
    assert named.expected_ctr(product, prompt) == oracle.expected_ctr(product, prompt)
