"""The click oracle: the true expected CTR of any background prompt, read off the hidden click model.

It answers what no offline log can: how a never-shown prompt would have done for a user, a
learned group or a product's whole audience, and what the best possible prompt would have been.

Only evaluation may import this module (tests/test_synth_isolation.py enforces it): a model
trained with the oracle's answers would be graded on its own answer key.

A prompt is read as free text: the style phrases of `vocab.STYLE` it contains count, anything
else counts for nothing. Mentioning several values of one attribute averages their effects, so
piling up phrases never beats choosing the right one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from osmf_lib.synth.vocab import CATEGORIES, STYLE_ATTRIBUTES, STYLE_VALUES, compose_prompt, parse_prompt
from osmf_lib.synth.world import (
    INTERCEPT,
    MAX_SEGMENTS,
    POSITION_EFFECT,
    PROPENSITY_LEVELS,
    SEGMENTS,
    STYLE_OPTIONS,
    World,
    build_world,
)

Users = str | Iterable[str] | None
# Option STYLE_OPTIONS of an attribute means "not mentioned": it adds nothing.
_OMIT = STYLE_OPTIONS


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Oracle:
    def __init__(self, world: World) -> None:
        self._world = world
        self._model = world.click_model
        self._products = pd.Index(world.products["product_id"])
        self._users = pd.Index(world.users["user_id"])
        self._combo_shifts: dict[int, np.ndarray] = {}

    @property
    def world(self) -> World:
        """The world it reads, for evaluation that also needs its traffic (synth.day_requests)."""
        return self._world

    @classmethod
    def of_world(cls, seed: int, scale: str) -> Oracle:
        """The oracle of the world a landing manifest names (ingest.world_of)."""
        return cls(build_world(seed, scale))

    # --- segments ------------------------------------------------------------------------------

    def segments(self, product_id: str) -> tuple[str, ...]:
        """The latent segments of the product's category, in rule order."""
        return tuple(segment.name for segment in SEGMENTS[self._category_name(product_id)])

    def segment_of(self, product_id: str, user_ids: Iterable[str]) -> list[str]:
        names = self.segments(product_id)
        return [names[s] for s in self._segment_indices(product_id, self._user_rows(user_ids))]

    def segment_users(self, product_id: str, segment: str) -> list[str]:
        rows = np.arange(len(self._users))
        hit = self._segment_indices(product_id, rows) == self._segment_index(product_id, segment)
        return self._users[hit].tolist()

    # --- expected CTR --------------------------------------------------------------------------

    def expected_ctr(self, product_id: str, prompt: str, users: Users = None) -> float:
        """Mean click probability over the users and the logged positions.

        `users` is one user id, a group (a list of ids, repeats counting twice) or None for the
        product's audience, weighted by how often the logging policy shows them the product.
        """
        product = self._product_row(product_id)
        shift = self._model.prompt_shift(self._category(product), parse_prompt(prompt))
        return float(self._ctr(product, self._mix(product, users), shift[:, None])[0])

    def best_prompt(self, product_id: str, users: Users = None) -> str:
        """The prompt with the highest expected CTR for these users (None: the whole audience)."""
        product = self._product_row(product_id)
        return self._best(product, self._mix(product, users))

    def segment_best_prompt(self, product_id: str, segment: str) -> str:
        """The best prompt for one latent segment: what perfect group targeting would show it."""
        mix = np.zeros((MAX_SEGMENTS, len(PROPENSITY_LEVELS)))
        # Users of one segment share its style preferences, so who exactly they are cannot matter.
        mix[self._segment_index(product_id, segment)] = 1.0
        return self._best(self._product_row(product_id), mix)

    def population_best_prompt(self, product_id: str) -> str:
        """The best single prompt for the product's audience: the one-size-fits-all optimum."""
        return self.best_prompt(product_id)

    # --- internals -----------------------------------------------------------------------------

    def _product_row(self, product_id: str) -> int:
        row = self._products.get_indexer([product_id])[0]
        if row < 0:
            raise KeyError(f"unknown product_id '{product_id}'")
        return int(row)

    def _user_rows(self, user_ids: Iterable[str]) -> np.ndarray:
        ids = [user_ids] if isinstance(user_ids, str) else list(user_ids)
        if not ids:
            raise ValueError("expected at least one user id")
        rows = self._users.get_indexer(ids)
        if (rows < 0).any():
            unknown = sorted({uid for uid, row in zip(ids, rows, strict=True) if row < 0})
            raise KeyError(f"unknown user_id(s): {', '.join(unknown[:5])}")
        return rows

    def _category(self, product: int) -> int:
        return int(self._model.product_category[product])

    def _category_name(self, product_id: str) -> str:
        return CATEGORIES[self._category(self._product_row(product_id))]

    def _segment_index(self, product_id: str, segment: str) -> int:
        names = self.segments(product_id)
        if segment not in names:
            raise KeyError(f"product {product_id} has no segment '{segment}'; its segments: {', '.join(names)}")
        return names.index(segment)

    def _segment_indices(self, product_id: str, rows: np.ndarray) -> np.ndarray:
        return self._model.segment[rows, self._category(self._product_row(product_id))]

    def _mix(self, product: int, users: Users) -> np.ndarray:
        """mix[s, l]: how much weight users of segment s and propensity level l carry.

        Users matter to the click model only through these two, so any population's expected
        CTR is an exact sum over this small table.
        """
        if users is None:
            rows = np.arange(len(self._users))
            weights = self._world.audience_weights(product)
        else:
            rows = self._user_rows(users)
            weights = np.ones(len(rows))
        mix = np.zeros((MAX_SEGMENTS, len(PROPENSITY_LEVELS)))
        np.add.at(mix, (self._model.segment[rows, self._category(product)], self._model.propensity[rows]), weights)
        return mix / mix.sum()

    def _ctr(self, product: int, mix: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """Expected CTR per candidate, given shifts[s, candidate]; positions as logged (uniform)."""
        base = INTERCEPT + self._model.product_effect[product]
        logit = (
            base
            + shifts[:, :, None, None]
            + PROPENSITY_LEVELS[None, None, :, None]
            + POSITION_EFFECT[None, None, None, :]
        )
        return np.einsum("scl,sl->c", _sigmoid(logit).mean(axis=3), mix)

    def _best(self, product: int, mix: np.ndarray) -> str:
        ctr = self._ctr(product, mix, self._all_combo_shifts(self._category(product)))
        return self._combo_prompt(int(np.argmax(ctr)))

    def _all_combo_shifts(self, category: int) -> np.ndarray:
        """shift[s, combo] for every prompt with at most one value per attribute (7^5 of them).

        Averaging several values never beats the best single one, so these contain the optimum.
        """
        if category not in self._combo_shifts:
            with_omit = np.concatenate(
                [self._model.preferences[category], np.zeros((MAX_SEGMENTS, len(STYLE_ATTRIBUTES), 1))], axis=2
            )
            digits = _combo_digits(np.arange((STYLE_OPTIONS + 1) ** len(STYLE_ATTRIBUTES)))
            attributes = np.arange(len(STYLE_ATTRIBUTES))
            self._combo_shifts[category] = with_omit[:, attributes, digits].sum(axis=2)
        return self._combo_shifts[category]

    @staticmethod
    def _combo_prompt(combo: int) -> str:
        digits = _combo_digits(np.array([combo]))[0]
        return compose_prompt(
            {
                attribute: STYLE_VALUES[attribute][option]
                for attribute, option in zip(STYLE_ATTRIBUTES, digits, strict=True)
                if option != _OMIT
            }
        )


def _combo_digits(combos: np.ndarray) -> np.ndarray:
    """digits[k, a]: the option of attribute a in combo k (base STYLE_OPTIONS + 1)."""
    places = (STYLE_OPTIONS + 1) ** np.arange(len(STYLE_ATTRIBUTES))[::-1]
    return (combos[:, None] // places) % (STYLE_OPTIONS + 1)
