"""Diffusion priors: frozen score functions with their text and image encoders."""

from ids_nerfstudio.prior.base import AttentionCapture, DiffusionPrior, PriorLoadError, classifier_free_guidance
from ids_nerfstudio.prior.instruct_pix2pix import InstructPix2PixPrior, InstructPix2PixPriorConfig
from ids_nerfstudio.prior.stable_diffusion import StableDiffusionPrior, StableDiffusionPriorConfig
from ids_nerfstudio.prior.tiny import tiny_instruct_pix2pix, tiny_stable_diffusion

__all__ = [
    "AttentionCapture",
    "DiffusionPrior",
    "InstructPix2PixPrior",
    "InstructPix2PixPriorConfig",
    "PriorLoadError",
    "StableDiffusionPrior",
    "StableDiffusionPriorConfig",
    "classifier_free_guidance",
    "tiny_instruct_pix2pix",
    "tiny_stable_diffusion",
]
