"""Where the product goes and what the renderer may touch (docs/design.md#rendering).

    placed = place(cut_out, size, scale)     the RGBA cut-out scaled and centred on a transparent canvas
    control_image(placed)                    canny edges of the product only: what ControlNet follows
    inpaint_mask(placed, dilation)           white = repaint, black = keep
    composite(rendered, placed)              the product's own pixels back over the rendered image

The mask is the inverted alpha, dilated so the repainted area reaches under the product's soft
edge; compositing afterwards in pixel space restores every product pixel exactly, which the VAE's
round trip would not.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

OPAQUE = 255


def place(cut_out: Image.Image, size: int, scale: float) -> Image.Image:
    """The cut-out with its longer side at `scale` of a size x size transparent canvas, centred."""
    product = cut_out.convert("RGBA")
    longer = max(product.size)
    target = max(1, round(size * scale))
    width, height = (max(1, round(side * target / longer)) for side in product.size)
    product = product.resize((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.alpha_composite(product, ((size - width) // 2, (size - height) // 2))
    return canvas


def _alpha(placed: Image.Image) -> np.ndarray:
    return np.asarray(placed.getchannel("A"))


def inpaint_mask(placed: Image.Image, dilation: int) -> Image.Image:
    """L image: white (repaint) wherever the product is not fully opaque, grown by `dilation` pixels."""
    repaint = _alpha(placed) < OPAQUE
    if dilation:
        repaint = ndimage.binary_dilation(repaint, iterations=dilation)
    return Image.fromarray(np.where(repaint, 255, 0).astype(np.uint8), mode="L")


def canny(gray: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """Canny edges of a 0..1 image (Gaussian blur, Sobel, non-maximum suppression, hysteresis);
    thresholds are fractions of the strongest gradient."""
    smooth = ndimage.gaussian_filter(gray.astype(np.float64), sigma)
    gx, gy = ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=0)
    magnitude = np.hypot(gx, gy)
    if magnitude.max() == 0:
        return np.zeros(gray.shape, dtype=bool)
    magnitude /= magnitude.max()
    # Keep a pixel only where it is the maximum along its gradient direction (4 directions).
    direction = (np.round(np.arctan2(gy, gx) / (np.pi / 4)) % 4).astype(int)
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    padded = np.pad(magnitude, 1)
    rows, cols = np.indices(magnitude.shape) + 1
    thin = np.zeros_like(magnitude)
    for k, (dy, dx) in steps.items():
        here = direction == k
        ahead = padded[rows + dy, cols + dx]
        behind = padded[rows - dy, cols - dx]
        keep = here & (magnitude >= ahead) & (magnitude >= behind)
        thin[keep] = magnitude[keep]
    strong, weak = thin >= high, thin >= low
    # Hysteresis: a weak edge survives when it touches a strong one.
    labels, _ = ndimage.label(weak, structure=np.ones((3, 3)))
    return np.isin(labels, np.unique(labels[strong & (labels > 0)]))


def control_image(placed: Image.Image) -> Image.Image:
    """RGB: white canny edges of the product (its outline and inner lines) on black; the background
    is blacked out first, so nothing outside the product draws an edge."""
    rgba = np.asarray(placed, dtype=np.float64) / 255.0
    alpha = rgba[..., 3]
    gray = (rgba[..., :3] @ np.array([0.299, 0.587, 0.114])) * alpha
    # The silhouette itself as well: a product as dark as the blacked-out background keeps its outline.
    edges = canny(gray) | canny(alpha)
    return Image.fromarray(np.repeat(np.where(edges, 255, 0).astype(np.uint8)[..., None], 3, axis=2), mode="RGB")


def composite(rendered: Image.Image, placed: Image.Image) -> Image.Image:
    """The rendered image with the product's pixels laid back over it by their alpha: where the
    product is opaque the result equals the input exactly."""
    product = np.asarray(placed, dtype=np.float64)
    alpha = product[..., 3:] / 255.0
    under = np.asarray(rendered.convert("RGB").resize(placed.size), dtype=np.float64)
    mixed = np.round(product[..., :3] * alpha + under * (1 - alpha)).astype(np.uint8)
    return Image.fromarray(mixed, mode="RGB")
