"""Train the demo prior on the demo world: a small CLIP, a KL VAE and a text-conditioned UNet, saved as
standard diffusers / transformers folders (the same layout as Stable Diffusion and openai/clip)::

    python -m ids_nerfstudio.demo.train --output ids_nerfstudio/demo/weights [--cache CACHE] [--device cuda]

Stages: render the data set (images and captions, in parallel) -> VAE (L1 + MSE + 1e-6 KL) -> CLIP
(contrastive, every item with the same scene content is a positive) -> UNet (epsilon prediction on the VAE
latents with SD's noise schedule, text from the frozen CLIP text tower, 10% empty captions for classifier-free
guidance, EMA weights). Each stage draws from its own seeded generator and shows a progress bar; with
``--cache`` the finished VAE and CLIP are kept (keyed by every setting they depend on), so a rerun that only
changes the UNet's settings starts at the UNet. Deterministic on one machine and device.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import multiprocessing
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from tqdm.auto import tqdm

from ids_nerfstudio.demo import DEMO_IMAGE_SIZE, WORDS, demo_tokenizer, render_sample, sample_scene
from ids_nerfstudio.eval.models import clip_normalize
from ids_nerfstudio.prior.loading import resolve_device
from ids_nerfstudio.tokenizers import write_clip_tokenizer

TEXT_LENGTH = 24
"""Tokens per prompt (the demo captions have at most 17)."""
RENDER_CHUNK = 1000
"""Images per rendering task; each chunk has its own seed, so the data set does not depend on --workers."""


@dataclass
class TrainArgs:
    """Train the demo prior and write it as diffusers / transformers folders (the defaults made the shipped one)."""

    output: Path = Path("ids_nerfstudio/demo/weights")
    """Folder to write diffusion/ and clip/ into (replaced atomically)."""
    images: int = 60000
    """Rendered training images."""
    vae_steps: int = 2000
    """VAE optimisation steps."""
    vae_batch: int = 64
    """VAE batch size."""
    clip_steps: int = 1000
    """CLIP optimisation steps."""
    clip_batch: int = 512
    """CLIP batch size (in-batch negatives: larger is harder)."""
    unet_steps: int = 4000
    """UNet optimisation steps."""
    unet_batch: int = 256
    """UNet batch size."""
    seed: int = 0
    """Seed of the data and of every initialisation and draw."""
    device: str = "auto"
    """Where to train: auto (CUDA if available), cpu, cuda:1, ..."""
    workers: int = 0
    """Processes rendering the data set (0: one per CPU core)."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    cache: Path | None = None
    """Folder keeping the finished VAE and CLIP between runs (none: nothing is kept)."""


def render_chunk(task: tuple[int, int, int]) -> tuple[np.ndarray, list[str], list[str]]:
    """Images (n, 3, S, S) as uint8, captions (random object order) and an order-free content key per image."""
    seed, index, count = task
    rng = np.random.default_rng([seed, index])
    images, captions, keys = [], [], []
    for _ in range(count):
        sample = sample_scene(rng)
        images.append(np.round(render_sample(sample)[0] * 255).astype(np.uint8).transpose(2, 0, 1))
        captions.append(sample.caption)
        keys.append(" | ".join(sorted(f"{o.colour} {o.shape}" for o in sample.objects)))
    return np.stack(images), captions, keys


def render_dataset(count: int, seed: int, workers: int = 0) -> tuple[torch.Tensor, list[str], list[str]]:
    """Images (N, 3, S, S) as uint8, captions and content keys, rendered in chunks of RENDER_CHUNK in parallel."""
    starts = range(0, count, RENDER_CHUNK)
    tasks = [(seed, index, min(RENDER_CHUNK, count - first)) for index, first in enumerate(starts)]
    images, captions, keys = [], [], []
    with ProcessPoolExecutor(workers or None, mp_context=multiprocessing.get_context("spawn")) as pool:
        for chunk_images, chunk_captions, chunk_keys in tqdm(
            pool.map(render_chunk, tasks), total=len(tasks), desc="render", unit="chunk"
        ):
            images.append(chunk_images)
            captions += chunk_captions
            keys += chunk_keys
    return torch.from_numpy(np.concatenate(images)), captions, keys


def as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images to float in [0, 1] on ``device``."""
    return images.to(device).float() / 255


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=16,
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
    """Random index batches (with replacement across batches), drawn on the CPU so any device gets the same."""
    for _ in range(steps):
        yield torch.randint(0, count, (batch_size,), generator=generator)


def stage_generator(seed: int, stage: str) -> torch.Generator:
    """A generator of its own for each stage, so a stage read from the cache leaves the later ones unchanged."""
    return torch.Generator().manual_seed(seed * 1000 + ("vae", "clip", "unet").index(stage))


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


def train_vae(vae, images: torch.Tensor, steps: int, batch_size: int, generator: torch.Generator, device: torch.device):
    vae = vae.to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), weight_decay=0.0)
    schedule = cosine_lr(optimizer, 1e-3, steps)
    progress = tqdm(batches(generator, len(images), batch_size, steps), total=steps, desc="vae", unit="step")
    for ids in progress:
        x = as_float(images[ids], device) * 2 - 1
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        error = reconstruction - x
        loss = error.abs().mean() + error.pow(2).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = encode_latents(vae, images[:2048])
    vae.register_to_config(scaling_factor=float(1 / means.std()))  # unit-variance latents, as SD's 0.18215
    return vae


def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Unscaled latent means of uint8 images, 256 at a time, on the VAE's device."""
    device = vae.device
    return torch.cat([
        vae.encode(as_float(images[i : i + 256], device) * 2 - 1).latent_dist.mean for i in range(0, len(images), 256)
    ])  # fmt: skip


def train_clip(clip, images: torch.Tensor, captions: list[str], keys: list[str], tokenizer, args: TrainArgs,
               generator, device: torch.device):  # fmt: skip
    clip = clip.to(device)
    tokens = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
    input_ids, attention_mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    key_ids = torch.tensor([sorted(set(keys)).index(k) for k in keys], device=device)
    optimizer = torch.optim.AdamW(clip.parameters(), weight_decay=0.01)
    schedule = cosine_lr(optimizer, 5e-4, args.clip_steps)
    steps, batch_size = args.clip_steps, args.clip_batch
    progress = tqdm(batches(generator, len(images), batch_size, steps), total=steps, desc="clip", unit="step")
    for ids in progress:
        flips = (torch.rand(len(ids), generator=generator) < 0.5).to(device)  # a mirrored photo: same caption
        pixels = as_float(images[ids], device)
        pixels = torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)
        ids = ids.to(device)
        out = clip(input_ids=input_ids[ids], attention_mask=attention_mask[ids], pixel_values=clip_normalize(pixels))
        same = (key_ids[ids][:, None] == key_ids[ids][None]).float()  # duplicates are positives, not negatives
        targets = same / same.sum(1, keepdim=True)
        logits = out.logits_per_image
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return clip.eval().requires_grad_(False)


def train_unet(
    unet,
    latents: torch.Tensor, caption_ids: torch.Tensor, captions: torch.Tensor, null: torch.Tensor, args: TrainArgs,
    generator: torch.Generator,
):  # fmt: skip
    """``captions`` holds one text embedding per distinct caption, ``caption_ids`` the caption of each latent."""
    from diffusers import DDPMScheduler

    device = latents.device
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    unet = unet.to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    parameters, ema_parameters = list(unet.parameters()), list(ema.parameters())
    optimizer = torch.optim.AdamW(parameters, weight_decay=0.01)
    schedule = cosine_lr(optimizer, 1e-3, args.unet_steps, warmup=200)
    steps = args.unet_steps
    progress = tqdm(batches(generator, len(latents), args.unet_batch, steps), total=steps, desc="unet", unit="step")
    for step, ids in enumerate(progress):
        flips = torch.rand(len(ids), generator=generator) < 0.5
        dropped = torch.rand(len(ids), generator=generator) < 0.1  # learn the unconditional score for CFG
        t = torch.randint(0, len(alphas_cumprod), (len(ids),), generator=generator)
        noise = torch.randn((len(ids), *latents.shape[1:]), generator=generator)
        ids, flips, dropped, t, noise = (x.to(device) for x in (ids, flips, dropped, t, noise))
        z0 = torch.where(flips[:, None, None, None], latents[ids].flip(-1), latents[ids])
        emb = torch.where(dropped[:, None, None], null, captions[caption_ids[ids]])
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=emb).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_parameters, parameters, 1 - decay)  # one fused update, not one per tensor
        if step % 50 == 0:  # reading the loss waits for the GPU
            progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return ema.eval(), scheduler


def save(output: Path, vae, clip, unet, scheduler) -> None:
    """Write diffusion/ (unet, vae, text_encoder, tokenizer, scheduler) and clip/ into ``output`` atomically."""
    from transformers import CLIPImageProcessor, CLIPTextModel

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as staging:
        staging = Path(staging)
        diffusion, clip_folder = staging / "diffusion", staging / "clip"
        unet.to("cpu", torch.float16).save_pretrained(diffusion / "unet")
        vae.to("cpu", torch.float16).save_pretrained(diffusion / "vae")
        clip = clip.to("cpu")
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
        output.chmod(0o755)  # a temporary directory is private; the weights are not
        staging.mkdir()  # TemporaryDirectory removes it again


def cached(cache: Path | None, stage: str, settings: dict, build, device: torch.device):
    """``build()`` once per stage and settings: the module is kept under ``cache`` and read back on a rerun."""
    if cache is None:
        return build()
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache / f"{stage}-{key}.pt"
    if path.is_file():
        print(f"{stage}: reusing {path}")
        return torch.load(path, map_location=device, weights_only=False)
    module = build()
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(module, partial)
    partial.replace(path)  # a killed run never leaves a half-written stage behind
    return module


def main(args: TrainArgs) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    images, captions, keys = render_dataset(args.images, args.seed, args.workers)
    settings = {"images": args.images, "seed": args.seed, "device": device.type}
    vae_settings = {**settings, "steps": args.vae_steps, "batch": args.vae_batch}
    clip_settings = {**settings, "steps": args.clip_steps, "batch": args.clip_batch}
    tokenizer = demo_tokenizer(TEXT_LENGTH)
    # every initialisation is drawn here, in one order, so a stage read from the cache changes no other stage
    vae_init, clip_init = build_vae(), build_clip(tokenizer)
    unet_init = build_unet(clip_init.config.text_config.hidden_size)

    def vae_stage():
        return train_vae(vae_init, images, args.vae_steps, args.vae_batch, stage_generator(args.seed, "vae"), device)

    def clip_stage():
        generator = stage_generator(args.seed, "clip")
        return train_clip(clip_init, images, captions, keys, tokenizer, args, generator, device)

    vae = cached(args.cache, "vae", vae_settings, vae_stage, device)
    clip = cached(args.cache, "clip", clip_settings, clip_stage, device)
    with torch.no_grad():
        latents = encode_latents(vae, images) * vae.config.scaling_factor
        unique = sorted(set(captions))
        tokens = tokenizer(["", *unique], padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt")
        embeddings = clip.text_model(tokens.input_ids.to(device))[0]
    null, by_caption = embeddings[:1], embeddings[1:]
    caption_ids = torch.tensor([unique.index(c) for c in captions], device=device)
    unet, scheduler = train_unet(
        unet_init, latents, caption_ids, by_caption, null, args, stage_generator(args.seed, "unet")
    )
    save(args.output, vae, clip, unet, scheduler)
    minutes = (time.perf_counter() - started) / 60
    print(f"wrote {args.output} in {minutes:.1f} min on {device}; settings: {json.dumps(asdict(args), default=str)}")


if __name__ == "__main__":
    main(tyro.cli(TrainArgs))
