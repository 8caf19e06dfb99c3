"""The diffusion formulas every guidance shares, written once: noising, Tweedie, timestep sampling, the loss.

Sign convention: ``grad`` is a descent direction's negative, i.e. the optimizer does ``z <- z - lr * grad``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

Latents = Float[Tensor, "B C H W"]
"""A batch of latents (or of noises / gradients shaped like them)."""
Timesteps = Int[Tensor, " B"]
"""One integer diffusion timestep per sample."""


def per_sample(coefficient: Float[Tensor, " B"], like: Tensor) -> Tensor:
    """Reshape a per-sample coefficient to broadcast against a (B, ...) tensor."""
    return coefficient.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def add_noise(
    z_0: Float[Tensor, "B C H W"], noise: Float[Tensor, "B C H W"], t: Int[Tensor, " B"], alphas_cumprod: Tensor
) -> Float[Tensor, "B C H W"]:
    """Forward diffusion ``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`` with ``a_t = alpha-bar_t``."""
    a = per_sample(alphas_cumprod[t], z_0)
    return a.sqrt() * z_0 + (1 - a).sqrt() * noise


def predict_x0(
    z_t: Float[Tensor, "B C H W"], eps: Float[Tensor, "B C H W"], t: Int[Tensor, " B"], alphas_cumprod: Tensor
) -> Float[Tensor, "B C H W"]:
    """Tweedie's formula: the posterior mean ``(z_t - sqrt(1 - a_t) eps) / sqrt(a_t)``."""
    a = per_sample(alphas_cumprod[t], z_t)
    return (z_t - (1 - a).sqrt() * eps) / a.sqrt()


def noise_from_x0(
    z_t: Float[Tensor, "B C H W"], z_0: Float[Tensor, "B C H W"], t: Int[Tensor, " B"], alphas_cumprod: Tensor
) -> Float[Tensor, "B C H W"]:
    """The noise that takes ``z_0`` to ``z_t``: ``(z_t - sqrt(a_t) z_0) / sqrt(1 - a_t)`` (IDS Eq. 8)."""
    a = per_sample(alphas_cumprod[t], z_t)
    return (z_t - a.sqrt() * z_0) / (1 - a).sqrt()


def sds_weight(t: Int[Tensor, " B"], alphas_cumprod: Tensor, like: Tensor) -> Tensor:
    """DreamFusion's timestep weight ``w(t) = 1 - alpha-bar_t`` (SDS and CSD), shaped to broadcast against ``like``."""
    return per_sample(1 - alphas_cumprod[t], like)


def rng_device(generator: torch.Generator | None) -> torch.device | str:
    """Random draws happen on the generator's device (CPU by default), so seeds give the same draws anywhere."""
    return generator.device if generator is not None else "cpu"


def random_normal_like(z: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped, typed and placed like ``z``."""
    return torch.randn(z.shape, generator=generator, device=rng_device(generator)).to(z)


def sample_timesteps(
    batch_size: int,
    low: int,
    high: int,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
    shared: bool = False,
) -> Int[Tensor, " B"]:
    """Integers uniform in ``[low, high]`` (both inclusive), one per sample (or one for all if ``shared``)."""
    draws = 1 if shared else batch_size
    t = torch.randint(low, high + 1, (draws,), generator=generator, device=rng_device(generator))
    return t.to(device).expand(batch_size).contiguous()


def fraction_range(t_min: float, t_max: float, steps: int) -> tuple[int, int]:
    """The inclusive integer range ``[round(t_min steps), round(t_max steps)]`` of two fractions of a schedule."""
    return round(t_min * steps), min(round(t_max * steps), steps - 1)


def guidance_loss(z: Float[Tensor, "B C H W"], grad: Float[Tensor, "B C H W"]) -> Float[Tensor, ""]:
    """``0.5 ||z - sg(z - grad)||^2`` summed over latent dims and averaged over the batch.

    Its gradient with respect to ``z`` is ``grad / B``, so back-propagating it applies the guidance.
    """
    target = (z - grad).detach()
    return 0.5 * (z - target).pow(2).flatten(1).sum(1).mean()


def ddim_grid(num_steps: int, num_train_timesteps: int, offset: int = 0) -> Int[Tensor, " S"]:
    """A DDIM inference grid with diffusers' "leading" spacing, descending: ``(k * (T // S) + offset)`` for k =
    S - 1 .. 0 (Stable Diffusion's steps_offset 1 gives 951, 901, ..., 1 for S = 20)."""
    stride = num_train_timesteps // num_steps
    return (torch.arange(num_steps - 1, -1, -1) * stride + offset).long()


def ddim_step(
    z_t: Float[Tensor, "B C H W"],
    eps: Float[Tensor, "B C H W"],
    t: Int[Tensor, " B"],
    t_prev: Int[Tensor, " B"],
    alphas_cumprod: Tensor,
    final_alpha_cumprod: float | None = None,
) -> Float[Tensor, "B C H W"]:
    """One deterministic DDIM step (eta 0): ``sqrt(a_prev) x0(z_t, eps) + sqrt(1 - a_prev) eps``. A ``t_prev`` below
    0 (past the grid's end) uses ``final_alpha_cumprod``: diffusers' DDIM takes alpha-bar_0 there unless its config
    sets set_alpha_to_one (then 1); None means alpha-bar_0."""
    final = alphas_cumprod[0] if final_alpha_cumprod is None else alphas_cumprod.new_tensor(final_alpha_cumprod)
    a_prev = torch.where(t_prev >= 0, alphas_cumprod[t_prev.clamp(min=0)], final)
    a_prev = per_sample(a_prev, z_t)
    return a_prev.sqrt() * predict_x0(z_t, eps, t, alphas_cumprod) + (1 - a_prev).sqrt() * eps
