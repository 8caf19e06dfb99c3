"""Stable Diffusion (diffusers) as a ``DiffusionPrior``: lazy loading, fp16 on CUDA, cached text embeddings."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tyro.conf import Suppress

from ids_nerfstudio.configs import InstantiateConfig
from ids_nerfstudio.model_names import DEFAULT_SD_MODEL, ModelKind, has_closed_vocabulary
from ids_nerfstudio.prior import loading
from ids_nerfstudio.prior.base import (
    AttentionCapture,
    CrossAttentionCapture,
    DiffusionComponents,
    capture_cross_attention_probabilities,
    capture_up_block_self_attention,
    classifier_free_guidance,
)
from ids_nerfstudio.prior.loading import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


class StableDiffusionPrior:
    """A frozen Stable Diffusion model (any SD-1.x/2.x diffusers folder or hub id) as a score function.

    Nothing is loaded at construction: the weights are loaded on first use, so a NeRF that is only
    rendered never touches them. All weights are frozen (``requires_grad_(False)``, ``eval()``).
    """

    image_conditional = False
    model_kind: ClassVar[ModelKind] = "diffusion"
    """What kind of model a name is resolved to (InstructPix2Pix: its UNet also sees the image latent)."""

    def __init__(
        self,
        model: str = DEFAULT_SD_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        components_factory: Callable[[], DiffusionComponents] | None = None,
    ) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._factory = components_factory or loading.components_factory(model, self.dtype, kind=self.model_kind)
        self._components: DiffusionComponents | None = None
        self._text_cache: dict[str, Tensor] = {}

    # ----------------------------------------------------------------------------------------- loading
    @property
    def is_loaded(self) -> bool:
        """Whether the weights have been loaded yet."""
        return self._components is not None

    @property
    def components(self) -> DiffusionComponents:
        """The loaded, frozen components (loaded on first access)."""
        if self._components is None:
            logger.info("loading diffusion model %s on %s (%s)", self.model, self.device, self.dtype)
            components = self._factory()
            for module in (components.unet, components.vae, components.text_encoder):
                module.requires_grad_(False).eval().to(self.device)
                if module.dtype != self.dtype:
                    module.to(self.dtype)
            components.alphas_cumprod = components.alphas_cumprod.to(self.device, torch.float32)
            self._components = components
        return self._components

    @property
    def unet(self) -> nn.Module:
        """The frozen UNet."""
        return self.components.unet

    @property
    def vae(self) -> nn.Module:
        """The frozen VAE."""
        return self.components.vae

    @property
    def alphas_cumprod(self) -> Float[Tensor, " T"]:
        """The training schedule alpha-bar (float32, on the prior's device)."""
        return self.components.alphas_cumprod

    @property
    def steps_offset(self) -> int:
        """Offset of the model's own inference grid (its scheduler's ``steps_offset``: 1 for SD, 0 for the demo)."""
        return self.components.steps_offset

    @property
    def latent_downsample(self) -> int:
        """How many image pixels one latent pixel covers along each side (8 for SD, 2 for the tiny VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this for the VAE and the UNet's down/up-sampling to line up."""
        return self.latent_downsample * 2 ** (len(self.unet.config.down_block_types) - 1)

    # -------------------------------------------------------------------------------------------- text
    def encode_text(self, prompts: Sequence[str]) -> Float[Tensor, "N L D"]:
        """Text embeddings for a list of prompts; each distinct prompt is encoded once and cached."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tokenizer = self.components.tokenizer
            tokens = tokenizer(
                missing,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            with torch.no_grad():
                embeddings = self.components.text_encoder(tokens)[0]
            self._text_cache.update(zip(missing, embeddings, strict=True))
        return torch.stack([self._text_cache[p] for p in prompts])

    def tokenize(self, prompt: str) -> list[str]:
        """The tokens of ``prompt`` at the positions of its text embedding (start token first, truncated at the
        tokenizer's length as ``encode_text`` truncates; the padding after the end token is left out)."""
        tokenizer = self.components.tokenizer
        ids = tokenizer(prompt, max_length=tokenizer.model_max_length, truncation=True).input_ids
        return tokenizer.convert_ids_to_tokens(ids)

    def prompt_warnings(self, prompts: Sequence[str]) -> list[str]:
        """One line for each prompt the text encoder will not read whole: the words a closed vocabulary lacks (the
        demo prior's), and what is cut at the tokenizer's length (``encode_text`` truncates, as diffusers does)."""
        tokenizer = self.components.tokenizer
        limit = tokenizer.model_max_length
        lines = []
        for prompt in dict.fromkeys(p for p in prompts if p.strip()):
            if has_closed_vocabulary(self.model):
                words = dict.fromkeys(re.findall(r"[a-z]+", prompt.lower()))
                unknown = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
                if unknown:
                    known = sorted(t[:-4] for t in tokenizer.get_vocab() if t.endswith("</w>") and t[:-4].isalpha()
                                   and len(t) > 5)  # fmt: skip
                    lines.append(f"prompt {prompt!r}: the {self.model} prior does not know {', '.join(unknown)}; it "
                                 f"knows a, {', '.join(known)}")  # fmt: skip
            ids = tokenizer(prompt, verbose=False).input_ids  # untruncated, with its start and end tokens
            if len(ids) > limit:
                cut = tokenizer.decode(ids[limit - 1 : -1])
                lines.append(f"prompt {prompt!r} is {len(ids)} tokens, over the text encoder's {limit}: {cut!r} is cut")
        return lines

    @property
    def null_embedding(self) -> Float[Tensor, "1 L D"]:
        """The embedding of the empty prompt, used as the unconditional branch of CFG."""
        return self.encode_text([""])

    # -------------------------------------------------------------------------------------------- unet
    def _unet(self, z: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        return self.unet(z.to(self.dtype), t, encoder_hidden_states=text_emb.to(self.dtype)).sample

    def predict_noise(
        self,
        z_t: Float[Tensor, "B C H W"],
        t: Int[Tensor, " B"],
        text_emb: Float[Tensor, "B L D"] | None,
        guidance_scale: float | None,
        *,
        image_cond: Float[Tensor, "B C H W"] | None = None,
    ) -> Float[Tensor, "B C H W"]:
        """Noise prediction; with CFG, one UNet call on the rows ``[unconditional; conditional]``."""
        if image_cond is not None:
            raise ValueError("Stable Diffusion takes no image condition: use InstructPix2PixPrior for that")
        if text_emb is None:
            raise ValueError("Stable Diffusion needs a text embedding (use null_embedding for none)")
        t = t.to(self.device).expand(z_t.shape[0])
        if guidance_scale is None:
            return self._unet(z_t, t, text_emb).to(z_t.dtype)
        null = self.null_embedding.expand_as(text_emb)
        eps = self._unet(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([null, text_emb])).to(z_t.dtype)
        eps_uncond, eps_cond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)

    def capture_self_attention(self, rows: slice | None = None) -> contextlib.AbstractContextManager[AttentionCapture]:
        """Record up-block self-attention outputs (rows of the UNet batch) of the calls inside the context."""
        return capture_up_block_self_attention(self.unet, rows)

    def capture_cross_attention(
        self, rows: slice | None = None
    ) -> contextlib.AbstractContextManager[CrossAttentionCapture]:
        """Record every layer's cross-attention probabilities (rows of the UNet batch) of the calls inside the
        context; InstructPix2Pix inherits it (its UNet attends to the instruction the same way)."""
        return capture_cross_attention_probabilities(self.unet, rows)

    # --------------------------------------------------------------------------------------------- vae
    def encode_images(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] to scaled latents (the mean of the latent distribution, no sampling noise)."""
        x = images.to(self.device, self.dtype) * 2 - 1
        posterior = self.vae.encode(x).latent_dist
        return (posterior.mean * self.vae.config.scaling_factor).to(images.dtype)

    def decode_latents(self, latents: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Scaled latents to images in [0, 1]."""
        x = self.vae.decode(latents.to(self.device, self.dtype) / self.vae.config.scaling_factor).sample
        return (x.to(latents.dtype) / 2 + 0.5).clamp(0, 1)


@dataclass
class StableDiffusionPriorConfig(InstantiateConfig):
    """Which Stable Diffusion model to use as the prior, and where to run it."""

    _target: Suppress[type] = field(default_factory=lambda: StableDiffusionPrior)
    model: str = DEFAULT_SD_MODEL
    """Hub id or local diffusers folder of the model; "demo" for the packaged demo prior (learned on the demo
    world, runs offline on a CPU); "tiny" for the random-weight test model (wiring only, no edits)."""
    device: str = "auto"
    """Device of the diffusion model, e.g. cuda:1 to put it on a second GPU ("auto": CUDA if available)."""
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    """Weights and activations dtype ("auto": float16 on CUDA, float32 on the CPU)."""

    def setup(self, **kwargs: Any) -> StableDiffusionPrior:
        """Build the prior (lazily: no weights are loaded until first use)."""
        return self._target(self.model, device=self.device, dtype=self.dtype, **kwargs)

    def validate(self, flag_prefix: str = "") -> None:
        """Raise ``UserError`` for a model path that does not exist, a packaged name without a model of this kind
        (the demo prior has no InstructPix2Pix) or a device this machine lacks."""
        loading.check_model_name(self.model, self._target.model_kind, flag_prefix + "model")
        loading.check_device(self.device, flag_prefix + "device")
