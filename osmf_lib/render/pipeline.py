"""The renderer: a diffusers ControlNet-inpaint pipeline built once per process, fed in batches.

One loading path for every profile: `from_pretrained(base folder)` with the ControlNet from its
own folder (`tiny`: the folder build-tiny trained, its ControlNet inside; `full`: an SD1.5-class
inpainting checkpoint and a canny ControlNet under `models.dir`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetInpaintPipeline
from PIL import Image

from osmf_lib.config import Config
from osmf_lib.render.placement import composite, control_image, inpaint_mask, place
from osmf_lib.render.tiny import RenderError, build_tiny_renderer

# An image whose pixels all lie within this of black or white (in 0..1) shows nothing.
BLANK = 0.02
# Added to a seed whose image came out blank: another draw, still reproducible.
RESEED = 1_000_003


def renderer_folders(cfg: Config, library: str) -> tuple[Path, Path]:
    """(pipeline folder, ControlNet folder) of the configured profile; the tiny one is trained on
    the background `library` when it is not built yet."""
    if cfg.models.profile == "tiny":
        folder = build_tiny_renderer(library, cfg)
        return folder, folder / "controlnet"
    root = Path(cfg.models.dir)
    return root / cfg.render.full_checkpoint, root / cfg.render.full_controlnet


def load_pipeline(base: Path, controlnet: Path, device: torch.device) -> StableDiffusionControlNetInpaintPipeline:
    """The pipeline with every component from its folder, in bf16 on a GPU that has it."""
    for folder in (base, controlnet):
        if not folder.is_dir():
            raise RenderError(f"renderer checkpoint folder {folder} does not exist")
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        net = ControlNetModel.from_pretrained(controlnet, torch_dtype=dtype)
        pipeline = StableDiffusionControlNetInpaintPipeline.from_pretrained(
            base, controlnet=net, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError, KeyError) as err:
        raise RenderError(f"cannot load the renderer from {base} and {controlnet}: {err}") from err
    pipeline.set_progress_bar_config(disable=True)
    # The text encoder reads a prompt's first max_position_embeddings tokens, as CLIP always does;
    # the pipeline's warning about the rest, repeated per batch, drowned the task's log.
    logging.getLogger(StableDiffusionControlNetInpaintPipeline.__module__).setLevel(logging.ERROR)
    return pipeline.to(device)


@dataclass(frozen=True)
class Layout:
    """A product placed on the canvas, and what the pipeline gets from it."""

    placed: Image.Image  # RGBA: the product where it goes, transparent around it
    canvas: Image.Image
    mask: Image.Image
    control: Image.Image


def blank(pixels: np.ndarray) -> bool:
    """NaN anywhere, or every pixel black, or every pixel white."""
    return bool(np.isnan(pixels).any() or pixels.max() <= BLANK or pixels.min() >= 1 - BLANK)


@dataclass
class Renderer:
    """The pipeline with the night's render settings; `rejected` counts blank images re-seeded."""

    pipeline: StableDiffusionControlNetInpaintPipeline
    size: int
    steps: int
    guidance_scale: float
    batch_size: int
    product_scale: float
    mask_dilation: int
    rejected: int = 0

    @classmethod
    def from_config(cls, pipeline: StableDiffusionControlNetInpaintPipeline, cfg: Config) -> Renderer:
        r = cfg.render
        size = r.size or pipeline.unet.config.sample_size * pipeline.vae_scale_factor
        return cls(pipeline, size, r.steps, r.guidance_scale, r.batch_size, r.product_scale, r.mask_dilation)

    def _denoise(self, layouts: list[Layout], prompts: list[str], seeds: list[int]) -> np.ndarray:
        """(n, size, size, 3) floats in 0..1, in batches of batch_size that may mix products (the last
        one padded with its own first row, so every batch has one shape)."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            chunk, chunk_layouts, chunk_seeds = prompts[start:stop], layouts[start:stop], seeds[start:stop]
            padding = self.batch_size - len(chunk)
            chunk, chunk_seeds = chunk + [chunk[0]] * padding, chunk_seeds + [chunk_seeds[0]] * padding
            chunk_layouts = chunk_layouts + [chunk_layouts[0]] * padding
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in chunk_seeds]
            images = self.pipeline(
                chunk,
                image=[layout.canvas for layout in chunk_layouts],
                mask_image=[layout.mask for layout in chunk_layouts],
                control_image=[layout.control for layout in chunk_layouts],
                height=self.size,
                width=self.size,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                generator=generators,
                output_type="np",
            ).images
            out.append(np.asarray(images, dtype=np.float32)[: len(chunk) - padding])
        return np.concatenate(out)

    def layout(self, cut_out: Image.Image) -> Layout:
        placed = place(cut_out, self.size, self.product_scale)
        return Layout(placed, placed.convert("RGB"), inpaint_mask(placed, self.mask_dilation), control_image(placed))

    def render(self, cut_outs: Sequence[Image.Image], prompts: list[str], seeds: list[int]) -> list[Image.Image | None]:
        """One finished creative per (cut-out, prompt, seed): the background rendered around the
        placed product, the product's pixels laid back on top. Several products share batches, so
        no batch is padded but the last. A blank image is rendered once more with another seed
        (counted in `rejected`); one blank again is None."""
        if not prompts:
            return []
        # One layout per product, however many of its prompts there are.
        by_cut_out: dict[int, Layout] = {}
        for cut_out in cut_outs:
            if id(cut_out) not in by_cut_out:
                by_cut_out[id(cut_out)] = self.layout(cut_out)
        layouts = [by_cut_out[id(cut_out)] for cut_out in cut_outs]
        pixels = self._denoise(layouts, prompts, seeds)
        again = [i for i, image in enumerate(pixels) if blank(image)]
        if again:
            self.rejected += len(again)
            retry = [layouts[i] for i in again], [prompts[i] for i in again], [seeds[i] + RESEED for i in again]
            pixels[again] = self._denoise(*retry)
        return [
            None if blank(p) else composite(Image.fromarray((p.clip(0, 1) * 255).round().astype(np.uint8)), lay.placed)
            for p, lay in zip(pixels, layouts, strict=True)
        ]
