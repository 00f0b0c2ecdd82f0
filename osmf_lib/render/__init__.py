"""Creative rendering (docs/design.md#rendering): the product placed on a canvas, a background painted around it
by a ControlNet-inpainting diffusion pipeline, the product's own pixels laid back on top."""

from __future__ import annotations

from datetime import date

from osmf_lib import artifacts
from osmf_lib.config import Config

CONTACT_SHEET = "contact-sheet.png"


def product_folder(cfg: Config, ds: date, product_id: str) -> str:
    """Where a night's images of a product go: `{group_id}/{candidate}.png` and the contact sheet."""
    return artifacts.join(cfg.render.artifacts, ds.isoformat(), product_id)
