"""Score Distillation Sampling (Poole et al., DreamFusion): ``w(t) (eps_cfg(z_t, y_trg) - eps)``.

With FPR the injected noise is eps* computed from the source, which keeps more of the source (IDS supp. E).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor
from tyro.conf import Suppress

from ids_nerfstudio.guidance.base import Guidance, GuidanceConfig, GuidanceInputs
from ids_nerfstudio.guidance.formulas import Latents, add_noise, sds_weight


class SDS(Guidance):
    """SDS with DreamFusion's weighting ``w(t) = 1 - alpha-bar_t``."""

    config: SDSConfig

    def compute_grad(self, inputs: GuidanceInputs) -> tuple[Latents, dict[str, Tensor]]:
        z_trg, t, noise, alphas_cumprod = inputs.z_trg, inputs.t, inputs.noise, self.prior.alphas_cumprod
        eps = self.prior.predict_noise(
            add_noise(z_trg, noise, t, alphas_cumprod), t, inputs.text.trg, self.config.guidance_scale
        )
        return sds_weight(t, alphas_cumprod, z_trg) * (eps - noise), {}


@dataclass
class SDSConfig(GuidanceConfig):
    """Score Distillation Sampling."""

    _target: Suppress[type] = field(default_factory=lambda: SDS)
    guidance_scale: float = 100.0
    """Classifier-free guidance scale (DreamFusion uses 100)."""
    t_min: float = 0.02
    """Smallest timestep, as a fraction of the training schedule."""
    t_max: float = 0.98
    """Largest timestep, inclusive, as a fraction of the training schedule (t in [20, 980], as threestudio)."""
