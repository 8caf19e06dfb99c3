"""InstructPix2Pix as a ``DiffusionPrior``: noise prediction conditioned on an instruction and a source image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tyro.conf import Suppress

from ids_nerfstudio.model_names import DEFAULT_IP2P_MODEL, ModelKind
from ids_nerfstudio.prior.base import classifier_free_guidance
from ids_nerfstudio.prior.stable_diffusion import StableDiffusionPrior, StableDiffusionPriorConfig


class InstructPix2PixPrior(StableDiffusionPrior):
    """InstructPix2Pix (Brooks et al.): the UNet sees the noisy latent concatenated with the source image latent.

    ``image_cond`` is given as scaled latents (what ``encode_images`` returns); InstructPix2Pix was trained
    on unscaled latents, so they are divided by the VAE scaling factor here.
    """

    image_conditional = True
    model_kind: ClassVar[ModelKind] = "instruct-pix2pix"

    def __init__(self, model: str = DEFAULT_IP2P_MODEL, *, image_guidance_scale: float = 1.5, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.image_guidance_scale = image_guidance_scale

    def predict_noise(
        self,
        z_t: Float[Tensor, "B C H W"],
        t: Int[Tensor, " B"],
        text_emb: Float[Tensor, "B L D"] | None,
        guidance_scale: float | None,
        *,
        image_cond: Float[Tensor, "B C H W"] | None = None,
    ) -> Float[Tensor, "B C H W"]:
        """Three-way CFG: ``eps_00 + s_img (eps_i0 - eps_00) + s_txt (eps_it - eps_i0)``, one UNet call.

        Rows are ``[no text, no image; no text, image; text, image]``. With ``text_emb=None`` the text
        branch is dropped (image-only guidance, two rows: the CSD-Edit baseline). With
        ``guidance_scale=None`` it is a single pass conditioned on both text and image.
        """
        if image_cond is None:
            raise ValueError("InstructPix2Pix needs the source image latents as image_cond")
        t = t.to(self.device).expand(z_t.shape[0])
        image = image_cond.to(z_t) / self.vae.config.scaling_factor
        no_image = torch.zeros_like(image)
        null = self.null_embedding.expand(z_t.shape[0], -1, -1)
        if guidance_scale is None:
            if text_emb is None:
                raise ValueError("a single InstructPix2Pix pass needs a text embedding")
            return self._unet(torch.cat([z_t, image], dim=1), t, text_emb).to(z_t.dtype)
        rows = [(no_image, null), (image, null)] + ([(image, text_emb)] if text_emb is not None else [])
        latents = torch.cat([torch.cat([z_t, img], dim=1) for img, _ in rows])
        eps = self._unet(latents, t.repeat(len(rows)), torch.cat([emb for _, emb in rows])).to(z_t.dtype)
        eps_none, eps_image, *eps_text = eps.chunk(len(rows))
        guided = classifier_free_guidance(eps_none, eps_image, self.image_guidance_scale)
        if eps_text:
            guided = guided + guidance_scale * (eps_text[0] - eps_image)
        return guided


@dataclass
class InstructPix2PixPriorConfig(StableDiffusionPriorConfig):
    """InstructPix2Pix prior (for CSD-Edit)."""

    _target: Suppress[type] = field(default_factory=lambda: InstructPix2PixPrior)
    model: str = DEFAULT_IP2P_MODEL
    """Hub id or local diffusers folder of InstructPix2Pix, or "tiny" for the offline random-weight test model."""
    image_guidance_scale: float = 1.5
    """CFG scale of the source-image condition."""

    def setup(self, **kwargs: Any) -> InstructPix2PixPrior:
        """Build the prior (lazily: no weights are loaded until first use)."""
        return self._target(
            self.model, device=self.device, dtype=self.dtype, image_guidance_scale=self.image_guidance_scale, **kwargs
        )
