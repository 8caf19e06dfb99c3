"""Guidance rules: SDS, DDS, IDS (= DDS + FPR), CDS, PDS and CSD behind one call contract.

Each config builds its guidance with ``config.setup(prior=prior)``; a guidance is called as
``guidance(z_trg, z_src, prompt_trg, prompt_src, t=None, noise=None) -> GuidanceOutput``.

``GUIDANCE_METHODS`` is the one registry of methods: the nerfstudio methods (``<name>-edit`` and
``<name>-edit-demo``, their entry points included), the 2D editor's subcommands and ``ids-compare``'s choices
are all built from it. Adding a method means adding its module and one entry here.
"""

from dataclasses import dataclass

from ids_nerfstudio.guidance.base import Guidance, GuidanceConfig, GuidanceOutput
from ids_nerfstudio.guidance.cds import CDS, CDSConfig
from ids_nerfstudio.guidance.csd import CSD, CSDConfig
from ids_nerfstudio.guidance.dds import DDS, DDSConfig, IDSConfig
from ids_nerfstudio.guidance.fpr import fixed_point_regularization
from ids_nerfstudio.guidance.pds import PDS, PDSConfig
from ids_nerfstudio.guidance.sds import SDS, SDSConfig


@dataclass(frozen=True)
class GuidanceMethod:
    """A guidance method as the command-line tools offer it."""

    config: type[GuidanceConfig]
    """Its config class; the defaults are the method's official settings."""
    summary: str
    """One line for ``--help`` and ns-train's list of methods."""
    views_per_step: int = 1
    """Views rendered per NeRF editing step (CSD's particles)."""
    instruction_prior: bool = False
    """Uses InstructPix2Pix by default (the target prompt is then an edit instruction)."""


GUIDANCE_METHODS: dict[str, GuidanceMethod] = {
    "ids": GuidanceMethod(IDSConfig, "IDS: DDS whose noise is fixed-point regularized (keeps the identity)."),
    "dds": GuidanceMethod(DDSConfig, "DDS: Delta Denoising Score."),
    "cds": GuidanceMethod(CDSConfig, "CDS: DDS plus a contrastive (PatchNCE) loss on UNet self-attention features."),
    "pds": GuidanceMethod(PDSConfig, "PDS: Posterior Distillation Sampling (stochastic latents matched along DDIM)."),
    "sds": GuidanceMethod(SDSConfig, "SDS: Score Distillation Sampling toward the target prompt."),
    "csd": GuidanceMethod(
        CSDConfig,
        "CSD-Edit: SVGD over views with InstructPix2Pix (the target prompt is the instruction).",
        views_per_step=2,
        instruction_prior=True,
    ),
}
"""Every guidance method, by its command-line name (the first is the default)."""

__all__ = [
    "CDS",
    "CDSConfig",
    "CSD",
    "CSDConfig",
    "DDS",
    "DDSConfig",
    "GUIDANCE_METHODS",
    "Guidance",
    "GuidanceConfig",
    "GuidanceMethod",
    "GuidanceOutput",
    "IDSConfig",
    "PDS",
    "PDSConfig",
    "SDS",
    "SDSConfig",
    "fixed_point_regularization",
]
