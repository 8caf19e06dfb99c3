"""Diffusion priors: frozen score functions with their text and image encoders."""

from typing import Any

from ids_nerfstudio.model_names import TINY
from ids_nerfstudio.prior.base import (
    AttentionCapture,
    CrossAttentionCapture,
    DiffusionComponents,
    DiffusionPrior,
    PriorLoadError,
    classifier_free_guidance,
)
from ids_nerfstudio.prior.instruct_pix2pix import InstructPix2PixPrior, InstructPix2PixPriorConfig
from ids_nerfstudio.prior.loading import components_factory
from ids_nerfstudio.prior.stable_diffusion import StableDiffusionPrior, StableDiffusionPriorConfig


def tiny_stable_diffusion(seed: int = 0, **kwargs: Any) -> StableDiffusionPrior:
    """A tiny random-weight Stable Diffusion prior (SD-1.x schedule, VAE downsampling 2). Built on first use."""
    return StableDiffusionPrior(TINY, components_factory=components_factory(TINY, None, seed=seed), **kwargs)


def tiny_instruct_pix2pix(seed: int = 0, **kwargs: Any) -> InstructPix2PixPrior:
    """A tiny random-weight InstructPix2Pix prior (8 UNet input channels). Built on first use."""
    factory = components_factory(TINY, None, kind="instruct-pix2pix", seed=seed)
    return InstructPix2PixPrior(TINY, components_factory=factory, **kwargs)


__all__ = [
    "AttentionCapture",
    "CrossAttentionCapture",
    "DiffusionComponents",
    "DiffusionPrior",
    "InstructPix2PixPrior",
    "InstructPix2PixPriorConfig",
    "PriorLoadError",
    "StableDiffusionPrior",
    "StableDiffusionPriorConfig",
    "classifier_free_guidance",
    "components_factory",
    "tiny_instruct_pix2pix",
    "tiny_stable_diffusion",
]
