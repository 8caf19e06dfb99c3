"""Train the demo prior on the demo world: a small CLIP, a KL VAE and a text-conditioned UNet, saved as
standard diffusers / transformers folders (the same layout as Stable Diffusion and openai/clip)::

    python -m ids_nerfstudio.demo.train --output ids_nerfstudio/demo/weights

Stages: render the data set (images, captions, masks) -> VAE (L1 + MSE + 1e-6 KL) -> CLIP (contrastive, every
item with the same scene content is a positive) -> UNet (epsilon prediction on the VAE latents with SD's noise
schedule, text from the frozen CLIP text tower, 10% empty captions for classifier-free guidance, EMA weights).
Seeded and deterministic on one machine; each stage shows a progress bar.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from tqdm.auto import tqdm

from ids_nerfstudio.demo import DEMO_IMAGE_SIZE, WORDS, demo_tokenizer, render_sample, sample_scene
from ids_nerfstudio.eval.models import CLIP_MEAN, CLIP_STD
from ids_nerfstudio.tokenizers import write_clip_tokenizer

TEXT_LENGTH = 24
"""Tokens per prompt (the demo captions have at most 17)."""


@dataclass
class TrainArgs:
    """Train the demo prior and write it as diffusers / transformers folders."""

    output: Path = Path("ids_nerfstudio/demo/weights")
    """Folder to write diffusion/ and clip/ into (replaced atomically)."""
    images: int = 16000
    """Rendered training images."""
    vae_steps: int = 2000
    """VAE optimisation steps (batch 16)."""
    clip_steps: int = 1000
    """CLIP optimisation steps (batch 128)."""
    unet_steps: int = 4500
    """UNet optimisation steps."""
    unet_batch: int = 32
    """UNet batch size."""
    seed: int = 0
    """Seed of the data and of every initialisation and draw."""
    threads: int = 0
    """torch threads (0: torch's default)."""


def render_dataset(count: int, seed: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """Images (N, 3, S, S) in [0, 1], captions (random object order) and an order-free content key per image."""
    rng = np.random.default_rng(seed)
    images, captions, keys = [], [], []
    for _ in tqdm(range(count), desc="render", unit="img"):
        sample = sample_scene(rng)
        images.append(torch.from_numpy(render_sample(sample)[0]).permute(2, 0, 1).float())
        captions.append(sample.caption)
        keys.append(" | ".join(sorted(f"{o.colour} {o.shape}" for o in sample.objects)))
    return torch.stack(images), captions, keys


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8,
        sample_size=DEMO_IMAGE_SIZE,
    )


def build_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": TEXT_LENGTH,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {"image_size": DEMO_IMAGE_SIZE, "patch_size": 8, "hidden_size": 96, "intermediate_size": 384,
              "num_hidden_layers": 4, "num_attention_heads": 4}  # fmt: skip
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def build_unet(text_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=DEMO_IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def batches(generator: torch.Generator, count: int, batch_size: int, steps: int):
    """Random index batches (with replacement across batches)."""
    for _ in range(steps):
        yield torch.randint(0, count, (batch_size,), generator=generator)


def cosine_lr(optimizer: torch.optim.Optimizer, peak: float, steps: int, warmup: int = 100):
    """Linear warm-up, then cosine decay to 10% of the peak."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    for group in optimizer.param_groups:
        group["lr"] = peak
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_vae(images: torch.Tensor, steps: int, generator: torch.Generator):
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), weight_decay=0.0)
    schedule = cosine_lr(optimizer, 1e-3, steps)
    progress = tqdm(batches(generator, len(images), 16, steps), total=steps, desc="vae", unit="step")
    for ids in progress:
        x = images[ids] * 2 - 1
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        error = reconstruction - x
        loss = error.abs().mean() + error.pow(2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = encode_latents(vae, images[:2048])
    vae.register_to_config(scaling_factor=float(1 / means.std()))  # unit-variance latents, as SD's 0.18215
    return vae


def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Unscaled latent means of images in [0, 1], 256 at a time."""
    return torch.cat([vae.encode(images[i : i + 256] * 2 - 1).latent_dist.mean for i in range(0, len(images), 256)])


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """The normalisation ``ClipEmbedder`` applies (the images already have CLIP's input size)."""
    return (images - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def train_clip(images: torch.Tensor, captions: list[str], keys: list[str], tokenizer, steps: int, generator):
    clip = build_clip(tokenizer)
    tokens = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
    key_ids = torch.tensor([sorted(set(keys)).index(k) for k in keys])
    optimizer = torch.optim.AdamW(clip.parameters(), weight_decay=0.01)
    schedule = cosine_lr(optimizer, 5e-4, steps)
    progress = tqdm(batches(generator, len(images), 128, steps), total=steps, desc="clip", unit="step")
    for ids in progress:
        flips = torch.rand(len(ids), generator=generator) < 0.5  # a mirrored photo has the same caption
        pixels = torch.where(flips[:, None, None, None], images[ids].flip(-1), images[ids])
        out = clip(input_ids=tokens.input_ids[ids], attention_mask=tokens.attention_mask[ids],
                   pixel_values=clip_pixels(pixels))  # fmt: skip
        same = (key_ids[ids][:, None] == key_ids[ids][None]).float()  # duplicates are positives, not negatives
        targets = same / same.sum(1, keepdim=True)
        logits = out.logits_per_image
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return clip.eval().requires_grad_(False)


def train_unet(latents: torch.Tensor, text: torch.Tensor, null: torch.Tensor, args: TrainArgs, generator):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    alphas_cumprod = scheduler.alphas_cumprod
    unet = build_unet(text.shape[-1])
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), weight_decay=0.01)
    schedule = cosine_lr(optimizer, 1e-3, args.unet_steps, warmup=200)
    steps = args.unet_steps
    progress = tqdm(batches(generator, len(latents), args.unet_batch, steps), total=steps, desc="unet", unit="step")
    for step, ids in enumerate(progress):
        flips = torch.rand(len(ids), generator=generator) < 0.5
        z0 = torch.where(flips[:, None, None, None], latents[ids].flip(-1), latents[ids])
        dropped = torch.rand(len(ids), generator=generator) < 0.1  # learn the unconditional score for CFG
        emb = torch.where(dropped[:, None, None], null, text[ids])
        t = torch.randint(0, len(alphas_cumprod), (len(ids),), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=emb).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        progress.set_postfix(loss=f"{loss.item():.4f}")
    return ema.eval(), scheduler


def save(output: Path, vae, clip, unet, scheduler) -> None:
    """Write diffusion/ (unet, vae, text_encoder, tokenizer, scheduler) and clip/ into ``output`` atomically."""
    from transformers import CLIPImageProcessor, CLIPTextModel

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as staging:
        staging = Path(staging)
        diffusion, clip_folder = staging / "diffusion", staging / "clip"
        unet.to(torch.float16).save_pretrained(diffusion / "unet")
        vae.to(torch.float16).save_pretrained(diffusion / "vae")
        text_encoder = CLIPTextModel(clip.config.text_config)
        text_encoder.load_state_dict(clip.text_model.state_dict())
        text_encoder.to(torch.float16).save_pretrained(diffusion / "text_encoder")
        write_clip_tokenizer(diffusion / "tokenizer", WORDS, TEXT_LENGTH)
        scheduler.save_pretrained(diffusion / "scheduler")
        (diffusion / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"],
        }, indent=2))  # fmt: skip
        clip.to(torch.float16).save_pretrained(clip_folder)
        write_clip_tokenizer(clip_folder, WORDS, TEXT_LENGTH)
        size = {"shortest_edge": DEMO_IMAGE_SIZE}
        crop = {"height": DEMO_IMAGE_SIZE, "width": DEMO_IMAGE_SIZE}
        CLIPImageProcessor(size=size, crop_size=crop).save_pretrained(clip_folder)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
        staging.mkdir()  # TemporaryDirectory removes it again


def main(args: TrainArgs) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    images, captions, keys = render_dataset(args.images, args.seed)
    vae = train_vae(images, args.vae_steps, generator)
    tokenizer = demo_tokenizer(TEXT_LENGTH)
    clip = train_clip(images, captions, keys, tokenizer, args.clip_steps, generator)
    with torch.no_grad():
        latents = encode_latents(vae, images) * vae.config.scaling_factor
        unique = sorted(set(captions))
        tokens = tokenizer(["", *unique], padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt")
        embeddings = clip.text_model(tokens.input_ids)[0]
    null, by_caption = embeddings[:1], dict(zip(unique, embeddings[1:], strict=True))
    text = torch.stack([by_caption[c] for c in captions])
    unet, scheduler = train_unet(latents, text, null, args, generator)
    save(args.output, vae, clip, unet, scheduler)
    print(f"wrote {args.output} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main(tyro.cli(TrainArgs))
