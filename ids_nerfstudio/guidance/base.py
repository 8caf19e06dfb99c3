"""What all guidance rules share: the call contract, timestep sampling and the FPR plumbing (formulas.py holds
the shared diffusion formulas, fpr.py fixed-point regularization).

A guidance turns a target latent (what is being edited), a source latent (what it was) and two prompts into
a gradient on the target latent. Every rule here is a pure function of a frozen prior and latents: nothing
in ``guidance/`` knows about NeRFs or nerfstudio.

Sign convention: ``grad`` is a descent direction's negative, i.e. the optimizer does ``z <- z - lr * grad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ids_nerfstudio.configs import InstantiateConfig
from ids_nerfstudio.errors import UserError, check_number
from ids_nerfstudio.guidance.formulas import (
    Timesteps,
    add_noise,
    fraction_range,
    guidance_loss,
    noise_from_x0,
    random_normal_like,
    sample_timesteps,
)
from ids_nerfstudio.guidance.fpr import FprDistance, FprJacobian, fixed_point_regularization
from ids_nerfstudio.prior.base import DiffusionPrior

REGULARIZER_GRAD = "regularizer_grad"
"""Key under which ``compute_grad`` returns the regularizer part of its gradient (see GuidanceOutput)."""


def as_prompt_list(prompts: str | Sequence[str], batch_size: int, name: str) -> list[str]:
    """One prompt per sample: a single string is repeated, a list must have one entry per sample."""
    if isinstance(prompts, str):
        return [prompts] * batch_size
    prompts = list(prompts)
    if len(prompts) != batch_size:
        raise ValueError(f"{name}: got {len(prompts)} prompts for a batch of {batch_size}")
    return prompts


# ------------------------------------------------------------------------------------------ the contract


@dataclass
class GuidanceOutput:
    """What a guidance call returns."""

    grad: Float[Tensor, "B C H W"]
    """Gradient on the target latent (apply with ``z <- z - lr * grad`` or by back-propagating ``loss``)."""
    loss: Float[Tensor, ""]
    """``0.5 ||z - sg(z - grad)||^2`` (sum over latent dims, mean over batch): back-propagating it applies grad."""
    t: Int[Tensor, " B"]
    """The timestep used for each sample."""
    extras: dict[str, Tensor] = field(default_factory=dict)
    """Method-specific diagnostics (e.g. ``fpr_distance``: (fpr_iters, B), ``cut_loss``: (B,))."""
    regularizer_grad: Float[Tensor, "B C H W"] | None = None
    """The part of ``grad`` that is the gradient of a weighted loss rather than a score difference (CDS's
    ``cut_weight`` x PatchNCE); None when there is none. A caller that rescales the score leaves it alone."""

    def scaled_grad(self, score_scale: float) -> Float[Tensor, "B C H W"]:
        """``grad`` with its score part multiplied by ``score_scale`` and its regularizer part as it is.

        The official 2D editors multiply the score by 2000 / (h w) of the latent but add CDS's contrastive
        gradient with its weight alone.
        """
        if self.regularizer_grad is None:
            return self.grad * score_scale
        return (self.grad - self.regularizer_grad) * score_scale + self.regularizer_grad


@dataclass
class TextEmbeddings:
    """Per-sample text embeddings of the two prompts."""

    trg: Float[Tensor, "B L D"]
    src: Float[Tensor, "B L D"]


@dataclass
class GuidanceInputs:
    """What a rule's ``compute_grad`` is given: the latents, the draws its branches share, the prompt embeddings."""

    z_trg: Float[Tensor, "B C H W"]
    """The target latent (detached)."""
    z_src: Float[Tensor, "B C H W"]
    """The source latent (detached)."""
    t: Int[Tensor, " B"]
    """One timestep per sample."""
    noise: Float[Tensor, "B C H W"]
    """The shared noise: eps* when FPR ran (IDS Eq. 8), else the drawn or given one."""
    text: TextEmbeddings
    """Per-sample embeddings of the two prompts."""
    image_cond: Float[Tensor, "B C H W"] | None
    """The image condition of an image-conditional prior (InstructPix2Pix: the source latent by default)."""
    generator: torch.Generator | None
    """Generator of any further draws (CDS's patches, PDS's second noise)."""
    noise_prev: Float[Tensor, "B C H W"] | None = None
    """A given second shared noise, for a rule that noises twice (``uses_noise_prev``: PDS's x_t'); None: drawn."""


@dataclass
class GuidanceConfig(InstantiateConfig):
    """Options every guidance shares (each method's config names its own ``_target``)."""

    guidance_scale: float = 7.5
    """Classifier-free guidance scale of the text condition."""
    t_min: float = 0.05
    """Smallest timestep, as a fraction of the training schedule (rounded: 0.05 of 1000 steps is t = 50)."""
    t_max: float = 0.948
    """Largest timestep, inclusive, as a fraction of the training schedule (official DDS/IDS/CDS: t <= 948)."""
    fpr_iters: int = 0
    """Fixed-point regularization iterations on the noisy source latent (0 disables FPR; IDS uses 3)."""
    fpr_scale: float = 1.0
    """FPR step size lambda: z_t <- z_t - lambda * grad of the distance."""
    fpr_distance: FprDistance = "l2"
    """FPR distance between the Tweedie estimate and the source latent (per sample): l2 (the paper's plain norm),
    l1, or ssim (1 - SSIM on the latents, 11 x 11 Gaussian window; a mean, so its gradient shrinks with the latent's
    size where the norm's has length 1)."""
    fpr_jacobian: FprJacobian = "exact"
    """Derivative of the Tweedie estimate in FPR: exact (back-propagate through the UNet, as the paper) or identity
    (hold the noise prediction fixed, d x0 / d z_t = 1 / sqrt(alpha-bar): one forward pass per iteration, no
    UNet backward pass, no activations kept)."""
    fpr_guidance_scale: float | None = None
    """CFG scale of the source score inside FPR (None: the guidance's own guidance_scale)."""
    scales: ClassVar[tuple[str, ...]] = ("guidance_scale", "fpr_scale", "fpr_guidance_scale")
    """The fields that must be finite numbers >= 0 (a subclass adds its own weights)."""

    def validate(self, flag_prefix: str = "") -> None:
        """Raise ``UserError`` naming the flag (``flag_prefix`` + field name) of the first bad setting."""
        if self.fpr_iters < 0:
            raise UserError(f"{flag(flag_prefix, 'fpr_iters')}: fpr_iters must be >= 0, got {self.fpr_iters}")
        if not 0 <= self.t_min <= self.t_max <= 1:
            raise UserError(
                f"{flag(flag_prefix, 't_min')} / {flag(flag_prefix, 't_max')}: need 0 <= t_min <= t_max <= 1, "
                f"got t_min={self.t_min}, t_max={self.t_max}"
            )
        for name in self.scales:
            check_number(flag(flag_prefix, name), getattr(self, name))


def flag(prefix: str, name: str) -> str:
    """The command-line flag of a config field: ``flag("--pipeline.guidance.", "t_min")`` is ``...guidance.t-min``."""
    return prefix + name.replace("_", "-")


class Guidance(nn.Module):
    """Base class of all guidance rules: samples t and noise, encodes prompts, runs FPR, then the method's rule.

    Subclasses implement ``compute_grad`` (only what differs between methods). The prior is held as a plain
    attribute (it is not an ``nn.Module``), so its frozen weights never enter this module's ``state_dict``.
    """

    config: GuidanceConfig
    shares_timestep: ClassVar[bool] = False
    """Whether all samples of a call share one t (CSD's particles) instead of drawing one each."""
    uses_noise_prev: ClassVar[bool] = False
    """Whether the rule takes a second shared noise (PDS); ``forward`` refuses ``noise_prev`` for the others."""

    def __init__(self, config: GuidanceConfig, prior: DiffusionPrior) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.prior = prior

    # ------------------------------------------------------------------------------------- overridables
    def sample_timesteps(self, batch_size: int, device: torch.device, generator: torch.Generator | None) -> Timesteps:
        """Timesteps uniform in ``[t_min T, t_max T]``, per sample (one for the whole batch if shares_timestep)."""
        low, high = fraction_range(self.config.t_min, self.config.t_max, len(self.prior.alphas_cumprod))
        return sample_timesteps(batch_size, low, high, device=device, generator=generator, shared=self.shares_timestep)

    def source_score(
        self, z_t: Float[Tensor, "B C H W"], t: Int[Tensor, " B"], text: TextEmbeddings, image_cond: Tensor | None
    ) -> Float[Tensor, "B C H W"]:
        """The source branch's noise prediction that FPR corrects (CFG with the source prompt)."""
        scale = self.config.fpr_guidance_scale
        return self.prior.predict_noise(z_t, t, text.src, self.config.guidance_scale if scale is None else scale)

    def compute_grad(self, inputs: GuidanceInputs) -> tuple[Float[Tensor, "B C H W"], dict[str, Tensor]]:
        """The method's gradient on ``inputs.z_trg`` given the shared t and noise (eps* when FPR ran).

        Returns the gradient and diagnostics; a loss-gradient part of the gradient goes under REGULARIZER_GRAD.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- call
    def forward(
        self,
        z_trg: Float[Tensor, "B C H W"],
        z_src: Float[Tensor, "B C H W"],
        prompt_trg: str | Sequence[str],
        prompt_src: str | Sequence[str] = "",
        *,
        t: Int[Tensor, " B"] | None = None,
        noise: Float[Tensor, "B C H W"] | None = None,
        noise_prev: Float[Tensor, "B C H W"] | None = None,
        image_cond: Float[Tensor, "B C H W"] | None = None,
        generator: torch.Generator | None = None,
        mask: Float[Tensor, "B 1 H W"] | None = None,
    ) -> GuidanceOutput:
        """One guidance evaluation. ``t`` (B,), ``noise`` and ``noise_prev`` (like z_trg; PDS only) may be given for
        reproducibility; ``image_cond`` defaults to the source latent with an image-conditional prior; ``mask``
        (values in [0, 1], e.g. guidance.relevance's) multiplies the gradient: a local edit."""
        if z_trg.shape != z_src.shape or z_trg.ndim != 4:
            raise ValueError(
                f"z_trg and z_src must be B C H W of one shape, got {tuple(z_trg.shape)} and {tuple(z_src.shape)}"
            )
        if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != z_trg.shape[-2:]):
            raise ValueError(
                f"mask must be B 1 H W at the latent's size {tuple(z_trg.shape[-2:])}, got {tuple(mask.shape)}"
            )
        if noise_prev is not None and not self.uses_noise_prev:
            raise ValueError(f"noise_prev: {type(self).__name__} draws one shared noise; only PDS takes a second")
        batch_size, device = z_trg.shape[0], z_trg.device
        t = self.sample_timesteps(batch_size, device, generator) if t is None else t.to(device).expand(batch_size)
        noise = random_normal_like(z_trg, generator) if noise is None else noise
        prompts_trg = as_prompt_list(prompt_trg, batch_size, "prompt_trg")
        prompts_src = as_prompt_list(prompt_src, batch_size, "prompt_src")
        text = TextEmbeddings(trg=self.prior.encode_text(prompts_trg), src=self.prior.encode_text(prompts_src))
        z_src = z_src.detach()
        if image_cond is None and self.prior.image_conditional:
            image_cond = z_src  # InstructPix2Pix edits the source image

        extras: dict[str, Tensor] = {}
        if self.config.fpr_iters > 0:
            z_t_src, extras["fpr_distance"] = fixed_point_regularization(
                lambda z_t: self.source_score(z_t, t, text, image_cond),
                add_noise(z_src, noise, t, self.prior.alphas_cumprod),
                z_src,
                t,
                self.prior.alphas_cumprod,
                iters=self.config.fpr_iters,
                scale=self.config.fpr_scale,
                distance=self.config.fpr_distance,
                jacobian=self.config.fpr_jacobian,
            )
            noise = noise_from_x0(z_t_src, z_src, t, self.prior.alphas_cumprod)  # eps*, IDS Eq. 8
        inputs = GuidanceInputs(z_trg.detach(), z_src, t, noise, text, image_cond, generator, noise_prev)
        with torch.no_grad():
            grad, method_extras = self.compute_grad(inputs)
        regularizer_grad = method_extras.pop(REGULARIZER_GRAD, None)
        extras.update(method_extras)
        if mask is not None:  # after the rule: CSD's kernel and CDS's patches see the whole latent
            mask = mask.to(grad)
            grad = grad * mask
            regularizer_grad = None if regularizer_grad is None else regularizer_grad * mask
        grad = grad.to(z_trg.dtype)
        return GuidanceOutput(
            grad=grad, loss=guidance_loss(z_trg, grad), t=t, extras=extras, regularizer_grad=regularizer_grad
        )
