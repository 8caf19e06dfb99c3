"""Collaborative Score Distillation (Kim et al.): SVGD over the batch, whose samples (views) are the particles.

All particles share t and the noise level. With per-view deltas ``d_j`` and an RBF kernel K on the flattened
noisy target latents,

    g_i = w(t) / N * ( sum_j K_ji d_j  -  sum_j grad_{x_j} K(x_j, x_i) ),     w(t) = 1 - alpha-bar_t,

in the descent convention ``z <- z - lr * g``: descending the second term pushes particles apart, as the official
code (subin-kim-cv/CSD) does; only the paper's printed Eq. 8 has a + there. ``d_j`` is the DDS delta with Stable
Diffusion, or with InstructPix2Pix (CSD-Edit) ``eps(x_t; src image, y) - eps(src_t; src image)``. FPR, when
enabled, corrects the noise of ``d_j`` only.

Differences from the official code: the bandwidth is median / log N (the paper's appendix) where the official
code uses median / log(N + 1), which gives NaN for N = 1 and 2 there (here N = 1 gives K = [[1]]); the median
leaves out the diagonal. InstructPix2Pix gets the unscaled image latent, as diffusers' pipeline and its training
do, where the official code feeds it multiplied by 0.18215 (a fix). The source branch is the image-only
baseline, which equals the official source branch for its default empty source prompt.

The paper's ablations (Table 3, Fig. 7) are switches: ``svgd=False`` gives each particle ``w(t) d_i`` alone (the
N = 1 update per particle; the official ablation also drops w(t), which changes the step size as well as the
coupling), and ``baseline="noise"`` subtracts the injected noise instead of the source score (SDS's baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tyro.conf import Suppress

from ids_nerfstudio.guidance.base import Guidance, GuidanceConfig, GuidanceInputs, TextEmbeddings
from ids_nerfstudio.guidance.dds import delta_denoising_score
from ids_nerfstudio.guidance.formulas import Latents, Timesteps, add_noise, sds_weight


def rbf_kernel(particles: Float[Tensor, "N D"]) -> tuple[Float[Tensor, "N N"], Float[Tensor, "N D"], Tensor]:
    """RBF kernel ``K_ij = exp(-|x_i - x_j|^2 / h)`` with h = median of pairwise squared distances / log N.

    Returns K, the repulsion ``-sum_j grad_{x_j} K(x_j, x_i)`` for every i, and h. The diagonal is excluded
    from the median; with one particle K = [[1]] and the repulsion is zero; coincident particles get a tiny
    floor on h instead of a division by zero. h is a constant of the update (not differentiated).
    """
    n = particles.shape[0]
    x = particles.to(torch.promote_types(particles.dtype, torch.float32))  # fp16 distances overflow
    squared = (x[:, None] - x[None]).pow(2).sum(-1)
    if n > 1:
        off_diagonal = squared[~torch.eye(n, dtype=torch.bool, device=x.device)]
        bandwidth = (off_diagonal.median() / math.log(n)).clamp(min=1e-8)
    else:
        bandwidth = x.new_tensor(1.0)
    kernel = torch.exp(-squared / bandwidth)
    # grad_{x_j} K(x_j, x_i) = -2/h (x_j - x_i) K_ji, so minus its sum over j is 2/h sum_j K_ji (x_j - x_i)
    repulsion = 2 / bandwidth * (kernel.T @ x - kernel.sum(0)[:, None] * x)
    return kernel, repulsion.to(particles.dtype), bandwidth


class CSD(Guidance):
    """Collaborative Score Distillation over the batch (CSD-Edit with an InstructPix2Pix prior)."""

    config: CSDConfig
    shares_timestep = True

    def source_score(self, z_t: Latents, t: Timesteps, text: TextEmbeddings, image_cond: Latents | None) -> Tensor:
        """With InstructPix2Pix the source branch is the image-only baseline; otherwise CFG with the source prompt."""
        if not self.prior.image_conditional:
            return super().source_score(z_t, t, text, image_cond)
        return self.prior.predict_noise(z_t, t, None, self.config.guidance_scale, image_cond=image_cond)

    def compute_grad(self, inputs: GuidanceInputs) -> tuple[Latents, dict[str, Tensor]]:
        alphas_cumprod, z_trg, t, noise = self.prior.alphas_cumprod, inputs.z_trg, inputs.t, inputs.noise
        text = inputs.text
        z_t_trg = add_noise(z_trg, noise, t, alphas_cumprod)
        if self.config.baseline == "noise":  # SDS's baseline: the injected noise
            image_cond = inputs.image_cond if self.prior.image_conditional else None
            eps = self.prior.predict_noise(z_t_trg, t, text.trg, self.config.guidance_scale, image_cond=image_cond)
            delta = eps - noise
        elif self.prior.image_conditional:
            image_cond, scale = inputs.image_cond, self.config.guidance_scale
            eps_edit = self.prior.predict_noise(z_t_trg, t, text.trg, scale, image_cond=image_cond)
            z_t_src = add_noise(inputs.z_src, noise, t, alphas_cumprod)
            delta = eps_edit - self.source_score(z_t_src, t, text, image_cond)
        else:
            delta = delta_denoising_score(self.prior, inputs, self.config.guidance_scale)
        weight = sds_weight(t, alphas_cumprod, z_trg)
        if not self.config.svgd:
            return weight * delta, {"noisy_target": z_t_trg}
        grad, extras = svgd_gradient(z_t_trg, delta, weight)
        return grad, {**extras, "noisy_target": z_t_trg}


def svgd_gradient(
    z_t: Float[Tensor, "N C H W"], delta: Float[Tensor, "N C H W"], weight: Float[Tensor, "N 1 1 1"]
) -> tuple[Float[Tensor, "N C H W"], dict[str, Tensor]]:
    """``g_i = w / N (sum_j K_ji d_j + repulsion_i)`` with the RBF kernel on the flattened noisy latents ``z_t``."""
    kernel, repulsion, bandwidth = rbf_kernel(z_t.flatten(1))
    mixed = (kernel.T.to(delta.dtype) @ delta.flatten(1)) + repulsion
    return weight / z_t.shape[0] * mixed.view_as(delta), {"kernel": kernel, "bandwidth": bandwidth}


@dataclass
class CSDConfig(GuidanceConfig):
    """Collaborative Score Distillation (CSD-Edit settings: text CFG 7.5, t in [0.02, 0.5])."""

    _target: Suppress[type] = field(default_factory=lambda: CSD)
    t_min: float = 0.02
    """Smallest timestep, as a fraction of the training schedule."""
    t_max: float = 0.5
    """Largest timestep, inclusive, as a fraction of the training schedule (official CSD-Edit: t in [20, 500])."""
    svgd: bool = True
    """Couple the particles by SVGD; False: each particle takes ``w(t) d_i`` alone (the paper's "without SVGD")."""
    baseline: Literal["source", "noise"] = "source"
    """What the target score is compared with: the source score (CSD-Edit) or the injected noise (the paper's
    random-noise ablation: SDS's baseline)."""
