"""Images from outside: where they may come from, and how much of one is read.

A product's `image_uri` arrives in a landing file, so it is data, never an address to trust:
ingest refuses one outside `images.roots` (by default the landing's `images/` and the render
artifacts, where the served creatives' images are), and every reader refuses other schemes and
`..`, stops at `images.max_bytes` read and at `images.max_pixels` decoded. A file that never ends,
a small PNG that decodes to gigabytes or a truncated one is then an unreadable image, which
`models.unreadable_image` decides about, not a job that hangs or dies.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import fsspec
from PIL import Image

from osmf_lib import artifacts

if TYPE_CHECKING:
    from osmf_lib.config import Config

# A local file or an object store's; nothing that leaves for a web server or a metadata service.
SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "abfs", "abfss"})
# Spark names a bucket s3a:// where fsspec names it s3://: one place, one spelling to compare.
_SAME_STORE = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")


class ImageError(ValueError):
    """An image that is refused or cannot be read within the limits."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int

    @classmethod
    def of(cls, cfg: Config) -> ImageLimits:
        return cls(cfg.images.max_bytes, cfg.images.max_pixels)


def roots(cfg: Config) -> tuple[str, ...]:
    """Where images may come from: `images.roots`, by default the landing's images/ and the
    render artifacts (generated creatives come back through the creatives file)."""
    configured = cfg.images.roots
    if configured is None:
        configured = [artifacts.join(cfg.lakehouse.landing, "images"), cfg.render.artifacts]
    return tuple(_comparable(root).rstrip("/") + "/" for root in configured)


def _comparable(uri: str) -> str:
    found = _SCHEME.match(uri)
    if found is None:
        return uri
    scheme = found.group(1).lower()
    if scheme == "file":
        return uri[len(found.group(0)) :]
    return f"{_SAME_STORE.get(scheme, scheme)}://{uri[len(found.group(0)) :]}"


def refusal(uri: str, allowed: Sequence[str] = ()) -> str | None:
    """Why an image URI is not to be read, or None. Refused everywhere: a control character, a
    scheme outside SCHEMES, a '.' or '..' segment; and, given `allowed` (see `roots`), a place
    under none of them (a relative path included)."""
    if any(unicodedata.category(c) == "Cc" for c in uri):
        return "a control character"
    found = _SCHEME.match(uri)
    if found and found.group(1).lower() not in SCHEMES:
        return f"scheme {found.group(1)}:// (images come from {', '.join(sorted(SCHEMES))})"
    place = _comparable(uri)
    if {".", ".."} & set(place.split("/")):
        return "a '.' or '..' segment"
    if allowed and not any(place.startswith(root) for root in allowed):
        return f"outside images.roots ({', '.join(allowed)})"
    return None


def read_image(uri: str, limits: ImageLimits) -> Image.Image:
    """The decoded image at `uri`; ImageError when it is refused, larger than the limits, or not a
    whole image."""
    why = refusal(uri)
    if why:
        raise ImageError(f"{uri}: refused: {why}")
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        with fs.open(path, "rb") as stream:
            data = stream.read(limits.max_bytes + 1)
    except (OSError, ValueError) as err:
        raise ImageError(f"{uri}: {err}") from err
    if len(data) > limits.max_bytes:
        raise ImageError(f"{uri}: larger than images.max_bytes={limits.max_bytes:,}")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageError(f"{uri}: {width}x{height} is more than images.max_pixels={limits.max_pixels:,}")
        image.load()
    except (Image.DecompressionBombError, OSError, SyntaxError) as err:
        # Pillow's own bomb check, a truncated file (OSError) and a malformed header (SyntaxError).
        raise ImageError(f"{uri}: {err}") from err
    return image
