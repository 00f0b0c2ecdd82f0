"""Procedural product cut-outs: an RGBA PNG per product, its shape telling the category apart.

Rendering (docs/design.md#rendering) pastes these onto generated backgrounds, so what matters is a clean
alpha channel (transparent background, soft edges) and a recognisable silhouette; the
image encoder of PAAG and the GRM gets a visual signal that agrees with the category.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
IMAGE_SIZE = 256
SUPERSAMPLE = 2  # drawn at twice the size and scaled down, for anti-aliased edges
MAX_TILT_DEGREES = 12.0


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(np.clip(channel * factor, 0, 255)) for channel in colour)  # type: ignore[return-value]


@dataclass(frozen=True)
class Pen:
    """Draws in unit coordinates (0..1 across the canvas), outlining shapes a shade darker."""

    draw: ImageDraw.ImageDraw
    size: int

    def _xy(self, points: Sequence[float]) -> list[float]:
        return [value * self.size for value in points]

    def _outline(self, fill: RGB) -> dict:
        return {"fill": fill, "outline": _shade(fill, 0.6), "width": max(1, self.size // 128)}

    def rect(self, box: Sequence[float], fill: RGB, radius: float = 0.0) -> None:
        self.draw.rounded_rectangle(self._xy(box), radius=radius * self.size, **self._outline(fill))

    def ellipse(self, box: Sequence[float], fill: RGB) -> None:
        self.draw.ellipse(self._xy(box), **self._outline(fill))

    def polygon(self, points: Sequence[float], fill: RGB) -> None:
        self.draw.polygon(self._xy(points), **self._outline(fill))

    def arc(self, box: Sequence[float], start: float, end: float, fill: RGB) -> None:
        self.draw.arc(self._xy(box), start, end, fill=fill, width=max(2, self.size // 60))


CREAM: RGB = (245, 238, 220)
INK: RGB = (35, 35, 40)
GOLD: RGB = (212, 175, 55)


def _lipstick(pen: Pen, main: RGB, accent: RGB) -> None:
    pen.polygon((0.41, 0.5, 0.41, 0.3, 0.59, 0.18, 0.59, 0.5), main)
    pen.rect((0.38, 0.48, 0.62, 0.58), _shade(accent, 1.15), radius=0.01)
    pen.rect((0.36, 0.56, 0.64, 0.88), accent, radius=0.03)


def _phone(pen: Pen, main: RGB, accent: RGB) -> None:
    pen.rect((0.33, 0.08, 0.67, 0.92), accent, radius=0.06)
    pen.rect((0.36, 0.14, 0.64, 0.84), main, radius=0.02)
    pen.ellipse((0.48, 0.865, 0.52, 0.905), _shade(accent, 1.8))


def _ball(pen: Pen, main: RGB, accent: RGB) -> None:
    pen.ellipse((0.14, 0.14, 0.86, 0.86), main)
    pen.arc((0.02, 0.2, 0.5, 0.8), -60, 60, accent)
    pen.arc((0.5, 0.2, 0.98, 0.8), 120, 240, accent)
    pen.arc((0.14, 0.44, 0.86, 1.1), 200, 340, accent)


def _lamp(pen: Pen, main: RGB, accent: RGB) -> None:
    pen.rect((0.475, 0.4, 0.525, 0.8), accent)
    pen.ellipse((0.33, 0.76, 0.67, 0.88), accent)
    pen.polygon((0.27, 0.44, 0.37, 0.12, 0.63, 0.12, 0.73, 0.44), main)


def _jar(pen: Pen, main: RGB, accent: RGB) -> None:
    pen.rect((0.2, 0.36, 0.8, 0.86), main, radius=0.14)
    pen.rect((0.3, 0.25, 0.7, 0.38), accent, radius=0.02)
    pen.rect((0.2, 0.52, 0.8, 0.7), CREAM)


def _shirt(pen: Pen, main: RGB, accent: RGB) -> None:
    outline = (
        0.38,
        0.14,
        0.44,
        0.14,
        0.5,
        0.2,
        0.56,
        0.14,
        0.62,
        0.14,
        0.84,
        0.3,
        0.75,
        0.43,
        0.67,
        0.37,
        0.67,
        0.87,
        0.33,
        0.87,
        0.33,
        0.37,
        0.25,
        0.43,
        0.16,
        0.3,
    )
    pen.polygon(outline, main)
    pen.rect((0.33, 0.62, 0.67, 0.67), accent)


def _teddy(pen: Pen, main: RGB, accent: RGB) -> None:
    for ear in ((0.27, 0.1, 0.41, 0.24), (0.59, 0.1, 0.73, 0.24)):
        pen.ellipse(ear, main)
    pen.ellipse((0.26, 0.46, 0.74, 0.9), main)
    pen.ellipse((0.3, 0.14, 0.7, 0.52), main)
    pen.ellipse((0.42, 0.34, 0.58, 0.48), accent)
    for eye in ((0.4, 0.26, 0.44, 0.3), (0.56, 0.26, 0.6, 0.3)):
        pen.ellipse(eye, INK)


def _book(pen: Pen, main: RGB, accent: RGB) -> None:
    pen.rect((0.3, 0.16, 0.74, 0.86), CREAM)
    pen.rect((0.26, 0.13, 0.7, 0.87), main, radius=0.01)
    pen.rect((0.26, 0.13, 0.32, 0.87), _shade(main, 0.75))
    pen.rect((0.38, 0.3, 0.64, 0.38), accent)


@dataclass(frozen=True)
class Look:
    draw: Callable[[Pen, RGB, RGB], None]
    palette: tuple[RGB, ...]
    accent: RGB


LOOKS: dict[str, Look] = {
    "cosmetics": Look(_lipstick, ((200, 30, 60), (230, 90, 140), (240, 110, 90)), GOLD),
    "electronics": Look(_phone, ((40, 120, 220), (30, 170, 170), (120, 80, 200)), (45, 45, 52)),
    "sports": Look(_ball, ((240, 120, 30), (60, 170, 70), (240, 210, 40)), INK),
    "home": Look(_lamp, ((240, 225, 190), (150, 180, 140), (200, 110, 80)), (180, 140, 70)),
    "food": Look(_jar, ((220, 140, 40), (150, 40, 80), (120, 140, 40)), (70, 70, 70)),
    "fashion": Look(_shirt, ((30, 50, 110), (220, 170, 40), (40, 110, 70), (190, 40, 40)), CREAM),
    "toys": Look(_teddy, ((160, 110, 60), (210, 160, 80), (230, 150, 170)), CREAM),
    "books": Look(_book, ((120, 30, 40), (30, 50, 100), (40, 90, 60)), GOLD),
}


def product_image(category: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """The category's silhouette in one of its colours, a little lighter or darker, a little tilted."""
    look = LOOKS[category]
    main = _shade(look.palette[rng.integers(len(look.palette))], rng.uniform(0.85, 1.15))
    canvas = Image.new("RGBA", (size * SUPERSAMPLE, size * SUPERSAMPLE), (0, 0, 0, 0))
    look.draw(Pen(ImageDraw.Draw(canvas), size * SUPERSAMPLE), main, look.accent)
    small = canvas.reduce(SUPERSAMPLE)  # a box filter: each pixel averages its 2x2 block
    return small.rotate(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES), resample=Image.Resampling.BILINEAR)


def product_png(category: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> bytes:
    buffer = io.BytesIO()
    product_image(category, rng, size).save(buffer, format="PNG")
    return buffer.getvalue()
