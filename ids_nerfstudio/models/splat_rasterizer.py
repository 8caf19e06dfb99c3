"""Gaussian-splat rasterization with gsplat's semantics: gsplat's CUDA kernels where CUDA is, pure torch elsewhere.

gsplat's ``rasterization`` needs its CUDA extension, and so does its pure-torch ``_rasterization`` (tile
intersection and ``rasterize_to_indices_in_range`` are CUDA calls). ``rasterization`` here sends CUDA tensors to
gsplat unchanged and computes CPU ones with gsplat's own pure-torch projection and spherical harmonics
(``gsplat.cuda._torch_impl``, through ``gsplat_adapter``) and a tile compositor written below, which follows
gsplat's CUDA kernel rule by rule:

- a Gaussian is considered in the 16 x 16 pixel tiles its 3-sigma box (``radii``) touches, front to back by depth;
- at pixel centre p: ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` (conic a, b, c); skipped if sigma < 0;
  ``alpha = min(0.999, opacity exp(-sigma))``; skipped if alpha < 1/255;
- compositing stops before the first Gaussian whose transmittance after it would be <= 1e-4;
- ``ED`` depth is the alpha-weighted depth divided by the accumulated alpha.

Autograd gives the gradients (gsplat's backward kernel encodes the same rules, the clamp at 0.999 included).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ids_nerfstudio.models.gsplat_adapter import cuda_rasterization, torch_projection, torch_spherical_harmonics

TILE_SIZE = 16
"""gsplat's tile side in pixels (the unit of its depth sorting and culling)."""
ALPHA_MIN = 1.0 / 255.0
"""Below this alpha a Gaussian is skipped at a pixel."""
ALPHA_MAX = 0.999
"""Alpha is clamped here (so the transmittance never reaches 0)."""
TRANSMITTANCE_MIN = 1e-4
"""Compositing stops before the Gaussian that would take the transmittance to this or below."""
GAUSSIANS_PER_CHUNK = 256
"""Gaussians composited at once over a tile's pixels (memory: tile pixels x this)."""


def rasterization(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, " N"],
    colors: Tensor,
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],  # noqa: N803 - gsplat's argument names
    width: int,
    height: int,
    **options: Any,
) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"], dict[str, Any]]:
    """gsplat's ``rasterization`` (same arguments and outputs); on CPU tensors the pure-torch path below."""
    if means.is_cuda:
        return cuda_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **options)
    return torch_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **options)


def torch_rasterization(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, " N"],
    colors: Tensor,
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],  # noqa: N803
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Float[Tensor, "C D"] | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    absgrad: bool = False,
    packed: bool = False,
    tile_size: int = TILE_SIZE,
    **ignored: Any,  # sparse_grad, radius_clip, ...: speed options of the CUDA path with no effect on the result
) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"], dict[str, Any]]:
    """gsplat's ``rasterization`` in pure torch (unpacked; colours as gsplat takes them: [N, D], [C, N, D] or SH
    coefficients [N, K, 3] with ``sh_degree``)."""
    if absgrad:
        raise ValueError(
            "absgrad needs gsplat's CUDA rasterizer; on CPU densify with the plain gradient "
            "(--pipeline.model.use-absgrad False)"
        )
    if packed:
        raise ValueError("packed rasterization needs gsplat's CUDA rasterizer; pass packed=False on CPU")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    count, cameras = means.shape[0], viewmats.shape[0]
    radii, means2d, depths, conics, compensations = torch_projection(
        means, quats, scales, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    opacities = opacities.expand(cameras, count)
    if compensations is not None:
        opacities = opacities * compensations
    if sh_degree is not None:
        camera_centres = torch.linalg.inv(viewmats)[:, None, :3, 3]
        coefficients = colors.expand(cameras, *colors.shape) if colors.dim() == 3 else colors
        colors = torch_spherical_harmonics(sh_degree, means[None] - camera_centres, coefficients)
        colors = torch.clamp_min(colors + 0.5, 0.0)
    elif colors.dim() == 2:
        colors = colors.expand(cameras, *colors.shape)
    if "D" in render_mode:
        colors = torch.cat([colors, depths[..., None]], -1) if "RGB" in render_mode else depths[..., None]
        if backgrounds is not None:
            zeros = backgrounds.new_zeros(cameras, 1)
            backgrounds = torch.cat([backgrounds, zeros], -1) if "RGB" in render_mode else zeros
    renders, alphas = [], []
    for camera in range(cameras):
        render, alpha = composite_tiles(
            means2d[camera], conics[camera], colors[camera], opacities[camera], radii[camera], depths[camera],
            width, height, tile_size,
        )  # fmt: skip
        renders.append(render)
        alphas.append(alpha)
    render_colors, render_alphas = torch.stack(renders), torch.stack(alphas)
    if backgrounds is not None:
        render_colors = render_colors + backgrounds[:, None, None, :] * (1 - render_alphas)
    if render_mode in ("ED", "RGB+ED"):
        expected = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected], -1)
    info = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d, "depths": depths,
        "conics": conics, "opacities": opacities, "width": width, "height": height, "tile_size": tile_size,
        "tile_width": math.ceil(width / tile_size), "tile_height": math.ceil(height / tile_size),
        "n_cameras": cameras,
    }  # fmt: skip
    return render_colors, render_alphas, info


def tile_ranges(
    means2d: Float[Tensor, "N 2"], radii: Int[Tensor, " N"], width: int, height: int, tile_size: int
) -> tuple[Int[Tensor, "N 2"], Int[Tensor, "N 2"]]:
    """First and one-past-last tile (x, y) that each Gaussian's square of half-side ``radii`` touches (gsplat's
    ``isect_tiles`` rule); Gaussians with radius 0 touch none."""
    scaled_means, scaled_radii = means2d.detach() / tile_size, radii[:, None] / tile_size
    limits = torch.tensor([math.ceil(width / tile_size), math.ceil(height / tile_size)], device=means2d.device)
    first = torch.minimum(torch.floor(scaled_means - scaled_radii).clamp(min=0).long(), limits)
    last = torch.minimum(torch.ceil(scaled_means + scaled_radii).clamp(min=0).long(), limits)
    last = torch.where((radii > 0)[:, None], last, first)
    return first, last


def composite_tiles(
    means2d: Float[Tensor, "N 2"],
    conics: Float[Tensor, "N 3"],
    colors: Float[Tensor, "N D"],
    opacities: Float[Tensor, " N"],
    radii: Int[Tensor, " N"],
    depths: Float[Tensor, " N"],
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> tuple[Float[Tensor, "H W D"], Float[Tensor, "H W 1"]]:
    """Front-to-back alpha compositing of one camera's projected Gaussians, one tile at a time (rules above)."""
    order = torch.argsort(depths.detach())
    order = order[radii[order] > 0]
    means2d, conics, colors, opacities = means2d[order], conics[order], colors[order], opacities[order]
    first, last = tile_ranges(means2d, radii[order], width, height, tile_size)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([xs, ys], -1).to(means2d) + 0.5  # pixel centres, as gsplat
    render = colors.new_zeros(height, width, colors.shape[-1])
    accumulated = colors.new_zeros(height, width, 1)
    for top in range(0, height, tile_size):
        for left in range(0, width, tile_size):
            tile = torch.tensor([left // tile_size, top // tile_size], device=first.device)
            touching = ((first <= tile) & (tile < last)).all(-1).nonzero()[:, 0]  # still in depth order
            if len(touching) == 0:
                continue
            pixels = centres[top : top + tile_size, left : left + tile_size]
            shape = pixels.shape[:2]
            tile_colour, tile_alpha = composite_pixels(
                pixels.reshape(-1, 2),
                means2d[touching],
                conics[touching],
                colors[touching],
                opacities[touching],
                GAUSSIANS_PER_CHUNK,
            )
            render[top : top + shape[0], left : left + shape[1]] = tile_colour.reshape(*shape, -1)
            accumulated[top : top + shape[0], left : left + shape[1]] = tile_alpha.reshape(*shape, 1)
    return render, accumulated


def composite_pixels(
    pixels: Float[Tensor, "P 2"],
    means2d: Float[Tensor, "G 2"],
    conics: Float[Tensor, "G 3"],
    colors: Float[Tensor, "G D"],
    opacities: Float[Tensor, " G"],
    chunk: int,
) -> tuple[Float[Tensor, "P D"], Float[Tensor, " P"]]:
    """Composite depth-sorted Gaussians over pixels, ``chunk`` Gaussians at a time; stops once no pixel has
    transmittance left (as gsplat's kernel stops a tile), which an opaque scene reaches after a few layers."""
    colour = colors.new_zeros(len(pixels), colors.shape[-1])
    alpha_sum = colors.new_zeros(len(pixels))
    transmittance = colors.new_ones(len(pixels))  # product of (1 - alpha) of every Gaussian so far
    for start in range(0, len(means2d), chunk):
        part = slice(start, start + chunk)
        delta = means2d[part][None] - pixels[:, None]  # [P, G, 2]
        conic = conics[part]
        sigma = (0.5 * (conic[:, 0] * delta[..., 0] ** 2 + conic[:, 2] * delta[..., 1] ** 2)
                 + conic[:, 1] * delta[..., 0] * delta[..., 1])  # fmt: skip
        alpha = torch.clamp_max(opacities[part] * torch.exp(-sigma), ALPHA_MAX)
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
        kept = torch.cumprod(torch.cat([transmittance[:, None], 1 - alpha], 1), 1)  # before each, then after all
        before = kept[:, :-1]
        # the transmittance falls monotonically: past the first Gaussian that would take it to 1e-4, none counts
        weights = torch.where(before * (1 - alpha) > TRANSMITTANCE_MIN, alpha * before, torch.zeros_like(alpha))
        colour = colour + weights @ colors[part]
        alpha_sum = alpha_sum + weights.sum(-1)
        transmittance = kept[:, -1]
        if bool((transmittance <= TRANSMITTANCE_MIN).all()):
            break
    return colour, alpha_sum
