"""Guidance rules: SDS, DDS, IDS (= DDS + FPR), CDS, PDS and CSD behind one call contract.

Each config builds its guidance with ``config.setup(prior=prior)``; a guidance is called as
``guidance(z_trg, z_src, prompt_trg, prompt_src, t=None, noise=None) -> GuidanceOutput``.
"""

from ids_nerfstudio.guidance.base import Guidance, GuidanceConfig, GuidanceOutput
from ids_nerfstudio.guidance.cds import CDS, CDSConfig
from ids_nerfstudio.guidance.csd import CSD, CSDConfig
from ids_nerfstudio.guidance.dds import DDS, DDSConfig, IDSConfig
from ids_nerfstudio.guidance.fpr import fixed_point_regularization
from ids_nerfstudio.guidance.pds import PDS, PDSConfig
from ids_nerfstudio.guidance.sds import SDS, SDSConfig

GUIDANCE_CONFIGS: dict[str, type[GuidanceConfig]] = {
    "sds": SDSConfig,
    "dds": DDSConfig,
    "ids": IDSConfig,
    "cds": CDSConfig,
    "pds": PDSConfig,
    "csd": CSDConfig,
}
"""Guidance configs by their command-line name."""

__all__ = [
    "CDS",
    "CDSConfig",
    "CSD",
    "CSDConfig",
    "DDS",
    "DDSConfig",
    "GUIDANCE_CONFIGS",
    "Guidance",
    "GuidanceConfig",
    "GuidanceOutput",
    "IDSConfig",
    "PDS",
    "PDSConfig",
    "SDS",
    "SDSConfig",
    "fixed_point_regularization",
]
