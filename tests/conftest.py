"""Shared fixtures: tiny offline priors (fp32, CPU) and deterministic latents."""

from __future__ import annotations

import pytest
import torch

from ids_nerfstudio.prior import tiny_instruct_pix2pix, tiny_stable_diffusion


@pytest.fixture(scope="session")
def sd_prior():
    prior = tiny_stable_diffusion(seed=0, device="cpu", dtype="float32")
    prior.components  # load once for the session  # noqa: B018
    return prior


@pytest.fixture(scope="session")
def ip2p_prior():
    prior = tiny_instruct_pix2pix(seed=1, device="cpu", dtype="float32")
    prior.components  # noqa: B018
    return prior


def make_latents(batch_size: int, height: int = 8, width: int = 12, seed: int = 0):
    """(z_src, z_trg, noise): a source latent, a nearby target latent and a noise draw, non-square."""
    generator = torch.Generator().manual_seed(seed)
    z_src = torch.randn(batch_size, 4, height, width, generator=generator)
    z_trg = z_src + 0.3 * torch.randn(batch_size, 4, height, width, generator=generator)
    noise = torch.randn(batch_size, 4, height, width, generator=generator)
    return z_src, z_trg, noise


def unet_eps(prior, z_t, t, text_emb):
    """A direct, unbatched-by-us UNet call: the independent reference for every formula test."""
    return prior.unet(z_t, t, encoder_hidden_states=text_emb).sample


def cfg_eps(prior, z_t, t, text_emb, scale):
    """Classifier-free guidance written out with two separate UNet calls."""
    uncond = unet_eps(prior, z_t, t, prior.null_embedding.expand(z_t.shape[0], -1, -1))
    cond = unet_eps(prior, z_t, t, text_emb)
    return uncond + scale * (cond - uncond)
