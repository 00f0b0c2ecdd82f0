"""The words of the simulated world: user attribute values, product categories and titles, and
the style phrases that background prompts are made of.

Everything here is public knowledge: an analyst sees these values in the dimension tables and a
model sees them in prompts. What the values *mean* for clicks is hidden in `world.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
GENDERS = ("female", "male")
CITY_TIERS = ("tier-1", "tier-2", "tier-3", "tier-4")
PURCHASE_POWERS = ("low", "medium", "high")
OCCUPATIONS = ("student", "office_worker", "engineer", "service_worker", "self_employed", "retired")
DEVICES = ("ios", "android", "pc")

ATTRIBUTE_VALUES: Mapping[str, tuple[str, ...]] = {
    "age_band": AGE_BANDS,
    "gender": GENDERS,
    "city_tier": CITY_TIERS,
    "purchase_power": PURCHASE_POWERS,
    "occupation": OCCUPATIONS,
    "device": DEVICES,
}

CATEGORIES = ("cosmetics", "electronics", "sports", "home", "food", "fashion", "toys", "books")
PRICE_BANDS = ("budget", "mid-range", "premium")

# A title is "<brand> <adjective> <noun>", each word drawn from its category's lists.
TITLE_WORDS: Mapping[str, tuple[Sequence[str], Sequence[str], Sequence[str]]] = {
    "cosmetics": (
        ("Lumière", "Velvia", "Rosée", "Aurelle"),
        ("Hydrating", "Velvet", "Radiant", "Matte", "Silk"),
        ("Lipstick", "Face Serum", "Eye Palette", "Night Cream", "Perfume"),
    ),
    "electronics": (
        ("Voltix", "Nexa", "Orbit", "Quanta"),
        ("Wireless", "Smart", "Ultra-Slim", "Noise-Cancelling", "Fast-Charging"),
        ("Earbuds", "Smartphone", "Smartwatch", "Tablet", "Power Bank"),
    ),
    "sports": (
        ("Stride", "Apex", "Kinetic", "Summit"),
        ("Lightweight", "Pro", "All-Weather", "Breathable", "Grip"),
        ("Football", "Yoga Mat", "Running Shoes", "Basketball", "Dumbbell Set"),
    ),
    "home": (
        ("Hearth", "Nordhus", "Casa Lume", "Willow"),
        ("Ceramic", "Oak", "Linen", "Scandinavian", "Handmade"),
        ("Table Lamp", "Vase", "Throw Blanket", "Scented Candle", "Cushion"),
    ),
    "food": (
        ("Harvest", "Golden Spoon", "Orchard", "Mamma Rosa"),
        ("Organic", "Wild", "Roasted", "Honey-Glazed", "Spicy"),
        ("Granola", "Coffee Beans", "Fruit Jam", "Green Tea", "Olive Oil"),
    ),
    "fashion": (
        ("Maison Ivy", "Urbane", "Coastline", "Noir & Co"),
        ("Oversized", "Tailored", "Cotton", "Cashmere", "Denim"),
        ("T-Shirt", "Jacket", "Handbag", "Sneakers", "Scarf"),
    ),
    "toys": (
        ("Tumble", "Brightblock", "Whizz", "Puddle & Pip"),
        ("Cuddly", "Wooden", "Remote-Control", "Musical", "Glow-in-the-Dark"),
        ("Teddy Bear", "Building Blocks", "Race Car", "Puzzle", "Dinosaur"),
    ),
    "books": (
        ("Inkwell", "Lantern Press", "Northwind", "Paperleaf"),
        ("Illustrated", "Bestselling", "Collector's", "Pocket", "Hardcover"),
        ("Cookbook", "Mystery Novel", "Travel Guide", "Poetry Collection", "Science Primer"),
    ),
}

# Background prompts combine one phrase per style attribute, in this order. Every attribute has
# the same number of values so the hidden preferences fit one array; no phrase contains another,
# so the oracle can find them in free text.
STYLE: Mapping[str, Mapping[str, str]] = {
    "scene": {
        "living_room": "a cozy living room scene",
        "beach": "a sunlit beach scene",
        "city_street": "a busy city street scene",
        "kitchen": "a rustic kitchen scene",
        "studio": "a clean white studio scene",
        "forest": "a misty forest scene",
    },
    "tone": {
        "warm": "warm golden tones",
        "cool": "cool blue tones",
        "pastel": "soft pastel tones",
        "vivid": "vivid saturated colours",
        "earthy": "muted earthy tones",
        "mono": "black and white tones",
    },
    "style": {
        "minimalist": "minimalist style",
        "luxury": "luxurious glossy style",
        "playful": "playful cartoon style",
        "vintage": "vintage film style",
        "futuristic": "futuristic tech style",
        "natural": "natural organic style",
    },
    "lighting": {
        "morning": "soft morning light",
        "spotlight": "dramatic spotlight",
        "daylight": "bright daylight",
        "sunset": "warm sunset glow",
        "neon": "neon glow",
        "candle": "flickering candlelight",
    },
    "props": {
        "plants": "with potted plants",
        "petals": "with scattered rose petals",
        "podiums": "with geometric podiums",
        "gifts": "with gift boxes and ribbons",
        "fruit": "with fresh fruit",
        "splashes": "with water splashes",
    },
}
STYLE_ATTRIBUTES = tuple(STYLE)
STYLE_VALUES: Mapping[str, tuple[str, ...]] = {attribute: tuple(values) for attribute, values in STYLE.items()}


def compose_prompt(values: Mapping[str, str]) -> str:
    """Join the phrases of the given style values in the canonical attribute order.

    An attribute left out of `values` is simply not mentioned, which is how the oracle's best
    prompt says "no opinion beats every option here".
    """
    return ", ".join(STYLE[attribute][values[attribute]] for attribute in STYLE_ATTRIBUTES if attribute in values)


def parse_prompt(text: str) -> dict[str, tuple[str, ...]]:
    """The style values a prompt mentions, per attribute (attributes it does not mention are absent)."""
    normalised = re.sub(r"\s+", " ", text.lower())
    found = {
        attribute: tuple(value for value, phrase in phrases.items() if phrase in normalised)
        for attribute, phrases in STYLE.items()
    }
    return {attribute: values for attribute, values in found.items() if values}
