"""Fixed-point regularization (FPR, IDS paper Sec. 4.2, Algorithm 1), usable by every guidance.

FPR corrects the noisy source latent so that the source score explains the source image: it repeats
``z_t <- z_t - lambda * d/dz_t d(Tweedie(z_t), z_src)``, back-propagating through the UNet. The caller then
uses ``eps* = (z_t* - sqrt(a) z_src) / sqrt(1 - a)`` as the shared noise (IDS = DDS + FPR).

Differences from the official code: the distance is computed per sample (the official code takes one norm
over the whole batch, which couples the samples' step sizes and breaks for B > 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ids_nerfstudio.guidance.formulas import predict_x0


def fpr_distance(
    x0: Float[Tensor, "B C H W"], z_src: Float[Tensor, "B C H W"], kind: Literal["l2", "l1"]
) -> Float[Tensor, " B"]:
    """Per-sample distance between the Tweedie estimate and the source latent.

    ``l2`` is the plain Euclidean norm (not squared), as in the paper. ``l1`` is the L1 norm divided by
    sqrt(numel), which equals the L2 norm for a uniform residual, so ``fpr_scale`` means the same for both.
    """
    residual = (x0 - z_src).flatten(1)
    if kind == "l2":
        return residual.norm(dim=1)
    if kind == "l1":
        return residual.abs().sum(dim=1) / residual.shape[1] ** 0.5
    raise ValueError(f"unknown FPR distance {kind!r}: use l2 or l1")


def fixed_point_regularization(
    source_score: Callable[[Tensor], Tensor],
    z_t: Float[Tensor, "B C H W"],
    z_src: Float[Tensor, "B C H W"],
    t: Int[Tensor, " B"],
    alphas_cumprod: Float[Tensor, " T"],
    *,
    iters: int,
    scale: float,
    distance: Literal["l2", "l1"] = "l2",
) -> tuple[Float[Tensor, "B C H W"], Float[Tensor, "N B"]]:
    """Run ``iters`` FPR steps on the noisy source latent ``z_t``.

    Returns the corrected latent ``z_t*`` (detached) and the distance before each step, (iters, B).
    Each step is one forward and one backward pass of ``source_score`` (a CFG UNet call).
    """
    distances = []
    z_t = z_t.detach()
    for _ in range(iters):
        with torch.enable_grad():
            z_t.requires_grad_(True)
            x0 = predict_x0(z_t, source_score(z_t), t, alphas_cumprod)
            d = fpr_distance(x0, z_src, distance)
            (step,) = torch.autograd.grad(d.sum(), z_t)  # the sum keeps samples independent
        z_t = (z_t - scale * step).detach()
        distances.append(d.detach())
    empty = z_t.new_zeros(0, z_t.shape[0])
    return z_t, torch.stack(distances) if distances else empty
