"""Delta Denoising Score (Hertz et al.) and IDS (= DDS + fixed-point regularization).

DDS: ``eps_cfg(z_t_trg, y_trg) - eps_cfg(z_t_src, y_src)`` with one shared noise; both branches go through
one UNet call of 4B rows. IDS replaces the shared noise with FPR's eps*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tyro.conf import Suppress

from ids_nerfstudio.guidance.base import Guidance, GuidanceConfig, Latents, TextEmbeddings, Timesteps, add_noise
from ids_nerfstudio.prior.base import DiffusionPrior


def delta_denoising_score(
    prior: DiffusionPrior,
    z_trg: Latents,
    z_src: Latents,
    t: Timesteps,
    noise: Latents,
    text: TextEmbeddings,
    guidance_scale: float,
) -> Tensor:
    """``eps_cfg(z_t_trg, y_trg) - eps_cfg(z_t_src, y_src)``, one UNet call on rows [src; trg] x [uncond; cond]."""
    alphas_cumprod = prior.alphas_cumprod
    z_t = torch.cat([add_noise(z_src, noise, t, alphas_cumprod), add_noise(z_trg, noise, t, alphas_cumprod)])
    eps_src, eps_trg = prior.predict_noise(
        z_t, torch.cat([t, t]), torch.cat([text.src, text.trg]), guidance_scale
    ).chunk(2)
    return eps_trg - eps_src


class DDS(Guidance):
    """Delta Denoising Score; with ``fpr_iters > 0`` it is IDS."""

    config: DDSConfig

    def compute_grad(
        self, z_trg: Latents, z_src: Latents, t: Timesteps, noise: Latents, text: TextEmbeddings, **_: Any
    ) -> tuple[Latents, dict[str, Tensor]]:
        return delta_denoising_score(self.prior, z_trg, z_src, t, noise, text, self.config.guidance_scale), {}


@dataclass
class DDSConfig(GuidanceConfig):
    """Delta Denoising Score: t ~ U{50..949}, CFG 7.5, shared noise."""

    _target: Suppress[type] = field(default_factory=lambda: DDS)


@dataclass
class IDSConfig(DDSConfig):
    """Identity-preserving Distillation Sampling: DDS whose shared noise is corrected by FPR (N=3, lambda=1)."""

    fpr_iters: int = 3
    """Fixed-point regularization iterations on the noisy source latent (IDS paper: 3)."""
    fpr_scale: float = 1.0
    """FPR step size lambda (IDS paper: 1.0)."""
