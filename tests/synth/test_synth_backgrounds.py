"""The background painter: deterministic, and every named attribute visible in the picture."""

import numpy as np
import pytest

from osmf_lib.synth.backgrounds import PALETTES, nearest_tone, paint_background
from osmf_lib.synth.vocab import STYLE, STYLE_VALUES, compose_prompt


def _random_prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [{a: STYLE_VALUES[a][rng.integers(len(STYLE_VALUES[a]))] for a in STYLE} for _ in range(n)]


def test_the_same_prompt_and_seed_paint_the_same_pixels():
    prompt = compose_prompt(_random_prompts(1)[0])
    first = np.asarray(paint_background(prompt, 64, seed=3))
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, np.asarray(paint_background(prompt, 64, seed=3)))
    assert not np.array_equal(first, np.asarray(paint_background(prompt, 64, seed=4)))


def test_the_tone_a_prompt_names_is_what_the_picture_is_painted_in():
    # The ceiling of the renderer's tone check: on the painter's own pictures it is near certain.
    values = _random_prompts(120)
    hits = [nearest_tone(paint_background(compose_prompt(v), 64, seed=i)) == v["tone"] for i, v in enumerate(values)]
    assert np.mean(hits) >= 0.9


@pytest.mark.parametrize("attribute", ["scene", "lighting", "props", "style"])
def test_every_attribute_changes_the_picture(attribute):
    base = {a: STYLE_VALUES[a][0] for a in STYLE}
    pictures = {
        value: np.asarray(paint_background(compose_prompt({**base, attribute: value}), 64), dtype=float)
        for value in STYLE_VALUES[attribute]
    }
    names = list(pictures)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(pictures[a] - pictures[b]).mean() > 1.0, (a, b)


def test_free_text_and_an_unknown_prompt_paint_something():
    assert nearest_tone(paint_background("Product on a table. Cool blue tones please!", 64)) == "cool"
    plain = np.asarray(paint_background("", 32))
    assert plain.shape == (32, 32, 3) and plain.std() > 0
    assert set(PALETTES) == set(STYLE_VALUES["tone"])
