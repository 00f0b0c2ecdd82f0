"""Procedural ad backgrounds for any prompt: the pictures the tiny renderer learns to draw (docs/design.md#rendering).

Every style attribute a prompt names changes one visible property, so a renderer trained on these
pictures can be checked for following its prompt:

    tone      -> the palette every surface is painted from
    scene     -> the layout (horizon, walls and floor, buildings, tiles, trunks, a studio sweep)
    lighting  -> a brightness field (a spot, a sunset band, dim candlelight, neon edges)
    props     -> small shapes along the bottom and the sides, where the product leaves room
    style     -> a surface finish (gloss streaks, dots, grain, a grid, mottling)

An attribute the prompt does not name takes a neutral default; a phrase is found anywhere in free
text, as the oracle finds it. The same (prompt, seed, size) always paints the same pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from osmf_lib.synth.vocab import parse_prompt

RGB = tuple[int, int, int]
Palette = tuple[RGB, RGB, RGB]  # (main surface, second surface, light surface)

PALETTES: dict[str, Palette] = {
    "warm": ((226, 150, 60), (170, 90, 40), (250, 210, 140)),
    "cool": ((60, 110, 190), (30, 60, 120), (150, 195, 235)),
    "pastel": ((240, 185, 205), (185, 215, 240), (215, 240, 195)),
    "vivid": ((225, 30, 90), (20, 170, 80), (250, 205, 0)),
    "earthy": ((125, 105, 75), (85, 70, 50), (175, 155, 115)),
    "mono": ((45, 45, 45), (120, 120, 120), (215, 215, 215)),
}
NEUTRAL: Palette = ((190, 185, 175), (150, 145, 140), (225, 222, 215))

# Unit coordinates: x right, y down, both 0..1.
Painter = Callable[[ImageDraw.ImageDraw, int, Palette, np.random.Generator], None]


def _box(size: int, *unit: float) -> list[float]:
    return [value * size for value in unit]


def _living_room(draw: ImageDraw.ImageDraw, size: int, pal: Palette, rng: np.random.Generator) -> None:
    draw.rectangle(_box(size, 0, 0, 1, 0.68), fill=pal[0])
    draw.rectangle(_box(size, 0, 0.68, 1, 1), fill=pal[1])
    left = rng.uniform(0.02, 0.1)
    draw.rounded_rectangle(_box(size, left, 0.52, left + 0.22, 0.74), radius=size * 0.03, fill=pal[2])
    draw.rectangle(_box(size, 0.76, 0.12, 0.94, 0.36), fill=pal[2], outline=pal[1], width=max(1, size // 64))


def _beach(draw: ImageDraw.ImageDraw, size: int, pal: Palette, rng: np.random.Generator) -> None:
    horizon = rng.uniform(0.4, 0.5)
    draw.rectangle(_box(size, 0, 0, 1, horizon), fill=pal[2])
    draw.rectangle(_box(size, 0, horizon, 1, horizon + 0.16), fill=pal[0])
    draw.rectangle(_box(size, 0, horizon + 0.16, 1, 1), fill=pal[1])


def _city_street(draw: ImageDraw.ImageDraw, size: int, pal: Palette, rng: np.random.Generator) -> None:
    draw.rectangle(_box(size, 0, 0, 1, 1), fill=pal[2])
    x = 0.0
    while x < 1:
        width = rng.uniform(0.12, 0.22)
        draw.rectangle(_box(size, x, rng.uniform(0.05, 0.35), x + width, 0.8), fill=pal[int(x * 10) % 2])
        x += width + 0.02
    draw.rectangle(_box(size, 0, 0.8, 1, 1), fill=pal[1])


def _kitchen(draw: ImageDraw.ImageDraw, size: int, pal: Palette, rng: np.random.Generator) -> None:
    draw.rectangle(_box(size, 0, 0, 1, 0.6), fill=pal[2])
    step = 0.125
    for k in range(1, 8):
        draw.line(_box(size, k * step, 0, k * step, 0.6), fill=pal[1], width=max(1, size // 128))
        draw.line(_box(size, 0, k * step * 0.6, 1, k * step * 0.6), fill=pal[1], width=max(1, size // 128))
    draw.rectangle(_box(size, 0, 0.6, 1, 0.7), fill=pal[0])
    draw.rectangle(_box(size, 0, 0.7, 1, 1), fill=pal[1])


def _studio(draw: ImageDraw.ImageDraw, size: int, pal: Palette, rng: np.random.Generator) -> None:
    # A sweep: the light surface fading into the main one towards the floor.
    top, bottom = np.array(pal[2], float), np.array(pal[0], float)
    for row in range(size):
        t = max(0.0, (row / size - 0.55) / 0.45)
        draw.line([(0, row), (size, row)], fill=tuple(int(v) for v in top + t * (bottom - top)))


def _forest(draw: ImageDraw.ImageDraw, size: int, pal: Palette, rng: np.random.Generator) -> None:
    draw.rectangle(_box(size, 0, 0, 1, 1), fill=pal[2])
    for x in np.sort(rng.uniform(0, 1, 6)):
        draw.rectangle(_box(size, x, 0.2, x + 0.05, 1), fill=pal[1])
    for x in np.linspace(-0.1, 1, 5):
        draw.ellipse(_box(size, x, -0.15, x + 0.35, 0.3), fill=pal[0])


def _plain(draw: ImageDraw.ImageDraw, size: int, pal: Palette, rng: np.random.Generator) -> None:
    draw.rectangle(_box(size, 0, 0, 1, 0.6), fill=pal[0])
    draw.rectangle(_box(size, 0, 0.6, 1, 1), fill=pal[1])


SCENES: dict[str, Painter] = {
    "living_room": _living_room,
    "beach": _beach,
    "city_street": _city_street,
    "kitchen": _kitchen,
    "studio": _studio,
    "forest": _forest,
}


def _light(lighting: str | None, size: int) -> np.ndarray:
    """A (size, size, 1) brightness factor around 1, mild enough to leave the tone recognisable."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    spot = np.exp(-((x - 0.5) ** 2 + (y - 0.3) ** 2) / 0.08)
    field = {
        "morning": 1.08 - 0.16 * (x + y) / 2,
        "spotlight": 0.82 + 0.3 * spot,
        "daylight": np.full_like(x, 1.1),
        "sunset": 0.88 + 0.25 * np.exp(-((y - 0.55) ** 2) / 0.02),
        "neon": 0.85 + 0.35 * np.maximum(np.abs(x - 0.5), np.abs(y - 0.5)) ** 2 * 4,
        "candle": 0.88 + 0.25 * np.exp(-((x - 0.15) ** 2 + (y - 0.85) ** 2) / 0.03),
    }.get(lighting or "", np.ones_like(x))
    return field[..., None]


def _props(draw: ImageDraw.ImageDraw, size: int, props: str | None, rng: np.random.Generator) -> None:
    """Props along the bottom corners and the sides, where a centred product leaves room."""
    if props is None:
        return
    spots = [(rng.uniform(0.02, 0.14), rng.uniform(0.62, 0.8)), (rng.uniform(0.8, 0.9), rng.uniform(0.62, 0.8))]
    for x, y in spots:
        if props == "plants":
            draw.rectangle(_box(size, x + 0.02, y + 0.1, x + 0.08, y + 0.17), fill=(150, 80, 50))
            draw.polygon(_box(size, x, y + 0.11, x + 0.05, y - 0.04, x + 0.1, y + 0.11), fill=(40, 140, 60))
        elif props == "petals":
            for _ in range(4):
                px, py = x + rng.uniform(0, 0.1), y + rng.uniform(0, 0.15)
                draw.ellipse(_box(size, px, py, px + 0.035, py + 0.02), fill=(200, 20, 50))
        elif props == "podiums":
            draw.rectangle(_box(size, x, y + 0.04, x + 0.1, y + 0.18), fill=(235, 235, 235), outline=(90, 90, 90))
        elif props == "gifts":
            draw.rectangle(_box(size, x, y + 0.06, x + 0.1, y + 0.16), fill=(200, 30, 40))
            draw.rectangle(_box(size, x + 0.04, y + 0.06, x + 0.06, y + 0.16), fill=(250, 215, 60))
        elif props == "fruit":
            for k in range(2):
                draw.ellipse(_box(size, x + k * 0.05, y + 0.08, x + k * 0.05 + 0.06, y + 0.14), fill=(240, 120, 20))
        elif props == "splashes":
            box = _box(size, x - 0.02, y, x + 0.12, y + 0.14)
            draw.arc(box, 180, 360, fill=(90, 170, 240), width=max(1, size // 40))


def _finish(pixels: np.ndarray, style: str | None, rng: np.random.Generator) -> np.ndarray:
    size = pixels.shape[0]
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if style == "luxury":  # diagonal gloss streaks
        pixels = pixels + 45 * (np.sin((x + y) * 18) > 0.92)[..., None]
    elif style == "playful":  # polka dots
        pixels = pixels + 35 * ((np.sin(x * 40) * np.sin(y * 40)) > 0.8)[..., None]
    elif style == "vintage":  # faded towards sepia, with grain
        sepia = pixels.mean(axis=2, keepdims=True) * np.array([1.07, 0.95, 0.78])
        pixels = 0.85 * pixels + 0.15 * sepia + rng.normal(0, 6, pixels.shape[:2])[..., None]
    elif style == "futuristic":  # a thin cyan grid
        grid = ((x * 12) % 1 < 0.06) | ((y * 12) % 1 < 0.06)
        pixels = np.where(grid[..., None], 0.6 * pixels + 0.4 * np.array([0, 230, 230]), pixels)
    elif style == "natural":  # soft mottling
        mottle = rng.normal(0, 1, (max(size // 8, 1),) * 2)
        big = np.kron(mottle, np.ones((8, 8)))[:size, :size]
        pixels = pixels * (1 + 0.06 * big[..., None])
    return pixels


def _seed(prompt: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def paint_background(prompt: str, size: int = 64, seed: int = 0) -> Image.Image:
    """The RGB background a prompt describes; the first value named wins where it names several."""
    values = {attribute: found[0] for attribute, found in parse_prompt(prompt).items()}
    rng = _seed(prompt, seed)
    palette = PALETTES.get(values.get("tone", ""), NEUTRAL)
    canvas = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(canvas)
    SCENES.get(values.get("scene", ""), _plain)(draw, size, palette, rng)
    _props(draw, size, values.get("props"), rng)
    pixels = np.asarray(canvas.filter(ImageFilter.GaussianBlur(size / 256)), dtype=np.float64)
    pixels = _finish(pixels * _light(values.get("lighting"), size), values.get("style"), rng)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def nearest_tone(image: Image.Image, mask: np.ndarray | None = None) -> str:
    """The tone whose palette colours most pixels are nearest to (only pixels where mask is True)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    if mask is not None:
        pixels = pixels[np.asarray(mask).reshape(-1)]
    names = list(PALETTES)
    colours = np.array([colour for name in names for colour in PALETTES[name]], dtype=np.float64)
    nearest = ((pixels[:, None, :] - colours[None]) ** 2).sum(-1).argmin(1) // 3
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]
