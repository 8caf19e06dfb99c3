"""Posterior Distillation Sampling (Koo et al.): match the stochastic latents of source and target.

On a DDIM grid of ``num_ddim_steps`` steps (stride s = T / steps), for t and t' = t - s and shared noises
eps_t, eps_t':  ``z~ = (x_t' - mu(x_t, eps_cfg)) / sigma_t`` for source and target, and ``grad = z~_trg - z~_src``.
mu and sigma are posterior coefficients of the step t -> t' with x_0 from Tweedie's formula, in one of two forms:

- ``official`` (default, as KAIST-Visual-AI-Group/PDS): the single-step ``beta_t = 1 - a_t / a_{t-1}`` and
  ``alpha_t = 1 - beta_t`` of the 1000-step schedule, although t' = t - s is an s-step jump. This mismatch is
  what keeps the x0 term psi(t) (x0_trg - x0_src) of PDS Eq. 14 non-zero: the identity-preserving part.
- ``exact``: the jump's own ``alpha = a_t / a_t'``, ``beta = 1 - alpha`` (the true posterior q(x_t' | x_t, x_0)
  on that grid). Then c_x0 + c_xt sqrt(a_t) = sqrt(a_t'), so psi(t) = 0 identically and PDS reduces to
  chi(t) x DDS at the same CFG (the second shared noise has no effect): kept only to show that effect.

On the official 500-step grid the two differ by 41-44 % (relative norm of grad); they agree on a 1000-step grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tyro.conf import Suppress

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance.base import Guidance, GuidanceConfig, GuidanceInputs, flag
from ids_nerfstudio.guidance.formulas import (
    Latents,
    Timesteps,
    add_noise,
    fraction_range,
    per_sample,
    predict_x0,
    random_normal_like,
    sample_timesteps,
)


def posterior_coefficients(
    alphas_cumprod: Tensor,
    t: Int[Tensor, " B"],
    t_prev: Int[Tensor, " B"],
    posterior: Literal["official", "exact"] = "official",
) -> tuple[Float[Tensor, " B"], Float[Tensor, " B"], Float[Tensor, " B"]]:
    """(c_x0, c_xt, sigma) of the posterior ``N(c_x0 x_0 + c_xt x_t, sigma^2)`` of x_t' for the step t -> t'.

    ``exact`` uses the jump's own alpha = a_t / a_t'; ``official`` the single step's alpha_t = a_t / a_{t-1}.
    """
    a_t, a_prev = alphas_cumprod[t], alphas_cumprod[t_prev]
    if posterior == "exact":
        alpha = a_t / a_prev
    elif posterior == "official":
        alpha = a_t / alphas_cumprod[(t - 1).clamp(min=0)].where(t > 0, torch.ones_like(a_t))
    else:
        raise ValueError(f"unknown PDS posterior {posterior!r}: use official or exact")
    beta = 1 - alpha
    c_x0 = a_prev.sqrt() * beta / (1 - a_t)
    c_xt = alpha.sqrt() * (1 - a_prev) / (1 - a_t)
    sigma = ((1 - a_prev) / (1 - a_t) * beta).sqrt()
    return c_x0, c_xt, sigma


class PDS(Guidance):
    """Posterior Distillation Sampling; both branches in one UNet call of 4B rows."""

    config: PDSConfig
    uses_noise_prev = True

    @property
    def stride(self) -> int:
        """Timesteps between neighbouring points of the DDIM grid."""
        return len(self.prior.alphas_cumprod) // self.config.num_ddim_steps

    def sample_timesteps(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Timesteps:
        """t on the DDIM grid (leading spacing with SD's offset of 1), its index in [t_min, t_max] of the grid."""
        low, high = fraction_range(self.config.t_min, self.config.t_max, self.config.num_ddim_steps)
        index = sample_timesteps(batch_size, max(low, 1), high, device=device, generator=generator)
        return index * self.stride + self.config.timestep_offset

    def compute_grad(self, inputs: GuidanceInputs) -> tuple[Latents, dict[str, Tensor]]:
        alphas_cumprod, t, noise, text = self.prior.alphas_cumprod, inputs.t, inputs.noise, inputs.text
        noise_prev = inputs.noise_prev
        if noise_prev is None:
            noise_prev = random_normal_like(inputs.z_trg, inputs.generator)
        t_prev = t - self.stride
        if (t_prev < 0).any():
            raise ValueError(f"PDS needs t >= {self.stride} (the DDIM stride), got t={t.tolist()}")
        x0 = torch.cat([inputs.z_src, inputs.z_trg])
        tt, tt_prev = torch.cat([t, t]), torch.cat([t_prev, t_prev])
        x_t = add_noise(x0, torch.cat([noise, noise]), tt, alphas_cumprod)
        eps = self.prior.predict_noise(x_t, tt, torch.cat([text.src, text.trg]), self.config.guidance_scale)
        c_x0, c_xt, sigma = posterior_coefficients(alphas_cumprod, tt, tt_prev, self.config.posterior)
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
    """Smallest grid index, as a fraction of num_ddim_steps (official: index 10, t = 21)."""
    t_max: float = 0.978
    """Largest grid index, inclusive, as a fraction of num_ddim_steps (official: index 489, t = 979)."""
    timestep_offset: int = 1
    """Offset of the DDIM grid (Stable Diffusion's steps_offset)."""
    posterior: Literal["official", "exact"] = "official"
    """Posterior of the step t -> t': official (single-step beta_t; keeps the identity term psi) or exact (the
    jump's own beta; psi = 0 and PDS becomes a scaled DDS)."""

    def validate(self, flag_prefix: str = "") -> None:
        super().validate(flag_prefix)
        if self.num_ddim_steps < 2 or self.timestep_offset < 0:
            raise UserError(
                f"{flag(flag_prefix, 'num_ddim_steps')} / {flag(flag_prefix, 'timestep_offset')}: need at least 2 "
                f"DDIM steps and an offset >= 0, got {self.num_ddim_steps} and {self.timestep_offset}"
            )
