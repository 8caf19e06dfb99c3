"""Tiny random-weight Stable Diffusion and InstructPix2Pix, built offline and seeded.

They have the real architectures (UNet with cross- and self-attention, KL VAE, CLIP text encoder and
tokenizer) at a few thousand times fewer FLOPs, so every code path runs in tests and smoke runs without
a download. Their outputs are meaningless images: they exist to exercise code, not to edit.
"""

from __future__ import annotations

import torch

from ids_nerfstudio.prior.base import DiffusionComponents
from ids_nerfstudio.tokenizers import clip_tokenizer

TEXT_DIM = 32


def tiny_components(seed: int = 0, unet_in_channels: int = 4) -> DiffusionComponents:
    """Seeded random-weight UNet (``unet_in_channels`` 4: Stable Diffusion, 8: InstructPix2Pix), VAE and CLIP."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer()
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
