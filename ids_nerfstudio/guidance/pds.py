"""Posterior Distillation Sampling (Koo et al.): match the stochastic latents of source and target.

On a DDIM grid of ``num_ddim_steps`` steps (stride s = T / steps), for t and t' = t - s and shared noises
eps_t, eps_t':  ``z~ = (x_t' - mu(x_t, eps_cfg)) / sigma_t`` for source and target, and ``grad = z~_trg - z~_src``.
mu and sigma are the DDPM posterior q(x_t' | x_t, x_0) of the jump t -> t' with x_0 from Tweedie's formula.

Difference from the official code: the official code uses the single-step beta_t and alpha_t of the 1000-step
schedule for a jump of s steps; here the jump's own ``alpha = a_t / a_t'`` and ``beta = 1 - alpha`` are
used, which is the posterior the paper's Eq. 6-9 define on that grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tyro.conf import Suppress

from ids_nerfstudio.guidance.base import (
    Guidance,
    GuidanceConfig,
    Latents,
    TextEmbeddings,
    Timesteps,
    add_noise,
    per_sample,
    predict_x0,
    random_normal_like,
    sample_timesteps,
)


def posterior_coefficients(
    alphas_cumprod: Tensor, t: Int[Tensor, " B"], t_prev: Int[Tensor, " B"]
) -> tuple[Float[Tensor, " B"], Float[Tensor, " B"], Float[Tensor, " B"]]:
    """(c_x0, c_xt, sigma) of ``q(x_t' | x_t, x_0) = N(c_x0 x_0 + c_xt x_t, sigma^2)`` for the jump t -> t'."""
    a_t, a_prev = alphas_cumprod[t], alphas_cumprod[t_prev]
    alpha = a_t / a_prev
    beta = 1 - alpha
    c_x0 = a_prev.sqrt() * beta / (1 - a_t)
    c_xt = alpha.sqrt() * (1 - a_prev) / (1 - a_t)
    sigma = ((1 - a_prev) / (1 - a_t) * beta).sqrt()
    return c_x0, c_xt, sigma


class PDS(Guidance):
    """Posterior Distillation Sampling; both branches in one UNet call of 4B rows."""

    config: PDSConfig

    @property
    def stride(self) -> int:
        """Timesteps between neighbouring points of the DDIM grid."""
        return len(self.prior.alphas_cumprod) // self.config.num_ddim_steps

    def sample_timesteps(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """t on the DDIM grid (leading spacing with SD's offset of 1), its index in [t_min, t_max) of the grid."""
        steps = self.config.num_ddim_steps
        low, high = max(int(steps * self.config.t_min), 1), int(steps * self.config.t_max)
        index = sample_timesteps(batch_size, low, high, device=device, generator=generator)
        return index * self.stride + self.config.timestep_offset

    def compute_grad(
        self,
        z_trg: Latents,
        z_src: Latents,
        t: Timesteps,
        noise: Latents,
        text: TextEmbeddings,
        *,
        generator: torch.Generator | None = None,
        noise_prev: Latents | None = None,
        **_: Any,
    ) -> tuple[Latents, dict[str, Tensor]]:
        alphas_cumprod = self.prior.alphas_cumprod
        noise_prev = random_normal_like(z_trg, generator) if noise_prev is None else noise_prev
        t_prev = t - self.stride
        if (t_prev < 0).any():
            raise ValueError(f"PDS needs t >= {self.stride} (the DDIM stride), got t={t.tolist()}")
        x0 = torch.cat([z_src, z_trg])
        tt, tt_prev = torch.cat([t, t]), torch.cat([t_prev, t_prev])
        x_t = add_noise(x0, torch.cat([noise, noise]), tt, alphas_cumprod)
        eps = self.prior.predict_noise(x_t, tt, torch.cat([text.src, text.trg]), self.config.guidance_scale)
        c_x0, c_xt, sigma = posterior_coefficients(alphas_cumprod, tt, tt_prev)
        mean = per_sample(c_x0, x_t) * predict_x0(x_t, eps, tt, alphas_cumprod) + per_sample(c_xt, x_t) * x_t
        x_prev = add_noise(x0, torch.cat([noise_prev, noise_prev]), tt_prev, alphas_cumprod)
        latent_src, latent_trg = ((x_prev - mean) / per_sample(sigma, x_t)).chunk(2)
        return latent_trg - latent_src, {}


@dataclass
class PDSConfig(GuidanceConfig):
    """Posterior Distillation Sampling (NeRF settings of the official code)."""

    _target: Suppress[type] = field(default_factory=lambda: PDS)
    guidance_scale: float = 100.0
    """Classifier-free guidance scale (official NeRF setting: 100)."""
    num_ddim_steps: int = 500
    """Points of the DDIM grid on which t and t' = t - stride are chosen."""
    t_min: float = 0.02
    """Smallest grid index, as a fraction of num_ddim_steps."""
    t_max: float = 0.98
    """Largest grid index (exclusive), as a fraction of num_ddim_steps."""
    timestep_offset: int = 1
    """Offset of the DDIM grid (Stable Diffusion's steps_offset)."""
