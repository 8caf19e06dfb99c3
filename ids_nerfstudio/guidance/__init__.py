"""Guidance rules: SDS, DDS, IDS (= DDS + FPR), CDS, PDS and CSD behind one call contract.

Each config builds its guidance with ``config.setup(prior=prior)``; a guidance is called as
``guidance(z_trg, z_src, prompt_trg, prompt_src, t=None, noise=None) -> GuidanceOutput``.

``GUIDANCE_METHODS`` is the one registry of methods: the nerfstudio methods (``<name><variant>`` for each of
``METHOD_VARIANTS``, their entry points included), the 2D editor's subcommands and ``ids-compare``'s choices are
all built from it. Adding a method means adding its module and one entry here.
"""

from dataclasses import dataclass

from ids_nerfstudio.guidance.base import Guidance, GuidanceConfig, GuidanceInputs, GuidanceOutput
from ids_nerfstudio.guidance.cds import CDS, CDSConfig
from ids_nerfstudio.guidance.csd import CSD, CSDConfig
from ids_nerfstudio.guidance.dds import DDS, DDSConfig, IDSConfig
from ids_nerfstudio.guidance.fpr import fixed_point_regularization
from ids_nerfstudio.guidance.pds import PDS, PDSConfig
from ids_nerfstudio.guidance.sds import SDS, SDSConfig
from ids_nerfstudio.prior import InstructPix2PixPriorConfig, StableDiffusionPriorConfig


@dataclass(frozen=True)
class GuidanceMethod:
    """A guidance method as the command-line tools offer it."""

    config: type[GuidanceConfig]
    """Its config class; the defaults are the method's official settings."""
    summary: str
    """One line for ``--help`` and ns-train's list of methods."""
    prior: type[StableDiffusionPriorConfig] = StableDiffusionPriorConfig
    """The prior config of the full-size method and of the 2D editor (its defaults name the model)."""
    views_per_step: int = 1
    """Views rendered per NeRF editing step (CSD's particles)."""

    @property
    def instruction_prior(self) -> bool:
        """Whether the prior is InstructPix2Pix (the target prompt is then an edit instruction)."""
        return issubclass(self.prior, InstructPix2PixPriorConfig)


GUIDANCE_METHODS: dict[str, GuidanceMethod] = {
    "ids": GuidanceMethod(IDSConfig, "IDS: DDS whose noise is fixed-point regularized (keeps the identity)."),
    "dds": GuidanceMethod(DDSConfig, "DDS: Delta Denoising Score."),
    "cds": GuidanceMethod(CDSConfig, "CDS: DDS plus a contrastive (PatchNCE) loss on UNet self-attention features."),
    "pds": GuidanceMethod(PDSConfig, "PDS: Posterior Distillation Sampling (stochastic latents matched along DDIM)."),
    "sds": GuidanceMethod(SDSConfig, "SDS: Score Distillation Sampling toward the target prompt."),
    "csd": GuidanceMethod(
        CSDConfig,
        "CSD-Edit: SVGD over views with InstructPix2Pix (the target prompt is the instruction).",
        prior=InstructPix2PixPriorConfig,
        views_per_step=2,
    ),
}
"""Every guidance method, by its command-line name (the first is the default)."""

METHOD_VARIANTS = ("-edit", "-edit-demo", "-splat-edit", "-splat-edit-demo")
"""The nerfstudio methods of each guidance NAME are NAME + a variant: nerfacto (``NAME-edit``) and Gaussian splats
(``NAME-splat-edit``), each full size and CPU-sized with the demo prior (setup.py reads this tuple too)."""


def nerfstudio_method_names() -> list[str]:
    """Every nerfstudio method of the plugin, as setup.py registers them (without building their configs)."""
    return [f"{name}{variant}" for name in GUIDANCE_METHODS for variant in METHOD_VARIANTS]


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
    "GuidanceInputs",
    "GuidanceMethod",
    "GuidanceOutput",
    "IDSConfig",
    "METHOD_VARIANTS",
    "PDS",
    "PDSConfig",
    "SDS",
    "SDSConfig",
    "fixed_point_regularization",
    "nerfstudio_method_names",
]
