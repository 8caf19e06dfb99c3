"""Patch-wise editing of images wider than the prior's training size, with any guidance (CSD §3.3, App. B.1, C.1).

As the official code (subin-kim-cv/CSD ``csdedit.py::edit_image``, ``edit_image_region``): the latent of the whole
image is the variable; each step draws one t and ``per_step`` random patches of the prior's training size, each
with its own noise. CSD couples the patches by SVGD (they are its particles); every other guidance treats them as
independent samples of one batched call. The patches' gradients are summed into the whole latent and divided by
how many of this step's patches cover each latent pixel. Region-wise instructions put each target prompt on an equal
vertical strip and give each patch the sum of the strips' deltas weighted by its overlap with each strip.

Differences from the official code: a side that the stride does not step exactly gets one more patch flush with
its edge (every pixel is covered; the official code wants sides in multiples of its stride); the tiled VAE blends
tiles by the same per-pixel average as the gradients; region-wise patches share one noise across their prompts
(the official code draws one per prompt and measures the kernel on the first prompt's noisy latent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ids_nerfstudio.errors import UserError, check_number
from ids_nerfstudio.guidance import CSD, Guidance, GuidanceOutput
from ids_nerfstudio.guidance.csd import svgd_gradient
from ids_nerfstudio.guidance.formulas import guidance_loss, random_normal_like, sds_weight
from ids_nerfstudio.prior.base import DiffusionPrior

OFFICIAL_CSD_LR = 2.0
"""The official CSD editors' SGD learning rate (on the unscaled gradient)."""
PACKAGED_CSD_LR = 0.5
"""CSD's learning rate with a packaged prior (the demo's): the official 2.0 recolours the demo panorama's balls too
but bends its floor (docs/panoramas-and-videos.md)."""
OFFICIAL_CSD_DECAY = 0.9
"""The official CSD editors multiply the learning rate by this every ``decay_every`` steps."""


@dataclass
class PanoramaConfig:
    """Patch-wise editing (with --panorama): patches of the prior's training size, CSD's schedule."""

    patch: int | None = None
    """Patch side in latent pixels (default: the UNet's training size, 64 for Stable Diffusion, 16 for the demo)."""
    stride: int | None = None
    """Step between patches in latent pixels (default: a quarter of the patch, the official 16 of 64)."""
    per_step: int = 16
    """Random patches per step (B; the official argument default 16, its README 4); 0: all patches every step."""
    lr: float | None = None
    """SGD learning rate (default: 2.0 on the unscaled gradient with csd, as the official code, 0.5 with --model
    demo; else --lr with --grad-scale)."""
    lr_decay: float | None = None
    """Multiply the learning rate by this every decay-every steps (default 0.9 with csd, 1.0 otherwise)."""
    decay_every: int = 20
    """Steps between learning-rate decays."""
    region_prompts: tuple[str, ...] = ()
    """Target prompts of equal vertical strips, left to right (CSD's compositional edit); empty: --prompt-trg."""
    tiled_vae: bool = False
    """Encode and decode in patch-sized tiles at the stride, averaged where they overlap (images too large for
    the VAE at once)."""

    def validate(self, flag_prefix: str = "--patches.") -> None:
        """Raise ``UserError`` naming the flag of the first bad setting."""
        for name in ("patch", "stride"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{flag_prefix}{name} must be at least 1 latent pixel, got {value}")
        if self.per_step < 0:
            raise UserError(f"{flag_prefix}per-step must be >= 0 (0: all patches), got {self.per_step}")
        if self.decay_every < 1:
            raise UserError(f"{flag_prefix}decay-every must be at least 1, got {self.decay_every}")
        check_number(f"{flag_prefix}lr", self.lr, positive=True)
        check_number(f"{flag_prefix}lr-decay", self.lr_decay, positive=True)
        if any(not prompt.strip() for prompt in self.region_prompts):
            raise UserError(f"{flag_prefix}region-prompts: a region prompt is empty")


# ------------------------------------------------------------------------------------------------ patches


def axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts of windows of ``size`` along a side of ``length`` at ``stride``; one more flush with the end if the
    stride does not reach it exactly (so every position is covered)."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def patch_grid(height: int, width: int, size: tuple[int, int], stride: int) -> Int[Tensor, "P 2"]:
    """(top, left) of every patch of ``size`` (h, w) over a latent of (height, width), row by row."""
    tops, lefts = axis_starts(height, size[0], stride), axis_starts(width, size[1], stride)
    return torch.tensor([(top, left) for top in tops for left in lefts], dtype=torch.long)


def patch_size(prior: DiffusionPrior, height: int, width: int, patch: int | None) -> tuple[int, int]:
    """The patch (h, w) in latent pixels: ``patch`` or the UNet's training size, at most the latent's own side,
    rounded down to what the UNet's down-sampling needs."""
    side = patch if patch is not None else int(prior.unet.config.sample_size)
    multiple = prior.size_multiple // prior.latent_downsample
    return tuple(max(multiple, min(side, length) // multiple * multiple) for length in (height, width))


def crop_patches(
    z: Float[Tensor, "1 C H W"], corners: Int[Tensor, "P 2"], size: tuple[int, int]
) -> Float[Tensor, "P C h w"]:
    """The patches of a latent (or mask) at ``corners``."""
    return torch.cat([z[..., top : top + size[0], left : left + size[1]] for top, left in corners.tolist()])


def coverage(corners: Int[Tensor, "P 2"], size: tuple[int, int], shape: tuple[int, int]) -> Float[Tensor, "H W"]:
    """How many of the patches cover each latent pixel."""
    count = torch.zeros(shape)
    for top, left in corners.tolist():
        count[top : top + size[0], left : left + size[1]] += 1
    return count


def scatter_patches(
    grads: Float[Tensor, "P C h w"], corners: Int[Tensor, "P 2"], shape: tuple[int, int]
) -> Float[Tensor, "1 C H W"]:
    """The patches' gradients summed into the whole latent and divided by the per-pixel patch count (0 where no
    patch lies)."""
    size = grads.shape[-2:]
    total = grads.new_zeros(1, grads.shape[1], *shape)
    for grad, (top, left) in zip(grads, corners.tolist(), strict=True):
        total[0, :, top : top + size[0], left : left + size[1]] += grad
    count = coverage(corners, size, shape).to(grads)
    return torch.where(count > 0, total / count.clamp(min=1), total)


def region_weights(lefts: Int[Tensor, " P"], width: int, patch_width: int, regions: int) -> Float[Tensor, "P K"]:
    """alpha_ik: the fraction of patch i's columns [left, left + patch_width) inside strip k of ``regions`` equal
    vertical strips of a latent ``width`` wide (each row sums to 1)."""
    edges = torch.arange(regions + 1, dtype=torch.float64) * width / regions
    start, end = lefts.double()[:, None], lefts.double()[:, None] + patch_width
    overlap = (torch.minimum(end, edges[1:]) - torch.maximum(start, edges[:-1])).clamp(min=0)
    return (overlap / patch_width).float()


# ---------------------------------------------------------------------------------------------- one step


def patch_gradient(
    guidance: Guidance,
    z: Float[Tensor, "1 C H W"],
    z_src: Float[Tensor, "1 C H W"],
    corners: Int[Tensor, "P 2"],
    size: tuple[int, int],
    prompts_trg: Sequence[str],
    prompt_src: str,
    *,
    t: Int[Tensor, " 1"],
    score_scale: float,
    generator: torch.Generator | None,
    weights: Float[Tensor, "P K"] | None = None,
) -> tuple[Float[Tensor, "1 C H W"], GuidanceOutput]:
    """The whole latent's gradient of one step: the guidance on the patches (one batched call, one t), scaled as
    the 2D editor scales it (``score_scale`` on the score, a regularizer as it is), scattered and normalised.

    With ``weights`` (P, K) each patch's gradient is ``sum_k alpha_ik`` of its gradient under prompt k (the same
    noise for every k); CSD then couples the mixed deltas by SVGD, as the official region-wise editor does.
    """
    z_patches, z_src_patches = crop_patches(z, corners, size), crop_patches(z_src, corners, size)
    if weights is None:
        out = guidance(z_patches, z_src_patches, prompts_trg[0], prompt_src, t=t, generator=generator)
        return scatter_patches(out.scaled_grad(score_scale), corners, z.shape[-2:]), out
    noise = random_normal_like(z_patches, generator)
    rows, regions = weights.nonzero(as_tuple=True)
    coupled = isinstance(guidance, CSD) and guidance.config.svgd
    rule = CSD(dataclasses.replace(guidance.config, svgd=False), guidance.prior) if coupled else guidance
    out = rule(z_patches[rows], z_src_patches[rows], [prompts_trg[k] for k in regions.tolist()], prompt_src,
               t=t, noise=noise[rows], generator=generator)  # fmt: skip
    alpha = weights[rows, regions].to(out.grad)[:, None, None, None]
    if coupled:  # mix the deltas w(t) d, then SVGD over the patches (noisy latents: each patch's first row)
        mixed = torch.zeros_like(z_patches).index_add_(0, rows, alpha * out.grad)
        first_row = torch.searchsorted(rows, torch.arange(len(corners), device=rows.device))  # rows are sorted
        weight = sds_weight(t.expand(len(corners)), guidance.prior.alphas_cumprod, mixed)
        grads, extras = svgd_gradient(out.extras["noisy_target"][first_row], mixed / weight, weight)
        loss = guidance_loss(z_patches, grads)
        out = GuidanceOutput(grad=grads, loss=loss, t=t.expand(len(corners)), extras={**out.extras, **extras})
        grads = grads * score_scale
    else:
        grads = torch.zeros_like(z_patches).index_add_(0, rows, alpha * out.scaled_grad(score_scale))
    return scatter_patches(grads, corners, z.shape[-2:]), out


def optimise_panorama(
    guidance: Guidance,
    z_src: Float[Tensor, "1 C H W"],
    prompts_trg: Sequence[str],
    prompt_src: str,
    *,
    steps: int,
    lr: float,
    grad_scale: float,
    generator: torch.Generator,
    size: tuple[int, int],
    stride: int,
    per_step: int = 16,
    lr_decay: float = 1.0,
    decay_every: int = 20,
    mask: Float[Tensor, "1 1 H W"] | None = None,
    after_step: Callable[[int, GuidanceOutput, Tensor], None] | None = None,
) -> Float[Tensor, "1 C H W"]:
    """SGD on the whole target latent (started at the source) with patch-wise guidance, as the official CSD editor.

    ``prompts_trg``: one target prompt, or one per equal vertical strip (region-wise). The score of each patch is
    multiplied by ``grad_scale / (h * w)`` of the patch (the 2D editor's scale for an image of the patch's size);
    the learning rate decays by ``lr_decay`` every ``decay_every`` steps. With ``per_step`` 0 or at least the
    number of patches, every patch is used every step in order (no draw): one patch covering the whole latent is
    then the 2D editor's step exactly. A ``mask`` (the 2D editor's) multiplies the whole gradient.
    """
    if not prompts_trg:
        raise ValueError("prompts_trg: need at least one target prompt")
    height, width = z_src.shape[-2:]
    corners = patch_grid(height, width, size, stride)
    weights = region_weights(corners[:, 1], width, size[1], len(prompts_trg)) if len(prompts_trg) > 1 else None
    z = z_src.clone().requires_grad_(True)
    optimizer, schedule = decaying_sgd(z, lr, lr_decay, decay_every)
    score_scale = grad_scale / (size[0] * size[1])
    for step in range(steps):
        t = guidance.sample_timesteps(1, z.device, generator)
        chosen = draw_subset(len(corners), per_step, generator)
        grad, out = patch_gradient(
            guidance, z.detach(), z_src, corners[chosen], size, prompts_trg, prompt_src, t=t,
            score_scale=score_scale, generator=generator, weights=None if weights is None else weights[chosen],
        )  # fmt: skip
        check_finite(grad, step, t, "--patches.lr")
        optimizer.zero_grad(set_to_none=True)
        z.grad = grad if mask is None else grad * mask.to(grad)
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step(step, out, z)
    return z.detach()


def decaying_sgd(
    z: Tensor, lr: float, decay: float, every: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.StepLR]:
    """SGD on ``z`` whose learning rate is multiplied by ``decay`` every ``every`` steps (the official CSD's)."""
    optimizer = torch.optim.SGD([z], lr=lr)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=decay)


def draw_subset(count: int, per_step: int, generator: torch.Generator) -> Int[Tensor, " B"]:
    """``per_step`` random indices of ``count`` (a permutation's head), or all in order (no draw) when ``per_step``
    is 0 or at least ``count``."""
    if 0 < per_step < count:
        return torch.randperm(count, generator=generator)[:per_step]
    return torch.arange(count)


def check_finite(grad: Tensor, step: int, t: Tensor, lr_flag: str) -> None:
    """Stop a diverged edit with one line that names the flag to lower."""
    if not torch.isfinite(grad).all():
        raise UserError(
            f"the edit diverged: non-finite guidance gradient at step {step + 1} (t={int(t[0])}); "
            f"lower {lr_flag} or --grad-scale"
        )


# --------------------------------------------------------------------------------------------- tiled VAE


@torch.no_grad()
def encode_tiled(
    prior: DiffusionPrior, pixels: Float[Tensor, "1 3 H W"], size: tuple[int, int], stride: int
) -> Float[Tensor, "1 C h w"]:
    """``prior.encode_images`` tile by tile (tiles of ``size`` latent pixels at ``stride``), averaged on overlaps."""
    scale = prior.latent_downsample
    shape = (pixels.shape[-2] // scale, pixels.shape[-1] // scale)
    corners = patch_grid(*shape, size, stride)
    tiles = [
        prior.encode_images(pixels[..., top * scale : (top + size[0]) * scale, left * scale : (left + size[1]) * scale])
        for top, left in corners.tolist()
    ]
    return scatter_patches(torch.cat(tiles).float(), corners, shape)


@torch.no_grad()
def decode_tiled(
    prior: DiffusionPrior, latents: Float[Tensor, "1 C h w"], size: tuple[int, int], stride: int
) -> Float[Tensor, "1 3 H W"]:
    """``prior.decode_latents`` tile by tile, averaged in pixels where tiles overlap."""
    scale = prior.latent_downsample
    corners = patch_grid(*latents.shape[-2:], size, stride)
    tiles = torch.cat([prior.decode_latents(patch[None]).float() for patch in crop_patches(latents, corners, size)])
    shape = (latents.shape[-2] * scale, latents.shape[-1] * scale)
    return scatter_patches(tiles, corners * scale, shape)
