"""The tiny profile's renderer: small diffusion components trained for a few CPU minutes.

Random weights render noise, and a demo of noise shows nothing, so `build_tiny_renderer` trains
them on captioned backgrounds (the simulated world paints them into the landing's image library;
any folder of images with a metadata.jsonl of {"file_name", "text"} will do):

1. a VAE with four blocks (it downsamples by 8, as the ControlNet's conditioning embedding does),
   trained to reconstruct the backgrounds;
2. a CLIP text encoder over a BPE tokenizer trained on the captions, and a text-conditioned UNet,
   trained together on the usual noise-prediction loss in the VAE's latent space;
3. a ControlNet started from the UNet (`ControlNetModel.from_unet`): its zero convolutions make it
   a no-op until trained, so the product's edges constrain nothing the tiny UNet has not learnt.

The pipeline is saved with `save_pretrained` into `models.dir/render-tiny-<digest>` (the digest
covers the captions, the images' bytes and the settings), so a rebuild happens only when an input
changes, and `from_pretrained` loads it the way it loads a full SD1.5-class pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionControlNetInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from osmf_lib import artifacts
from osmf_lib.config import Config, TinyRendererConfig
from osmf_lib.gmllm.base import train_tokenizer
from osmf_lib.images import ImageError, ImageLimits, read_image
from osmf_lib.model_folders import publish

log = logging.getLogger(__name__)

METADATA = "metadata.jsonl"


class RenderError(RuntimeError):
    """A renderer input or model is unusable; the message names it."""


@dataclass(frozen=True)
class Captioned:
    """Captioned training images as tensors in [-1, 1], (n, 3, size, size)."""

    pixels: torch.Tensor
    captions: list[str]


def read_library(folder: str, size: int, limits: ImageLimits) -> Captioned:
    """The images and captions a metadata.jsonl lists, resized to size x size."""
    listing = artifacts.join(folder, METADATA)
    if not artifacts.exists(listing):
        raise RenderError(f"no {METADATA} in the background library {folder}")
    images, captions = [], []
    for number, line in enumerate(artifacts.read_bytes(listing).decode().splitlines(), start=1):
        try:
            entry = json.loads(line)
            path, caption = artifacts.join(folder, entry["file_name"]), str(entry["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise RenderError(f"{listing} line {number}: expected {{'file_name', 'text'}}: {err}") from err
        try:
            rgb = read_image(path, limits).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        except ImageError as err:
            raise RenderError(f"{listing} line {number}: cannot read {path}: {err}") from err
        images.append(np.asarray(rgb))
        captions.append(caption)
    if not images:
        raise RenderError(f"the background library {folder} lists no images")
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return Captioned(pixels, captions)


def library_of(cfg: Config) -> str:
    """The background library the simulated world writes beside its landing files."""
    return artifacts.join(cfg.lakehouse.landing, "images", "backgrounds")


def _digest(folder: str, settings: TinyRendererConfig) -> str:
    h = hashlib.sha256(json.dumps(settings.model_dump(), sort_keys=True).encode())
    listing = artifacts.read_bytes(artifacts.join(folder, METADATA))
    h.update(listing)
    for line in listing.decode().splitlines():
        h.update(artifacts.read_bytes(artifacts.join(folder, json.loads(line)["file_name"])))
    return h.hexdigest()[:12]


def new_components(tokenizer: PreTrainedTokenizerFast, settings: TinyRendererConfig) -> dict:
    """Untrained tiny components of an SD1.5-shaped ControlNet-inpaint pipeline."""
    width = settings.width
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(width // 2, width, width, 2 * width),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=settings.size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=2 * width,
            intermediate_size=4 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=settings.size // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=2 * width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return {"vae": vae, "text_encoder": text_encoder, "unet": unet}


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch_size,), generator=generator)


def train_vae(vae: AutoencoderKL, data: Captioned, settings: TinyRendererConfig, generator: torch.Generator) -> float:
    """Reconstruction (L1 + L2) of the posterior's mean with a small KL term; returns the last
    loss. Decoding the mean rather than a sample converges in a few hundred CPU steps; the scale
    the UNet sees is set afterwards from the latents themselves (as SD1.5's 0.18215 was)."""
    optimiser = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate)
    vae.train()
    loss = torch.tensor(float("nan"))
    for rows in tqdm(
        _batches(len(data.captions), settings.batch_size, settings.vae_steps, generator),
        total=settings.vae_steps,
        desc="tiny VAE",
        mininterval=5,
    ):
        x = data.pixels[rows]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mode()).sample
        loss = F.mse_loss(recon, x) + F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        spread = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in data.pixels.split(256)]).std()
    vae.register_to_config(scaling_factor=float(1 / spread))
    return loss.item()


def train_denoiser(
    components: dict,
    tokenizer: PreTrainedTokenizerFast,
    data: Captioned,
    settings: TinyRendererConfig,
    generator: torch.Generator,
) -> float:
    """Noise prediction on the VAE's latents, the text encoder and the UNet trained together;
    captions are dropped 10% of the time so classifier-free guidance has an unconditional model."""
    vae, text_encoder, unet = components["vae"], components["text_encoder"], components["unet"]
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in data.pixels.split(256)])
    latents = latents * vae.config.scaling_factor  # unit variance, as the noise schedule assumes
    tokens = tokenizer(
        data.captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimiser = torch.optim.AdamW(params, lr=settings.learning_rate)
    unet.train()
    text_encoder.train()
    loss = torch.tensor(float("nan"))
    for rows in tqdm(
        _batches(len(data.captions), settings.batch_size, settings.unet_steps, generator),
        total=settings.unet_steps,
        desc="tiny UNet",
        mininterval=5,
    ):
        x0 = latents[rows]
        ids = tokens[rows].clone()
        drop = torch.rand(len(rows), generator=generator) < 0.1
        ids[drop] = empty
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(rows),), generator=generator)
        predicted = unet(scheduler.add_noise(x0, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(predicted, noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return loss.item()


def build_tiny_renderer(library: str, cfg: Config) -> Path:
    """The tiny renderer's pipeline folder for this library and these settings (trained once;
    an interrupted build leaves nothing behind)."""
    settings = cfg.render.tiny
    if not artifacts.exists(artifacts.join(library, METADATA)):
        raise RenderError(f"no {METADATA} in the background library {library}: run `osmf synth` first")
    folder = Path(cfg.models.dir) / f"render-tiny-{_digest(library, settings)}"
    if folder.exists():
        return folder
    data = read_library(library, settings.size, ImageLimits.of(cfg))
    tokenizer = train_tokenizer(data.captions, settings.vocab_size)
    tokenizer.model_max_length = settings.max_tokens
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        components = new_components(tokenizer, settings)
        vae_loss = train_vae(components["vae"], data, settings, generator)
        unet_loss = train_denoiser(components, tokenizer, data, settings, generator)
        controlnet = ControlNetModel.from_unet(components["unet"])
    pipeline = StableDiffusionControlNetInpaintPipeline(
        **components,
        tokenizer=tokenizer,
        controlnet=controlnet,
        scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    log.info(
        f"build-tiny: renderer trained on {len(data.captions)} backgrounds, "
        f"VAE loss {vae_loss:.4f}, UNet loss {unet_loss:.4f}"
    )
    return publish(folder, pipeline.save_pretrained)
