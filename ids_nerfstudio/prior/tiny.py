"""Tiny random-weight Stable Diffusion and InstructPix2Pix, built offline and seeded.

They have the real architectures (UNet with cross- and self-attention, KL VAE, CLIP text encoder and
tokenizer) at a few thousand times fewer FLOPs, so every code path runs in tests and smoke runs without
a download. Their outputs are meaningless images: they exist to exercise code, not to edit.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ids_nerfstudio.prior.instruct_pix2pix import InstructPix2PixPrior
from ids_nerfstudio.prior.stable_diffusion import DiffusionComponents, StableDiffusionPrior

TEXT_DIM = 32


def byte_symbols() -> list[str]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_clip_tokenizer():
    """A CLIP tokenizer over single bytes (no merges), written to a temporary folder: any prompt tokenizes."""
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
        Path(folder, "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _tiny_components(seed: int, unet_in_channels: int) -> DiffusionComponents:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=unet_in_channels,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_DIM,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return DiffusionComponents(unet, vae, text_encoder, tokenizer, scheduler.alphas_cumprod.clone())


def tiny_stable_diffusion(seed: int = 0, **kwargs: Any) -> StableDiffusionPrior:
    """A tiny random-weight Stable Diffusion prior (SD-1.x schedule, VAE downsampling 2). Built on first use."""
    return StableDiffusionPrior("tiny", components_factory=lambda: _tiny_components(seed, 4), **kwargs)


def tiny_instruct_pix2pix(seed: int = 0, **kwargs: Any) -> InstructPix2PixPrior:
    """A tiny random-weight InstructPix2Pix prior (8 UNet input channels). Built on first use."""
    return InstructPix2PixPrior("tiny", components_factory=lambda: _tiny_components(seed, 8), **kwargs)
