"""The simulated world: users, products, logged creatives, the logging policy that shows them,
and the hidden click model that decides what gets clicked.

The click model is the ground truth the whole platform tries to recover without seeing it:

    logit P(click) = INTERCEPT + product effect + position effect + user propensity
                     + sum over style attributes of the segment's preference for the creative's value

where the user's *segment* depends on the product's category, and each category looks at a
different pair of user attributes (cosmetics: gender x age band; electronics: occupation x
purchase power; ...). Segments of one category have different tastes that partly conflict, so
one creative cannot be the best for everyone: that is the gap group-targeted creatives close.

Only `oracle.py` reads the click model back out; training code sees clicks, never this file's
numbers. Attributes that change over time (device, interests, titles, price bands) are kept
out of the click model, so the oracle is right on every day.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

import numpy as np
import pandas as pd

from osmf_lib.synth.vocab import (
    AGE_BANDS,
    CATEGORIES,
    CITY_TIERS,
    DEVICES,
    GENDERS,
    OCCUPATIONS,
    PRICE_BANDS,
    PURCHASE_POWERS,
    STYLE_ATTRIBUTES,
    STYLE_VALUES,
    TITLE_WORDS,
    compose_prompt,
)


@dataclass(frozen=True)
class Scale:
    users: int
    products: int
    creatives_per_product: int
    impressions_per_day: int
    # A log shipper rotates its files; bench writes one file at a time, so this also bounds memory.
    files_per_day: int
    # Painted backgrounds with their prompts in the landing's image library (the tiny renderer's
    # training set).
    backgrounds: int


SCALES: Mapping[str, Scale] = {
    "tiny": Scale(
        users=2_000, products=24, creatives_per_product=8, impressions_per_day=60_000, files_per_day=4, backgrounds=128
    ),
    "demo": Scale(
        users=50_000,
        products=500,
        creatives_per_product=8,
        impressions_per_day=670_000,
        files_per_day=8,
        backgrounds=1024,
    ),
    "bench": Scale(
        users=200_000,
        products=2_000,
        creatives_per_product=8,
        impressions_per_day=7_000_000,
        files_per_day=32,
        backgrounds=1024,
    ),
}

POSITIONS = 5

# --- who the users are -------------------------------------------------------------------------

AGE_SHARES = (0.17, 0.29, 0.23, 0.17, 0.14)
GENDER_SHARES = (0.51, 0.49)
CITY_TIER_SHARES = (0.18, 0.30, 0.30, 0.22)
# Rows follow AGE_BANDS, columns OCCUPATIONS: students are young, retirees old.
OCCUPATION_BY_AGE = np.array(
    [
        [0.55, 0.15, 0.08, 0.15, 0.07, 0.00],
        [0.05, 0.35, 0.22, 0.20, 0.18, 0.00],
        [0.00, 0.35, 0.20, 0.20, 0.25, 0.00],
        [0.00, 0.33, 0.15, 0.22, 0.27, 0.03],
        [0.00, 0.12, 0.05, 0.13, 0.15, 0.55],
    ]
)
# Purchase power is a noisy wealth score: big cities and some jobs pay more.
WEALTH_BY_TIER = np.array([0.6, 0.2, -0.2, -0.6])
WEALTH_BY_OCCUPATION = np.array([-0.8, 0.1, 0.6, -0.3, 0.3, -0.2])
WEALTH_CUTS = (-0.4, 0.9)  # -> roughly 35% low, 45% medium, 20% high
IOS_SHARE_BY_POWER = np.array([0.20, 0.35, 0.55])
PC_SHARE = 0.10

INTEREST_COUNT_SHARES = (0.30, 0.45, 0.25)  # 1, 2 or 3 interests
CATEGORY_APPEAL = {
    "cosmetics": 0.6,
    "electronics": 0.9,
    "sports": 0.7,
    "home": 0.9,
    "food": 1.0,
    "fashion": 0.9,
    "toys": 0.5,
    "books": 0.6,
}
# (category, attribute, values, factor): who is more likely to be interested in what.
INTEREST_TILTS = (
    ("cosmetics", "gender", ("female",), 4.0),
    ("fashion", "gender", ("female",), 1.8),
    ("electronics", "gender", ("male",), 1.8),
    ("electronics", "occupation", ("engineer", "student"), 1.6),
    ("sports", "age_band", ("18-24", "25-34"), 1.6),
    ("sports", "gender", ("male",), 1.3),
    ("toys", "age_band", ("25-34", "35-44"), 2.2),
    ("books", "occupation", ("student", "retired"), 1.8),
    ("home", "age_band", ("35-44", "45-54", "55+"), 1.5),
    ("food", "city_tier", ("tier-3", "tier-4"), 1.2),
)

# --- how the world changes from day to day -----------------------------------------------------

# The last tenth of users and products (the highest ids) arrive on days 1..ARRIVAL_DAYS. Which
# attributes of existing rows change, and how often: USER_EVOLUTION and PRODUCT_EVOLUTION below.
LATE_ARRIVAL_SHARE = 0.10
ARRIVAL_DAYS = 2

# --- the logging policy ------------------------------------------------------------------------

# Share of impressions where the user is shown a product from one of their interests; the rest
# are drawn from all products, so every segment sees every category now and then.
INTEREST_SHARE = 0.7
USER_ACTIVITY_SIGMA = 0.8  # lognormal: a few heavy users, many light ones
PRODUCT_POPULARITY_SIGMA = 0.5
# Relative traffic per hour of the day (UTC): quiet nights, a lunch bump, a busy evening.
HOURLY_TRAFFIC = np.array([2, 1, 1, 1, 1, 2, 4, 6, 7, 7, 8, 9, 10, 9, 8, 8, 8, 9, 10, 12, 13, 12, 8, 4], dtype=float)

# --- the hidden click model --------------------------------------------------------------------

INTERCEPT = -3.0
POSITION_EFFECT = np.array([0.0, -0.2, -0.35, -0.5, -0.6])
PRODUCT_EFFECT_SD = 0.25
# A user's own click propensity is one of a few levels, so population expectations are exact sums.
PROPENSITY_LEVELS = np.array([-0.8, -0.4, 0.0, 0.4, 0.8])
PROPENSITY_SHARES = (0.10, 0.20, 0.40, 0.20, 0.10)
# Log-odds for a liked (+) or disliked (-) style value. At 0.3 a segment's best and worst logged
# creative of a product differ about 2-3x in CTR: visible in a few days of tiny-scale logs.
TASTE_STRENGTH = 0.3
TASTE_JITTER = 0.08  # per category and segment, so no two categories are copies


@dataclass(frozen=True)
class Taste:
    likes: frozenset[str]
    dislikes: frozenset[str]


def _taste(likes: str, dislikes: str) -> Taste:
    return Taste(frozenset(likes.split()), frozenset(dislikes.split()))


# Style-value keys (see vocab.STYLE) each taste likes and dislikes; several tastes disagree.
TASTES: Mapping[str, Taste] = {
    "glam": _taste("city_street vivid luxury spotlight petals", "kitchen earthy playful daylight"),
    "cozy": _taste("living_room warm natural candle plants", "city_street mono futuristic neon"),
    "sleek": _taste("studio mono minimalist spotlight podiums", "kitchen pastel playful petals"),
    "trendy": _taste("city_street vivid futuristic neon podiums", "forest earthy vintage candle"),
    "outdoorsy": _taste("beach forest natural daylight splashes", "studio mono luxury neon"),
    "nostalgic": _taste("kitchen earthy vintage sunset fruit", "studio vivid futuristic neon"),
    "cheerful": _taste("beach pastel playful daylight gifts", "mono vintage candle spotlight"),
    "pragmatic": _taste("studio cool minimalist daylight fruit", "luxury petals neon gifts"),
}


@dataclass(frozen=True)
class Segment:
    """A latent segment of a category's audience.

    A user belongs to the first segment of the category whose `when` they match (each listed
    attribute has one of the listed values); the last segment has no `when` and takes the rest.
    """

    name: str
    taste: str
    when: Mapping[str, frozenset[str]]


def _segment(name: str, taste: str, **when: Sequence[str]) -> Segment:
    return Segment(name, taste, {attribute: frozenset(values) for attribute, values in when.items()})


YOUNG = ("18-24", "25-34")
BIG_CITIES = ("tier-1", "tier-2")
SEGMENTS: Mapping[str, tuple[Segment, ...]] = {
    "cosmetics": (  # gender x age band
        _segment("young women", "glam", gender=("female",), age_band=YOUNG),
        _segment("mature women", "cozy", gender=("female",)),
        _segment("men", "sleek"),
    ),
    "electronics": (  # occupation x purchase power
        _segment("tech enthusiasts", "trendy", occupation=("engineer", "student")),
        _segment("premium buyers", "sleek", purchase_power=("high",)),
        _segment("value seekers", "pragmatic"),
    ),
    "sports": (  # age band x city tier
        _segment("urban youth", "trendy", age_band=YOUNG, city_tier=BIG_CITIES),
        _segment("small-town youth", "outdoorsy", age_band=YOUNG),
        _segment("older adults", "nostalgic"),
    ),
    "home": (  # city tier x purchase power
        _segment("affluent city dwellers", "sleek", city_tier=BIG_CITIES, purchase_power=("medium", "high")),
        _segment("practical households", "cozy"),
    ),
    "food": (  # occupation x city tier
        _segment("students", "cheerful", occupation=("student",)),
        _segment("busy urban workers", "sleek", occupation=("office_worker", "engineer"), city_tier=BIG_CITIES),
        _segment("home cooks", "nostalgic"),
    ),
    "fashion": (  # gender x city tier
        _segment("city women", "glam", gender=("female",), city_tier=BIG_CITIES),
        _segment("women beyond big cities", "cozy", gender=("female",)),
        _segment("men", "outdoorsy"),
    ),
    "toys": (  # age band x purchase power
        _segment("grandparents", "nostalgic", age_band=("45-54", "55+")),
        _segment("young parents", "cheerful", age_band=("25-34", "35-44"), purchase_power=("medium", "high")),
        _segment("thrifty shoppers", "pragmatic", purchase_power=("low",)),
        _segment("young singles", "trendy"),
    ),
    "books": (  # occupation x age band
        _segment("students", "cheerful", occupation=("student",)),
        _segment("seniors", "nostalgic", age_band=("45-54", "55+")),
        _segment("working readers", "cozy"),
    ),
}
MAX_SEGMENTS = max(len(segments) for segments in SEGMENTS.values())


def segment_attributes(category: str) -> frozenset[str]:
    """The user attributes that decide a user's segment for products of this category."""
    return frozenset().union(*(segment.when for segment in SEGMENTS[category]))


# --- randomness --------------------------------------------------------------------------------


class Stream(IntEnum):
    """What a random stream is for; see rng_for."""

    WORLD = 0
    TRAFFIC = 1
    FAULTS = 2
    USER_CHANGES = 3
    PRODUCT_CHANGES = 4
    EMPTY_DAYS = 5
    IMAGES = 6
    BACKGROUNDS = 7
    SERVING = 8


def rng_for(seed: int, scale: str, stream: Stream, *keys: int) -> np.random.Generator:
    """An independent, reproducible random stream per purpose and key (a day, a file, a product).

    Keying streams instead of drawing everything from one sequence keeps a day's events the
    same when a fault rate, another day or the number of days changes.
    """
    if seed < 0:
        raise ValueError(f"synth seed must be non-negative, got {seed}")
    return np.random.default_rng([seed, zlib.crc32(scale.encode()), stream, *keys])


def _draw_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of (unnormalised) probabilities."""
    cdf = probs.cumsum(axis=1)
    return (rng.random(len(probs))[:, None] * cdf[:, -1:] > cdf).sum(axis=1)


def _pick(rng: np.random.Generator, eligible: np.ndarray, share: float) -> np.ndarray:
    """A sorted sample of about `share` of the eligible indices, at least one."""
    count = min(len(eligible), max(1, round(share * len(eligible))))
    return np.sort(rng.choice(eligible, size=count, replace=False))


def _arrival_days(rng: np.random.Generator, n: int) -> np.ndarray:
    late = round(LATE_ARRIVAL_SHARE * n)
    days = np.zeros(n, dtype=np.int64)
    days[n - late :] = np.sort(rng.integers(1, ARRIVAL_DAYS + 1, size=late))
    return days


# --- users -------------------------------------------------------------------------------------


def _draw_devices(rng: np.random.Generator, users: pd.DataFrame) -> np.ndarray:
    ios = IOS_SHARE_BY_POWER[pd.Categorical(users["purchase_power"], PURCHASE_POWERS).codes]
    probs = np.column_stack([ios, 1.0 - ios - PC_SHARE, np.full(len(ios), PC_SHARE)])
    return np.array(DEVICES)[_draw_rows(rng, probs)]


def _draw_interests(rng: np.random.Generator, users: pd.DataFrame) -> list[tuple[str, ...]]:
    """1-3 distinct categories per user, tilted by who they are (Gumbel top-k without replacement)."""
    weights = np.tile([CATEGORY_APPEAL[c] for c in CATEGORIES], (len(users), 1))
    for category, attribute, values, factor in INTEREST_TILTS:
        weights[users[attribute].isin(values).to_numpy(), CATEGORIES.index(category)] *= factor
    ranked = np.argsort(-(np.log(weights) + rng.gumbel(size=weights.shape)), axis=1)
    counts = rng.choice([1, 2, 3], size=len(users), p=INTEREST_COUNT_SHARES)
    return [tuple(CATEGORIES[c] for c in sorted(row[:k])) for row, k in zip(ranked, counts, strict=True)]


def _draw_users(rng: np.random.Generator, n: int) -> pd.DataFrame:
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_SHARES)
    tier = rng.choice(len(CITY_TIERS), size=n, p=CITY_TIER_SHARES)
    occupation = _draw_rows(rng, OCCUPATION_BY_AGE[age])
    wealth = WEALTH_BY_TIER[tier] + WEALTH_BY_OCCUPATION[occupation] + rng.normal(size=n)
    users = pd.DataFrame(
        {
            "user_id": [f"u{i:06d}" for i in range(1, n + 1)],
            "age_band": np.array(AGE_BANDS)[age],
            "gender": np.array(GENDERS)[rng.choice(len(GENDERS), size=n, p=GENDER_SHARES)],
            "city_tier": np.array(CITY_TIERS)[tier],
            "purchase_power": np.array(PURCHASE_POWERS)[np.digitize(wealth, WEALTH_CUTS)],
            "occupation": np.array(OCCUPATIONS)[occupation],
        }
    )
    users["device"] = _draw_devices(rng, users)
    users["interests"] = _draw_interests(rng, users)
    users["since"] = _arrival_days(rng, n)
    return users


def _segment_table(users: pd.DataFrame) -> np.ndarray:
    """segment[u, c]: the index of user u's segment for category c (first matching rule wins)."""
    table = np.full((len(users), len(CATEGORIES)), -1, dtype=np.int8)
    for c, category in enumerate(CATEGORIES):
        for s, segment in enumerate(SEGMENTS[category]):
            match = np.ones(len(users), dtype=bool)
            for attribute, values in segment.when.items():
                match &= users[attribute].isin(values).to_numpy()
            table[(table[:, c] < 0) & match, c] = s
    return table


# --- products and creatives --------------------------------------------------------------------


PRICE_BAND_SHARES = (0.4, 0.4, 0.2)


def _draw_titles(rng: np.random.Generator, products: pd.DataFrame) -> list[str]:
    return [" ".join(str(rng.choice(words)) for words in TITLE_WORDS[category]) for category in products["category"]]


def _draw_price_bands(rng: np.random.Generator, products: pd.DataFrame) -> np.ndarray:
    return np.array(PRICE_BANDS)[rng.choice(len(PRICE_BANDS), size=len(products), p=PRICE_BAND_SHARES)]


def _draw_products(rng: np.random.Generator, n: int) -> pd.DataFrame:
    since = _arrival_days(rng, n)
    initial = int((since == 0).sum())
    if initial < len(CATEGORIES):
        raise ValueError(f"a world needs at least {len(CATEGORIES)} products on its first day, got {initial}")
    # Every category is on sale from day one, in equal numbers; late arrivals are anything.
    category = np.concatenate(
        [
            rng.permutation(np.resize(np.arange(len(CATEGORIES)), initial)),
            rng.integers(0, len(CATEGORIES), size=n - initial),
        ]
    )
    products = pd.DataFrame({"product_id": [f"p{i:05d}" for i in range(1, n + 1)]})
    products["category"] = np.array(CATEGORIES)[category]
    products["title"] = _draw_titles(rng, products)
    products["price_band"] = _draw_price_bands(rng, products)
    products["since"] = since
    return products[["product_id", "title", "category", "price_band", "since"]]


# Values per style attribute; vocab gives every attribute the same number.
STYLE_OPTIONS = len(STYLE_VALUES[STYLE_ATTRIBUTES[0]])


def _draw_creative_styles(rng: np.random.Generator, products: int, per_product: int) -> np.ndarray:
    """style[k, a]: value index of attribute a in creative k; a product's creatives are distinct."""
    combos = STYLE_OPTIONS ** len(STYLE_ATTRIBUTES)
    drawn = np.stack([rng.choice(combos, size=per_product, replace=False) for _ in range(products)]).ravel()
    digits = STYLE_OPTIONS ** np.arange(len(STYLE_ATTRIBUTES))[::-1]
    return (drawn[:, None] // digits) % STYLE_OPTIONS


def _creatives(products: pd.DataFrame, styles: np.ndarray) -> pd.DataFrame:
    per_product = len(styles) // len(products)
    prompts = [
        compose_prompt({a: STYLE_VALUES[a][v] for a, v in zip(STYLE_ATTRIBUTES, row, strict=True)}) for row in styles
    ]
    return pd.DataFrame(
        {
            "creative_id": [f"c{i:06d}" for i in range(1, len(styles) + 1)],
            "product_id": np.repeat(products["product_id"].to_numpy(), per_product),
            "prompt": prompts,
            "since": np.repeat(products["since"].to_numpy(), per_product),
        }
    )


# --- day-to-day changes ------------------------------------------------------------------------

Redraw = Callable[[np.random.Generator, pd.DataFrame], Sequence]


@dataclass(frozen=True)
class Evolution:
    """How a table's mutable columns change: each later day, `share` of the rows that already
    existed get a new value in one of the `redraws` columns."""

    stream: Stream
    share: float
    redraws: Mapping[str, Redraw]


# Only attributes the click model never reads may change, so the oracle holds on every day.
USER_EVOLUTION = Evolution(Stream.USER_CHANGES, 0.01, {"device": _draw_devices, "interests": _draw_interests})
PRODUCT_EVOLUTION = Evolution(Stream.PRODUCT_CHANGES, 0.05, {"title": _draw_titles, "price_band": _draw_price_bands})


@dataclass(frozen=True)
class Change:
    """New values of one column for some rows (row positions in the World's table)."""

    column: str
    rows: np.ndarray
    values: Sequence


def _redraw_differently(rng: np.random.Generator, rows: pd.DataFrame, column: str, redraw: Redraw) -> list:
    """New values for `column`, each different from the row's current one: a change must show."""
    current = rows[column].tolist()
    values = list(redraw(rng, rows))
    same = [i for i, value in enumerate(values) if value == current[i]]
    while same:
        for i, value in zip(same, redraw(rng, rows.iloc[same]), strict=True):
            values[i] = value
        same = [i for i in same if values[i] == current[i]]
    return values


def _changes(rng: np.random.Generator, state: pd.DataFrame, day: int, evolution: Evolution) -> tuple[Change, ...]:
    """The changes made on `day` to rows that existed before it, given the table as of the day before."""
    picked = _pick(rng, state.index[state["since"] < day].to_numpy(), evolution.share)
    column_of = rng.integers(0, len(evolution.redraws), size=len(picked))
    changes = []
    for i, (column, redraw) in enumerate(evolution.redraws.items()):
        rows = picked[column_of == i]
        changes.append(Change(column, rows, _redraw_differently(rng, state.loc[rows], column, redraw)))
    return tuple(changes)


# --- the hidden click model, as arrays ---------------------------------------------------------


def _preferences(rng: np.random.Generator) -> np.ndarray:
    """pref[c, s, a, v]: log-odds that value v of style attribute a adds for segment s of category c."""
    pref = np.zeros((len(CATEGORIES), MAX_SEGMENTS, len(STYLE_ATTRIBUTES), STYLE_OPTIONS))
    for c, category in enumerate(CATEGORIES):
        for s, segment in enumerate(SEGMENTS[category]):
            taste = TASTES[segment.taste]
            for a, attribute in enumerate(STYLE_ATTRIBUTES):
                for v, value in enumerate(STYLE_VALUES[attribute]):
                    sign = (value in taste.likes) - (value in taste.dislikes)
                    pref[c, s, a, v] = TASTE_STRENGTH * sign + rng.normal(0.0, TASTE_JITTER)
    return pref


@dataclass(frozen=True)
class ClickModel:
    """The ground truth. Arrays are indexed by row position in the World's tables."""

    product_effect: np.ndarray  # per product
    propensity: np.ndarray  # per user, an index into PROPENSITY_LEVELS
    segment: np.ndarray  # [user, category] -> segment index
    preferences: np.ndarray  # [category, segment, style attribute, style value]
    product_category: np.ndarray  # per product, an index into CATEGORIES
    creative_style: np.ndarray  # [creative, style attribute] -> style value index

    @cached_property
    def creative_shift(self) -> np.ndarray:
        """shift[k, s]: the summed style preference of segment s for creative k's prompt."""
        per_product = len(self.creative_style) // len(self.product_effect)
        category = np.repeat(self.product_category, per_product)
        attributes = np.arange(self.creative_style.shape[1])
        picked = self.preferences[category[:, None], :, attributes[None, :], self.creative_style]
        return picked.sum(axis=1)

    def prompt_shift(self, category: int, values: Mapping[str, tuple[str, ...]]) -> np.ndarray:
        """shift[s]: what a prompt's style values (vocab.parse_prompt) add to each segment's logit;
        several values of one attribute count as their mean."""
        preferences = self.preferences[category]
        shift = np.zeros(MAX_SEGMENTS)
        for a, attribute in enumerate(STYLE_ATTRIBUTES):
            picked = [STYLE_VALUES[attribute].index(value) for value in values.get(attribute, ())]
            if picked:
                shift += preferences[:, a, picked].mean(axis=1)
        return shift

    def segments_of(self, user: np.ndarray, product: np.ndarray) -> np.ndarray:
        return self.segment[user, self.product_category[product]]

    def click_probability(
        self, user: np.ndarray, product: np.ndarray, creative: np.ndarray, position: np.ndarray
    ) -> np.ndarray:
        return self.probability(user, product, position, self.creative_shift[creative, self.segments_of(user, product)])

    def probability(self, user: np.ndarray, product: np.ndarray, position: np.ndarray, style: np.ndarray) -> np.ndarray:
        """Click probability of each impression whose background adds `style` to the user's logit."""
        logit = (
            INTERCEPT
            + self.product_effect[product]
            + POSITION_EFFECT[position - 1]
            + PROPENSITY_LEVELS[self.propensity[user]]
            + style
        )
        return 1.0 / (1.0 + np.exp(-logit))


# --- one day of traffic ------------------------------------------------------------------------


@dataclass(frozen=True)
class Impressions:
    """Simulated impressions, as row positions into the World's tables."""

    second: np.ndarray  # seconds after midnight UTC, ascending
    user: np.ndarray
    product: np.ndarray
    creative: np.ndarray
    position: np.ndarray  # 1 = top slot
    clicked: np.ndarray

    def __len__(self) -> int:
        return len(self.user)


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _diurnal_seconds(rng: np.random.Generator, n: int, window: tuple[float, float]) -> np.ndarray:
    """Sorted event times inside a quantile window of the day's traffic curve.

    File i of k covers the window (i/k, (i+1)/k): equal line counts per file, like a shipper that
    rotates by size, and busy hours squeezed into fewer files.
    """
    hour_cdf = np.concatenate([[0.0], _cdf(HOURLY_TRAFFIC)])
    quantiles = np.sort(rng.uniform(*window, size=n))
    return np.interp(quantiles, hour_cdf, np.arange(25) * 3600.0).astype(np.int64).clip(0, 86_399)


@dataclass(frozen=True)
class Traffic:
    """The logging policy of one day: who is online and which products they are shown."""

    world: World
    user_cdf: np.ndarray
    user_rows: np.ndarray
    interests: np.ndarray  # [user, 3] category indices, padded by repeating
    interest_counts: np.ndarray
    product_cdf: np.ndarray
    product_rows: np.ndarray
    category_cdfs: tuple[np.ndarray, ...]
    category_rows: tuple[np.ndarray, ...]

    def draw(self, n: int, rng: np.random.Generator, window: tuple[float, float] = (0.0, 1.0)) -> Impressions:
        model = self.world.click_model
        user = self.user_rows[np.searchsorted(self.user_cdf, rng.random(n))]
        # Any live product by popularity; then, for most impressions, one of a category the
        # user is interested in instead.
        product = self.product_rows[np.searchsorted(self.product_cdf, rng.random(n))]
        chosen = (rng.random(n) * self.interest_counts[user]).astype(np.int64)
        category = np.where(rng.random(n) < INTEREST_SHARE, self.interests[user, chosen], -1)
        draws = rng.random(n)
        for c, (cdf, rows) in enumerate(zip(self.category_cdfs, self.category_rows, strict=True)):
            hit = category == c
            product[hit] = rows[np.searchsorted(cdf, draws[hit])]
        per_product = self.world.scale.creatives_per_product
        creative = product * per_product + rng.integers(0, per_product, size=n)
        position = rng.integers(1, POSITIONS + 1, size=n)
        clicked = rng.random(n) < model.click_probability(user, product, creative, position)
        return Impressions(_diurnal_seconds(rng, n, window), user, product, creative, position, clicked)


# --- the world ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Everything the simulation knows. Tables hold every row ever, with the day (`since`, counted
    from the first landed day) it first appears; mutable attributes hold their day-0 values."""

    seed: int
    scale_name: str
    users: pd.DataFrame
    products: pd.DataFrame
    creatives: pd.DataFrame
    click_model: ClickModel
    user_activity: np.ndarray
    product_popularity: np.ndarray

    @property
    def scale(self) -> Scale:
        return SCALES[self.scale_name]

    def users_on(self, day: int) -> pd.DataFrame:
        """Users who exist on `day`, with every attribute change up to that day applied."""
        return self._evolve(self.users, day, USER_EVOLUTION)[0]

    def user_changes(self, day: int) -> tuple[Change, ...]:
        """The changes of existing users' device or interests made on `day`."""
        return self._evolve(self.users, day, USER_EVOLUTION)[1]

    def products_on(self, day: int) -> pd.DataFrame:
        return self._evolve(self.products, day, PRODUCT_EVOLUTION)[0]

    def product_changes(self, day: int) -> tuple[Change, ...]:
        """The changes of existing products' title or price band made on `day`."""
        return self._evolve(self.products, day, PRODUCT_EVOLUTION)[1]

    def _evolve(self, table: pd.DataFrame, day: int, evolution: Evolution) -> tuple[pd.DataFrame, tuple[Change, ...]]:
        """The table as of `day` and the changes made on that day, replaying every day before."""
        state = table[table["since"] <= day].copy()
        changes: tuple[Change, ...] = ()
        for later in range(1, day + 1):
            changes = _changes(rng_for(self.seed, self.scale_name, evolution.stream, later), state, later, evolution)
            for change in changes:
                state.loc[change.rows, change.column] = pd.Series(change.values, index=change.rows, dtype=object)
        return state, changes

    def traffic(self, day: int) -> Traffic:
        """The logging policy on `day`: users and products that exist by then, interests as of then."""
        users = self.users_on(day)
        user_rows = users.index.to_numpy()
        interests = np.zeros((len(users), 3), dtype=np.int64)
        counts = users["interests"].map(len).to_numpy()
        for k in range(3):
            # Pad short interest lists by repeating, so any index below the count is valid.
            interests[:, k] = [CATEGORIES.index(row[k % len(row)]) for row in users["interests"]]
        live = self.products["since"].to_numpy() <= day
        category = self.click_model.product_category
        by_category = [np.flatnonzero(live & (category == c)) for c in range(len(CATEGORIES))]
        product_rows = np.flatnonzero(live)
        return Traffic(
            world=self,
            user_cdf=_cdf(self.user_activity[user_rows]),
            user_rows=user_rows,
            interests=interests,
            interest_counts=counts,
            product_cdf=_cdf(self.product_popularity[product_rows]),
            product_rows=product_rows,
            category_cdfs=tuple(_cdf(self.product_popularity[rows]) for rows in by_category),
            category_rows=tuple(by_category),
        )

    def audience_weights(self, product: int) -> np.ndarray:
        """How often the logging policy shows product `product` to each user, up to a constant.

        Uses day-0 interests and treats every user and product as live: the audience a
        one-size-fits-all creative has to please on a typical day.
        """
        category = CATEGORIES[self.click_model.product_category[product]]
        category_popularity = self.product_popularity[self.products["category"].to_numpy() == category].sum()
        interested = self.users["interests"].map(lambda row: category in row).to_numpy()
        share = interested / self.users["interests"].map(len).to_numpy()
        per_user = INTEREST_SHARE * share / category_popularity + (1 - INTEREST_SHARE) / self.product_popularity.sum()
        weights = self.user_activity * per_user
        return weights / weights.sum()


def build_world(seed: int, scale: str) -> World:
    """The whole world for (seed, scale); the same arguments always give the same world."""
    if scale not in SCALES:
        raise ValueError(f"unknown synth scale '{scale}', expected one of {sorted(SCALES)}")
    size = SCALES[scale]
    rng = rng_for(seed, scale, Stream.WORLD)
    users = _draw_users(rng, size.users)
    products = _draw_products(rng, size.products)
    styles = _draw_creative_styles(rng, size.products, size.creatives_per_product)
    click_model = ClickModel(
        product_effect=rng.normal(0.0, PRODUCT_EFFECT_SD, size=size.products),
        propensity=rng.choice(len(PROPENSITY_LEVELS), size=size.users, p=PROPENSITY_SHARES),
        segment=_segment_table(users),
        preferences=_preferences(rng),
        product_category=pd.Categorical(products["category"], CATEGORIES).codes.astype(np.int64),
        creative_style=styles,
    )
    return World(
        seed=seed,
        scale_name=scale,
        users=users,
        products=products,
        creatives=_creatives(products, styles),
        click_model=click_model,
        user_activity=rng.lognormal(0.0, USER_ACTIVITY_SIGMA, size=size.users),
        product_popularity=rng.lognormal(0.0, PRODUCT_POPULARITY_SIGMA, size=size.products),
    )
