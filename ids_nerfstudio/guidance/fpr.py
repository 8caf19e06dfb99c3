"""Fixed-point regularization (FPR, IDS paper Sec. 4.2, Algorithm 1), usable by every guidance.

FPR corrects the noisy source latent so that the source score explains the source image: it repeats
``z_t <- z_t - lambda * d/dz_t d(Tweedie(z_t), z_src)``, back-propagating through the UNet. The caller then
uses ``eps* = (z_t* - sqrt(a) z_src) / sqrt(1 - a)`` as the shared noise (IDS = DDS + FPR).

Differences from the official code: the distance is computed per sample (the official code takes one norm
over the whole batch, which couples the samples' step sizes and breaks for B > 1). Two additions: the ``ssim``
distance (the supplementary's Fig. S2 names SSIM without details; here it is 1 - SSIM on the latents, below), and
``jacobian="identity"``, which holds the noise prediction fixed in the derivative (d x0 / d z_t = 1 / sqrt(a_t), as
SDS drops the UNet's Jacobian): each iteration is then one forward pass under no_grad and nothing is kept for a
backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ids_nerfstudio.guidance.formulas import per_sample, predict_x0

FprDistance = Literal["l2", "l1", "ssim"]
FprJacobian = Literal["exact", "identity"]

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
"""The Gaussian window of SSIM (Wang et al. 2004): 11 x 11, sigma 1.5 (cut to the latent's size when smaller)."""


def gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    """A normalised 1-D Gaussian of ``size`` taps, typed and placed like ``like``."""
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def latent_ssim(x: Float[Tensor, "B C H W"], y: Float[Tensor, "B C H W"]) -> Float[Tensor, " B"]:
    """Mean SSIM per sample between two latents, per channel, over the valid positions of a Gaussian window.

    Latents have no fixed range: L (in C1 = (0.01 L)^2, C2 = (0.03 L)^2) is each sample's range of ``y``.
    """
    size = min(SSIM_WINDOW, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # an odd window
    g = gaussian_window(size, SSIM_SIGMA, x)
    channels = x.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, size, size)

    def blur(v: Tensor) -> Tensor:
        return F.conv2d(v, kernel, groups=channels)

    data_range = (y.flatten(1).amax(1) - y.flatten(1).amin(1)).clamp(min=1e-6)
    c1, c2 = per_sample((0.01 * data_range) ** 2, x), per_sample((0.03 * data_range) ** 2, x)
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.flatten(1).mean(1)


def fpr_distance(
    x0: Float[Tensor, "B C H W"], z_src: Float[Tensor, "B C H W"], kind: FprDistance
) -> Float[Tensor, " B"]:
    """Per-sample distance between the Tweedie estimate and the source latent.

    ``l2`` is the plain Euclidean norm (not squared), as in the paper. ``l1`` is the L1 norm divided by
    sqrt(numel), which equals the L2 norm for a uniform residual, so ``fpr_scale`` means the same for both.
    ``ssim`` is 1 - SSIM on the latents (``latent_ssim``): a mean over positions, so its gradient shrinks with the
    latent's size where the norm's has length 1; the same ``fpr_scale`` moves z_t less on a large latent.
    """
    if kind == "ssim":
        return 1 - latent_ssim(x0, z_src)
    residual = (x0 - z_src).flatten(1)
    if kind == "l2":
        return residual.norm(dim=1)
    if kind == "l1":
        return residual.abs().sum(dim=1) / residual.shape[1] ** 0.5
    raise ValueError(f"unknown FPR distance {kind!r}: use l2, l1 or ssim")


def fixed_point_regularization(
    source_score: Callable[[Tensor], Tensor],
    z_t: Float[Tensor, "B C H W"],
    z_src: Float[Tensor, "B C H W"],
    t: Int[Tensor, " B"],
    alphas_cumprod: Float[Tensor, " T"],
    *,
    iters: int,
    scale: float,
    distance: FprDistance = "l2",
    jacobian: FprJacobian = "exact",
) -> tuple[Float[Tensor, "B C H W"], Float[Tensor, "N B"]]:
    """Run ``iters`` FPR steps on the noisy source latent ``z_t``.

    Returns the corrected latent ``z_t*`` (detached) and the distance before each step, (iters, B).
    With ``jacobian="exact"`` each step is one forward and one backward pass of ``source_score`` (a CFG UNet
    call); with ``"identity"`` one forward pass under no_grad and the step ``grad_x0 d / sqrt(a_t)``.
    """
    distances = []
    z_t = z_t.detach()
    for _ in range(iters):
        if jacobian == "exact":
            with torch.enable_grad():
                z_t.requires_grad_(True)
                x0 = predict_x0(z_t, source_score(z_t), t, alphas_cumprod)
                d = fpr_distance(x0, z_src, distance)
                (step,) = torch.autograd.grad(d.sum(), z_t)  # the sum keeps samples independent
        elif jacobian == "identity":
            with torch.no_grad():
                x0 = predict_x0(z_t, source_score(z_t), t, alphas_cumprod)
            with torch.enable_grad():  # through the distance only: no UNet in this graph
                x0.requires_grad_(True)
                d = fpr_distance(x0, z_src, distance)
                (step,) = torch.autograd.grad(d.sum(), x0)
            step = step / per_sample(alphas_cumprod[t], step).sqrt()
        else:
            raise ValueError(f"unknown FPR jacobian {jacobian!r}: use exact or identity")
        z_t = (z_t - scale * step).detach()
        distances.append(d.detach())
    empty = z_t.new_zeros(0, z_t.shape[0])
    return z_t, torch.stack(distances) if distances else empty
