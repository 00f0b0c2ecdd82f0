"""Placement: the product untouched, the mask and the control image as docs/design.md#rendering specifies."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from osmf_lib.render.placement import canny, composite, control_image, inpaint_mask, place


def _cut_out(width: int = 40, height: int = 80) -> Image.Image:
    """An opaque two-tone rectangle with a soft (half-transparent) border, in a transparent frame."""
    rgba = np.zeros((100, 60, 4), dtype=np.uint8)
    top, left = (100 - height) // 2, (60 - width) // 2
    rgba[top : top + height, left : left + width] = (200, 40, 40, 128)
    rgba[top + 1 : top + height - 1, left + 1 : left + width - 1] = (200, 40, 40, 255)
    rgba[top + height // 2 : top + height - 1, left + 1 : left + width - 1, :3] = (30, 30, 200)
    return Image.fromarray(rgba)


def test_the_product_is_scaled_to_its_share_of_the_canvas_and_centred():
    placed = place(_cut_out(), 128, 0.78)
    assert placed.size == (128, 128) and placed.mode == "RGBA"
    ys, xs = np.nonzero(np.asarray(placed)[..., 3])
    # The cut-out's frame is 100 px high: its longer side becomes 0.78 x 128 = 100 px.
    assert abs((ys.min() + ys.max()) / 2 - 63.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 63.5) <= 1
    assert ys.max() - ys.min() + 1 == pytest.approx(80 * 100 / 100, abs=2)


def test_the_mask_repaints_everything_but_the_opaque_product_and_reaches_under_its_edge():
    placed = place(_cut_out(), 128, 0.78)
    alpha = np.asarray(placed)[..., 3]
    tight = np.asarray(inpaint_mask(placed, 0)) == 255
    assert np.array_equal(tight, alpha < 255)
    grown = np.asarray(inpaint_mask(placed, 3)) == 255
    assert grown[tight].all() and grown.sum() > tight.sum()
    # Dilated by 3: the repainted band reaches 3 px into the opaque product, not 4.
    opaque_rows = np.nonzero((alpha == 255).any(axis=1))[0]
    middle = opaque_rows[len(opaque_rows) // 2]
    inside = np.nonzero(alpha[middle] == 255)[0]
    assert grown[middle, inside[0] + 2] and not grown[middle, inside[0] + 3]


def test_the_control_image_draws_the_products_edges_and_nothing_outside_it():
    placed = place(_cut_out(), 128, 0.78)
    control = np.asarray(control_image(placed))
    assert control.shape == (128, 128, 3)
    edges = control[..., 0] == 255
    alpha = np.asarray(placed)[..., 3] > 0
    # Every edge lies on the product or within the blur's reach of its outline ...
    assert edges.any() and not (edges & ~ndimage.binary_dilation(alpha, iterations=2)).any()
    # ... and the boundary between its two colours, well inside the outline, is drawn too.
    rows = np.nonzero(alpha.any(axis=1))[0]
    middle = (rows.min() + rows.max()) // 2
    inner = ndimage.binary_erosion(alpha, iterations=4)
    assert (edges & inner)[middle - 2 : middle + 3].any()


def test_canny_finds_a_step_and_nothing_in_a_flat_image():
    flat = np.full((32, 32), 0.5)
    assert not canny(flat).any()
    step = np.zeros((32, 32))
    step[:, 16:] = 1.0
    found = canny(step)
    assert found[:, 14:18].any(axis=1).all() and not found[:, :10].any() and not found[:, 22:].any()


def test_compositing_restores_every_opaque_product_pixel_exactly():
    placed = place(_cut_out(), 128, 0.78)
    rendered = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    out = np.asarray(composite(rendered, placed))
    product = np.asarray(placed)
    opaque = product[..., 3] == 255
    assert np.array_equal(out[opaque], product[..., :3][opaque])
    clear = product[..., 3] == 0
    assert np.array_equal(out[clear], np.asarray(rendered)[clear])
