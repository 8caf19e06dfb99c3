"""What every guidance needs from a diffusion model: the ``DiffusionPrior`` protocol and its shared pieces.

A prior is a frozen score function with its text and image encoders. It is deliberately *not* an
``nn.Module``: a guidance or a NeRF model that holds one never sees its weights in ``state_dict`` or in
an optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor, nn

from ids_nerfstudio.errors import UserError


@dataclass
class DiffusionComponents:
    """The frozen pieces of a latent diffusion model."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    alphas_cumprod: Tensor
    steps_offset: int = 0
    """Offset of the scheduler's inference grid (``steps_offset`` of its config: 1 for Stable Diffusion)."""


class PriorLoadError(UserError):
    """A diffusion model could not be found or loaded (no network, bad path, incomplete folder)."""


def classifier_free_guidance(
    eps_uncond: Float[Tensor, "B C H W"], eps_cond: Float[Tensor, "B C H W"], guidance_scale: float
) -> Float[Tensor, "B C H W"]:
    """Classifier-free guidance in diffusers' convention: ``eps_u + s * (eps_c - eps_u)``."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


@dataclass
class AttentionCapture:
    """Self-attention outputs recorded by forward hooks during UNet calls (used by CDS).

    ``features[name]`` has shape (rows, h*w, C) and ``sizes[name]`` is that layer's real (h, w), so
    non-square latents are reshaped correctly.
    """

    rows: slice | None = None
    """Which batch rows of the UNet call to keep (None keeps all); keeping only the rows needed saves memory."""
    features: dict[str, Tensor] = field(default_factory=dict)
    """Captured self-attention outputs by module name, (rows, h*w, C)."""
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Spatial size (h, w) of each captured layer."""


@contextlib.contextmanager
def capture_up_block_self_attention(unet: nn.Module, rows: slice | None = None) -> Iterator[AttentionCapture]:
    """Record the outputs of the ``attn1`` (self-attention) modules of the UNet's up-blocks.

    Forward hooks are used instead of replacing the attention processors, so the fast fused attention
    (SDPA) and the frozen weights stay untouched. The spatial size of each layer is read by a pre-hook on
    its enclosing ``Transformer2DModel`` (whose input is B C H W).
    """
    capture = AttentionCapture(rows=rows)
    handles = []
    for block_name, block in unet.named_modules():
        if not block_name.startswith("up_blocks") or not hasattr(block, "transformer_blocks"):
            continue
        attn_names = [f"{block_name}.transformer_blocks.{i}.attn1" for i in range(len(block.transformer_blocks))]

        def record_size(_module, args, kwargs, names=attn_names):
            hidden = args[0] if args else kwargs["hidden_states"]
            for name in names:
                capture.sizes[name] = (hidden.shape[-2], hidden.shape[-1])

        handles.append(block.register_forward_pre_hook(record_size, with_kwargs=True))
        for i, transformer_block in enumerate(block.transformer_blocks):

            def record_output(_module, _args, output, name=attn_names[i]):
                capture.features[name] = output if capture.rows is None else output[capture.rows]

            handles.append(transformer_block.attn1.register_forward_hook(record_output))
    if not handles:
        raise ValueError("this UNet has no up-block self-attention layers to capture")
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()


@runtime_checkable
class DiffusionPrior(Protocol):
    """A frozen text-to-image diffusion model seen as a score function with an image encoder/decoder."""

    image_conditional: bool
    """True for priors whose noise prediction takes a source image (InstructPix2Pix)."""

    @property
    def alphas_cumprod(self) -> Float[Tensor, " T"]:
        """The training noise schedule (alpha-bar), float32 on the prior's device."""

    @property
    def null_embedding(self) -> Float[Tensor, "1 L D"]:
        """The text embedding of the empty prompt (cached)."""

    def encode_text(self, prompts: Sequence[str]) -> Float[Tensor, "N L D"]:
        """Text embeddings for a list of prompts (cached per prompt)."""

    def predict_noise(
        self,
        z_t: Float[Tensor, "B C H W"],
        t: Int[Tensor, " B"],
        text_emb: Float[Tensor, "B L D"] | None,
        guidance_scale: float | None,
        *,
        image_cond: Float[Tensor, "B C H W"] | None = None,
    ) -> Float[Tensor, "B C H W"]:
        """Noise prediction with classifier-free guidance in one batched UNet call.

        With ``guidance_scale=None`` it is a single conditional pass. With CFG the UNet sees the rows
        ``[unconditional; conditional]`` in that order (what ``capture_self_attention`` rows refer to).
        """

    def encode_images(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        """Images in [0, 1] to latents (mean of the latent distribution times the VAE scaling factor)."""

    def decode_latents(self, latents: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 3 H W"]:
        """Latents back to images in [0, 1]."""

    def capture_self_attention(self, rows: slice | None = None) -> contextlib.AbstractContextManager[AttentionCapture]:
        """Context manager recording up-block self-attention outputs of the UNet calls inside it."""
