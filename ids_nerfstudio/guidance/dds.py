"""Delta Denoising Score (Hertz et al.) and IDS (= DDS + fixed-point regularization).

DDS: ``eps_cfg(z_t_trg, y_trg) - eps_cfg(z_t_src, y_src)`` with one shared noise; both branches go through
one UNet call of 4B rows. IDS replaces the shared noise with FPR's eps*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tyro.conf import Suppress

from ids_nerfstudio.guidance.base import Guidance, GuidanceConfig, GuidanceInputs
from ids_nerfstudio.guidance.formulas import Latents, add_noise
from ids_nerfstudio.prior.base import DiffusionPrior


def delta_denoising_score(prior: DiffusionPrior, inputs: GuidanceInputs, guidance_scale: float) -> Latents:
    """``eps_cfg(z_t_trg, y_trg) - eps_cfg(z_t_src, y_src)``, one UNet call on rows [src; trg] x [uncond; cond]."""
    t, text = inputs.t, inputs.text
    z_t = add_noise(torch.cat([inputs.z_src, inputs.z_trg]), torch.cat([inputs.noise] * 2), torch.cat([t, t]),
                    prior.alphas_cumprod)  # fmt: skip
    eps_src, eps_trg = prior.predict_noise(
        z_t, torch.cat([t, t]), torch.cat([text.src, text.trg]), guidance_scale
    ).chunk(2)
    return eps_trg - eps_src


class DDS(Guidance):
    """Delta Denoising Score; with ``fpr_iters > 0`` it is IDS."""

    config: DDSConfig

    def compute_grad(self, inputs: GuidanceInputs) -> tuple[Latents, dict[str, Tensor]]:
        return delta_denoising_score(self.prior, inputs, self.config.guidance_scale), {}


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
