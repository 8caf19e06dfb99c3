"""What every guidance needs from a diffusion model: the ``DiffusionPrior`` protocol and its shared pieces.

A prior is a frozen score function with its text and image encoders. It is deliberately *not* an
``nn.Module``: a guidance or a NeRF model that holds one never sees its weights in ``state_dict`` or in
an optimizer.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
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


@dataclass
class CrossAttentionCapture:
    """Cross-attention probabilities (image positions to text tokens) recorded by forward hooks during UNet calls.

    ``probabilities[name]`` has shape (rows, h*w, L): the softmax over the L text tokens of each image position,
    averaged over the layer's heads; ``sizes[name]`` is that layer's (h, w).
    """

    rows: slice | None = None
    """Which batch rows of the UNet call to keep (None keeps all)."""
    probabilities: dict[str, Tensor] = field(default_factory=dict)
    """Head-mean attention probabilities by module name, (rows, h*w, L), float32."""
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Spatial size (h, w) of each captured layer."""


def _hook_attention_layers(
    unet: nn.Module, attn: str, prefix: str, sizes: dict[str, tuple[int, int]], hook: Callable[..., Any], *, pre: bool
) -> list[Any]:
    """Register ``hook`` on every ``attn`` module ("attn1": self-, "attn2": cross-attention) of the transformer blocks
    under module names starting with ``prefix`` (a forward pre-hook with kwargs if ``pre``, else a forward hook), and
    a pre-hook on each enclosing ``Transformer2DModel`` (its input is B C H W) that records the layers' (h, w)."""
    handles = []
    for block_name, block in unet.named_modules():
        if not block_name.startswith(prefix) or not hasattr(block, "transformer_blocks"):
            continue
        names = [f"{block_name}.transformer_blocks.{i}.{attn}" for i in range(len(block.transformer_blocks))]

        def record_size(_module, args, kwargs, names=names):
            hidden = args[0] if args else kwargs["hidden_states"]
            for name in names:
                sizes[name] = (hidden.shape[-2], hidden.shape[-1])

        handles.append(block.register_forward_pre_hook(record_size, with_kwargs=True))
        for name, transformer_block in zip(names, block.transformer_blocks, strict=True):
            module = getattr(transformer_block, attn)
            bound = functools.partial(hook, name=name)
            if pre:
                handles.append(module.register_forward_pre_hook(bound, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(bound))
    if not handles:
        raise ValueError(f"this UNet has no {attn} attention layers under {prefix or 'its root'} to capture")
    return handles


@contextlib.contextmanager
def _removed_after(handles: list[Any]) -> Iterator[None]:
    """Remove the hooks when the block ends, however it ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_up_block_self_attention(unet: nn.Module, rows: slice | None = None) -> Iterator[AttentionCapture]:
    """Record the outputs of the ``attn1`` (self-attention) modules of the UNet's up-blocks.

    Forward hooks are used instead of replacing the attention processors, so the fast fused attention
    (SDPA) and the frozen weights stay untouched.
    """
    capture = AttentionCapture(rows=rows)

    def record_output(_module, _args, output, name):
        capture.features[name] = output if capture.rows is None else output[capture.rows]

    with _removed_after(_hook_attention_layers(unet, "attn1", "up_blocks", capture.sizes, record_output, pre=False)):
        yield capture


@contextlib.contextmanager
def capture_cross_attention_probabilities(
    unet: nn.Module, rows: slice | None = None
) -> Iterator[CrossAttentionCapture]:
    """Record the cross-attention probabilities of every ``attn2`` module of the UNet (down, mid and up blocks).

    A forward pre-hook sees the module's inputs and recomputes its probabilities with the module's own ``to_q`` /
    ``to_k`` and ``get_attention_scores`` (softmax(Q K^T * scale) per head); the attention processor itself (SDPA,
    which never forms the probabilities) runs untouched.
    """
    capture = CrossAttentionCapture(rows=rows)

    def record_probabilities(module, args, kwargs, name):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        if context is None:  # a call without text (never in a text-conditioned UNet): nothing to record
            return
        if capture.rows is not None:
            hidden, context = hidden[capture.rows], context[capture.rows]
        if module.norm_cross:
            context = module.norm_encoder_hidden_states(context)
        query = module.head_to_batch_dim(module.to_q(hidden))
        key = module.head_to_batch_dim(module.to_k(context))
        probabilities = module.get_attention_scores(query, key).float()  # (rows * heads, h*w, L)
        capture.probabilities[name] = probabilities.unflatten(0, (hidden.shape[0], module.heads)).mean(1)

    with _removed_after(_hook_attention_layers(unet, "attn2", "", capture.sizes, record_probabilities, pre=True)):
        yield capture


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

    def tokenize(self, prompt: str) -> list[str]:
        """The tokens the text encoder reads for ``prompt``, in the order of its embedding's positions (start token
        first, truncated as ``encode_text`` truncates, no padding): what a cross-attention position refers to."""

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

    def capture_cross_attention(
        self, rows: slice | None = None
    ) -> contextlib.AbstractContextManager[CrossAttentionCapture]:
        """Context manager recording the cross-attention probabilities (to each text token) of the UNet calls
        inside it, every layer (used by the word relevance of local edits)."""
