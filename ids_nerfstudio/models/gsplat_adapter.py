"""The one place that imports gsplat: its CUDA rasterizer, and the pure-torch pieces of ``gsplat.cuda._torch_impl``
(private names, which gsplat moves between releases) that the CPU rasterizer builds on.

pyproject.toml pins the gsplat release range these names were tested with (nerfstudio 1.1.5 pins gsplat 1.4.0);
``tests/test_splat.py`` imports each of them, so an upgrade that moves one fails there with its name.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def cuda_rasterization(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """gsplat's ``rasterization`` (its CUDA kernels)."""
    from gsplat.rendering import rasterization

    return rasterization(*args, **kwargs)


def torch_projection(
    means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,  # noqa: N803
    **options: Any,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """gsplat's pure-torch projection of 3D Gaussians into each camera: (radii, means2d, depths, conics,
    compensations), from the covariances of ``quats`` and ``scales``."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    return _fully_fused_projection(means, covars, viewmats, Ks, width, height, **options)


def torch_spherical_harmonics(degree: int, directions: Tensor, coefficients: Tensor) -> Tensor:
    """gsplat's pure-torch evaluation of SH coefficients (..., K, 3) along view directions (..., 3)."""
    from gsplat.cuda._torch_impl import _spherical_harmonics

    return _spherical_harmonics(degree, directions, coefficients)
