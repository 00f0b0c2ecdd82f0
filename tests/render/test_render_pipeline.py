"""The renderer on tiny components: the product untouched, batches padded, seeds reproducible,
blank images re-seeded, and the full profile's folders loaded through the same path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionInpaintPipeline
from PIL import Image

from osmf_lib import artifacts
from osmf_lib.config import Config, load_config
from osmf_lib.images import ImageLimits
from osmf_lib.render.pipeline import Renderer, blank, load_pipeline, renderer_folders
from osmf_lib.render.placement import place
from osmf_lib.render.tiny import METADATA, RenderError, build_tiny_renderer, read_library
from osmf_lib.synth.backgrounds import paint_background
from osmf_lib.synth.images import product_image

LIMITS = ImageLimits.of(Config())
PROMPTS = ["a sunlit beach scene, warm golden tones", "a misty forest scene, cool blue tones"]


def _library(folder: Path, n: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        prompt = PROMPTS[i % 2]
        paint_background(prompt, 64, seed=i).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": prompt}))
    (folder / METADATA).write_text("\n".join(lines) + "\n")
    return folder


def _cfg(tmp: Path, *more: str) -> Config:
    return load_config(
        overrides=[
            f"models.dir={tmp / 'models'}",
            "render.tiny.vae_steps=2",
            "render.tiny.unet_steps=2",
            "render.tiny.batch_size=4",
            "render.steps=3",
            "render.batch_size=4",
            *more,
        ],
        base_file=None,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Config, Path, Path]:
    tmp = tmp_path_factory.mktemp("render")
    cfg = _cfg(tmp)
    library = _library(tmp / "library")
    folder = build_tiny_renderer(library, cfg)
    return cfg, library, folder


@pytest.fixture(scope="module")
def renderer(tiny) -> Renderer:
    cfg, _, folder = tiny
    return Renderer.from_config(load_pipeline(folder, folder / "controlnet", torch.device("cpu")), cfg)


def test_the_tiny_renderer_is_built_once_per_library_and_settings(tiny):
    cfg, library, folder = tiny
    assert (folder / "model_index.json").exists() and (folder / "controlnet" / "config.json").exists()
    assert build_tiny_renderer(library, cfg) == folder
    reseeded = build_tiny_renderer(library, _cfg(Path(cfg.models.dir).parent, "render.tiny.seed=1"))
    assert reseeded != folder and reseeded.parent == folder.parent
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_library_on_an_object_store_is_the_same_library(tiny, object_store):
    cfg, library, folder = tiny
    stored = artifacts.join(object_store, "backgrounds")
    for path in library.iterdir():
        artifacts.write_atomically(artifacts.join(stored, path.name), path.read_bytes())
    assert build_tiny_renderer(stored, cfg) == folder  # same digest: nothing retrained
    here, there = read_library(library, 64, LIMITS), read_library(stored, 64, LIMITS)
    assert there.captions == here.captions and torch.equal(there.pixels, here.pixels)


def test_a_bad_library_is_named(tmp_path):
    with pytest.raises(RenderError, match="no metadata.jsonl"):
        read_library(tmp_path, 64, LIMITS)
    (tmp_path / METADATA).write_text('{"file_name": "a.png", "text": "x"}\nnot json\n')
    with pytest.raises(RenderError, match=r"metadata.jsonl line 1: cannot read .*a.png"):
        read_library(tmp_path, 64, LIMITS)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(RenderError, match="metadata.jsonl line 2: expected"):
        read_library(tmp_path, 64, LIMITS)


def test_the_product_is_untouched_and_batches_are_padded(renderer):
    cut_out = product_image("toys", np.random.default_rng(0))
    prompts = [PROMPTS[i % 2] for i in range(5)]  # one full batch of 4 and one padded batch
    images = renderer.render([cut_out] * 5, prompts, seeds=list(range(5)))
    assert len(images) == 5 and all(image.size == (64, 64) for image in images)
    placed = np.asarray(place(cut_out, 64, renderer.product_scale))
    opaque = placed[..., 3] == 255
    for image in images:
        assert np.array_equal(np.asarray(image)[opaque], placed[..., :3][opaque])
    again = renderer.render([cut_out], prompts[:1], seeds=[0])
    assert np.array_equal(np.asarray(again[0]), np.asarray(images[0]))
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[2]))  # same prompt, another seed


def test_products_share_batches_and_each_keeps_its_own_pixels(renderer):
    cut_outs = [product_image(category, np.random.default_rng(3)) for category in ("home", "sports")]
    mixed = renderer.render([cut_outs[0]] * 2 + [cut_outs[1]] * 3, [PROMPTS[0], PROMPTS[1]] * 2 + [PROMPTS[0]], [7] * 5)
    for i, cut_out in enumerate(cut_outs):
        placed = np.asarray(place(cut_out, 64, renderer.product_scale))
        opaque = placed[..., 3] == 255
        mine = mixed[:2] if i == 0 else mixed[2:]
        assert all(np.array_equal(np.asarray(image)[opaque], placed[..., :3][opaque]) for image in mine)
    # Rendered alone, in a batch padded with itself, a product's image is the same bits.
    (alone,) = renderer.render([cut_outs[1]], [PROMPTS[1]], [7])
    assert np.array_equal(np.asarray(alone), np.asarray(mixed[3]))


def test_a_blank_image_is_rendered_once_more_then_given_up(tiny):
    cfg, _, folder = tiny
    pipeline = load_pipeline(folder, folder / "controlnet", torch.device("cpu"))
    # A broken decoder: every output pixel saturates to black.
    with torch.no_grad():
        pipeline.vae.decoder.conv_out.bias.fill_(-100.0)
    broken = Renderer.from_config(pipeline, cfg)
    out = broken.render([product_image("books", np.random.default_rng(1))] * 2, PROMPTS, seeds=[1, 2])
    assert out == [None, None] and broken.rejected == 2
    assert blank(np.zeros((4, 4, 3))) and blank(np.ones((4, 4, 3))) and blank(np.full((4, 4, 3), np.nan))
    assert not blank(np.linspace(0, 1, 48).reshape(4, 4, 3))


def test_the_full_profile_loads_an_inpainting_checkpoint_and_a_controlnet_by_folder(tiny, tmp_path):
    _, _, folder = tiny
    source = load_pipeline(folder, folder / "controlnet", torch.device("cpu"))
    cfg = load_config(overrides=[f"models.dir={tmp_path}", "models.profile=full", "render.steps=2"], base_file=None)
    base, controlnet = renderer_folders(cfg, tmp_path / "unused-library")
    # The layout of an SD1.5 inpainting checkpoint and a canny ControlNet, each as published.
    StableDiffusionInpaintPipeline(
        vae=source.vae,
        text_encoder=source.text_encoder,
        tokenizer=source.tokenizer,
        unet=source.unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(base)
    ControlNetModel.from_unet(source.unet).save_pretrained(controlnet)
    renderer = Renderer.from_config(load_pipeline(base, controlnet, torch.device("cpu")), cfg)
    assert renderer.size == 64  # the checkpoint's own size, as render.size is unset
    (image,) = renderer.render([product_image("food", np.random.default_rng(2))], PROMPTS[:1], seeds=[0])
    assert image is not None and image.size == (64, 64)
    with pytest.raises(RenderError, match="renderer checkpoint folder .*missing does not exist"):
        load_pipeline(tmp_path / "missing", controlnet, torch.device("cpu"))
