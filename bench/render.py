"""Benchmark: rendering throughput (images/s) and its share of the compute floor.

    OMP_NUM_THREADS=2 .venv/bin/python bench/render.py                       # tiny profile, CPU (~1 min)
    .venv/bin/python bench/render.py --device cuda --full-arch               # SD1.5 dimensions on a GPU (< 8 min)

Each row renders `--images` finished creatives (placement, ControlNet-inpaint denoising with
classifier-free guidance, decoding, compositing) through `osmf_lib.render.pipeline.Renderer`, the
path generate_creatives takes, after one warm-up batch. The components are random weights of the
profile's architecture (nothing is downloaded; speed does not depend on what the weights learnt):

- tiny: the components `osmf models build-tiny` trains (render.tiny settings), 64 px, render.steps;
- `--full-arch`: SD1.5's dimensions (UNet 320-640-1280-1280 with a 9-channel inpainting input,
  its ControlNet, the 4-block VAE, a 12-layer 768-wide CLIP text encoder), 512 px, 30 steps, CFG 7.5.

Rows: batch sizes (`--batch-sizes`), and on CUDA the variants eager fp32, eager bf16, bf16 +
channels-last, bf16 + channels-last + torch.compile of the UNet and ControlNet; attention uses
PyTorch's SDPA in every row (diffusers' default), "sdpa off" swaps in the classic attention
processor for comparison. "vs base" is images/s over the first row's (measured in this run).

The floor: FLOP per image counted by torch's FlopCounterMode over one denoising step of the UNet and
ControlNet at the row's batch (times the steps, doubled for CFG) plus one VAE encode and decode,
divided by the device's measured dense matmul rate (fp32 on CPU, bf16 on CUDA, 4096^2 matmuls).
"share of floor" = achieved FLOP/s over that rate. About 36 TFLOP per image at full size.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetInpaintPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel

from osmf_lib.config import load_config
from osmf_lib.gmllm.base import train_tokenizer
from osmf_lib.render.pipeline import Renderer
from osmf_lib.render.tiny import new_components
from osmf_lib.synth.images import product_image
from osmf_lib.synth.vocab import STYLE, STYLE_VALUES, compose_prompt


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [compose_prompt({a: STYLE_VALUES[a][rng.integers(6)] for a in STYLE}) for _ in range(n)]


def tokenizer(max_tokens: int):
    tok = train_tokenizer(prompts(500), 512)
    tok.model_max_length = max_tokens
    return tok


def full_components() -> dict:
    """SD1.5's architecture (inpainting UNet input) with random weights."""
    tok = tokenizer(77)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    # The canny ControlNet of SD1.5 reads the 4 latent channels, not the inpainting UNet's 9.
    controlnet = ControlNetModel(
        in_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    return {"unet": unet, "controlnet": controlnet, "vae": vae, "text_encoder": text, "tokenizer": tok}


def tiny_components(cfg) -> dict:
    tok = tokenizer(cfg.render.tiny.max_tokens)
    parts = new_components(tok, cfg.render.tiny)
    return {**parts, "controlnet": ControlNetModel.from_unet(parts["unet"]), "tokenizer": tok}


def pipeline_of(parts: dict, device: torch.device, dtype: torch.dtype) -> StableDiffusionControlNetInpaintPipeline:
    pipe = StableDiffusionControlNetInpaintPipeline(
        **parts,
        scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 4096) -> float:
    """Dense matmul FLOP/s of the device at dtype."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    _sync(device)
    repeats, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        a @ b
        repeats += 1
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flop_per_image(pipe: StableDiffusionControlNetInpaintPipeline, size: int, steps: int, cfg_scale: float) -> float:
    """FLOP of one image: UNet + ControlNet per step (x2 with CFG) x steps, plus VAE encode and decode."""
    latent = size // pipe.vae_scale_factor
    dev, dt = pipe.device, pipe.unet.dtype
    guided = 2 if cfg_scale > 1 else 1
    x = torch.randn(guided, pipe.unet.config.in_channels, latent, latent, device=dev, dtype=dt)
    text = torch.randn(
        guided, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim, device=dev, dtype=dt
    )
    control = torch.randn(guided, 3, size, size, device=dev, dtype=dt)
    t = torch.tensor([500] * guided, device=dev)
    with torch.no_grad(), FlopCounterMode(display=False) as step:
        down, mid = pipe.controlnet(x[:, :4], t, text, controlnet_cond=control, return_dict=False)
        pipe.unet(x, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    image = torch.randn(1, 3, size, size, device=dev, dtype=dt)
    with torch.no_grad(), FlopCounterMode(display=False) as vae:
        pipe.vae.decode(pipe.vae.encode(image).latent_dist.mode())
    return steps * step.get_total_flops() + 2 * vae.get_total_flops()


@contextmanager
def classic_attention(pipe, on: bool):
    if not on:
        yield
        return
    for model in (pipe.unet, pipe.controlnet):
        model.set_attn_processor(AttnProcessor())
    yield


def time_renderer(renderer: Renderer, images: int) -> float:
    cut_out = product_image("electronics", np.random.default_rng(0))
    texts = prompts(images + renderer.batch_size, seed=1)
    renderer.render(
        [cut_out] * renderer.batch_size, texts[: renderer.batch_size], list(range(renderer.batch_size))
    )  # warm-up
    _sync(renderer.pipeline.device)
    start = time.perf_counter()
    renderer.render([cut_out] * images, texts[renderer.batch_size :], list(range(images)))
    _sync(renderer.pipeline.device)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--full-arch", action="store_true", help="SD1.5 dimensions, 512 px, 30 steps, CFG 7.5")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default: 1 4 8 (tiny) or 1 4 8 16 (full)")
    parser.add_argument("--images", type=int, help="images per row (default 4 x the batch size)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = load_config(base_file=None)
    if args.full_arch:
        parts, size, steps, scale = full_components(), 512, 30, 7.5
    else:
        parts, size, steps, scale = tiny_components(cfg), cfg.render.tiny.size, 10, cfg.render.guidance_scale
    batches = args.batch_sizes or ([1, 4, 8, 16] if args.full_arch else [1, 4, 8])
    variants = [("eager fp32", torch.float32, False, False, False)]
    if device.type == "cuda":
        variants += [
            ("eager bf16", torch.bfloat16, False, False, False),
            ("bf16 channels-last", torch.bfloat16, True, False, False),
            ("bf16 channels-last compile", torch.bfloat16, True, True, False),
            ("bf16 sdpa off", torch.bfloat16, False, False, True),
        ]
    peak = matmul_rate(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    floor_pipe = pipeline_of(parts, device, torch.float32)
    flop = flop_per_image(floor_pipe, size, steps, scale)
    print(
        f"device {device}, {'SD1.5 architecture' if args.full_arch else 'tiny'} at {size} px, {steps} steps, "
        f"CFG {scale}; {flop / 1e12:.3f} TFLOP per image; measured matmul rate {peak / 1e12:.2f} TFLOP/s; "
        f"floor {peak / flop:.2f} images/s"
    )
    print(f"| {'variant':<28} | batch | images/s | vs base | share of floor |")
    print(f"|{'-' * 30}|-------|----------|---------|---------------|")
    base = None
    for name, dtype, channels_last, compiled, classic in variants:
        pipe = pipeline_of(parts, device, dtype)
        if channels_last:
            for model in (pipe.unet, pipe.controlnet, pipe.vae):
                model.to(memory_format=torch.channels_last)
        if compiled:
            pipe.unet = torch.compile(pipe.unet)
            pipe.controlnet = torch.compile(pipe.controlnet)
        with classic_attention(pipe, classic):
            for batch in batches:
                renderer = Renderer(pipe, size, steps, scale, batch, cfg.render.product_scale, cfg.render.mask_dilation)
                rate = time_renderer(renderer, args.images or 4 * batch)
                base = base or rate
                share = rate * flop / peak
                print(f"| {name:<28} | {batch:>5} | {rate:>8.2f} | {rate / base:>6.2f}x | {share:>13.1%} |", flush=True)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
