"""Gaussian splats: the CPU rasterizer against compositing written out, the splat editing model, the point cloud."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

from ids_nerfstudio.nerf.rasterize import rasterization


def gaussians(count: int, opacity_range: tuple[float, float], seed: int) -> dict[str, torch.Tensor]:
    """Seeded Gaussians in front of the cameras below (float64, gradients on), some stacked on the view axis so
    that compositing runs out of transmittance, one behind the near plane, SH degree 1 colours."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    means = torch.cat([uniform(count, 3, low=-0.8, high=0.8), torch.zeros(1, 3)])
    means[: count // 3, :2] *= 0.05  # a stack on the axis
    means[-1, 2] = -3.5  # behind the first camera (z_cam = z + 3 < 0.01, its near plane)
    lo, hi = opacity_range
    params = {
        "means": means,
        "quats": uniform(count + 1, 4, low=-1, high=1),
        "scales": uniform(count + 1, 3, low=0.04, high=0.25),
        "opacities": uniform(count + 1, low=lo, high=hi),
        "colors": uniform(count + 1, 4, 3, low=-0.5, high=0.5),
    }
    return {name: value.requires_grad_(True) for name, value in params.items()}


def cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """Two world-to-camera matrices (camera 0 at z = 3 looking down -z in OpenCV terms; camera 1 moved and turned)
    and their intrinsics, for a 20 x 18 image (2 x 2 tiles of 16 px)."""
    viewmats = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    viewmats[:, 2, 3] = 3.0
    angle = 0.3
    viewmats[1, :3, :3] = torch.tensor(
        [[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]]
    )
    viewmats[1, :3, 3] = torch.tensor([0.2, -0.1, 3.2])
    intrinsics = torch.tensor([[22.0, 0, 10.0], [0, 21.0, 9.0], [0, 0, 1]], dtype=torch.float64).repeat(2, 1, 1)
    return viewmats, intrinsics


def composite_by_hand(params, viewmats, intrinsics, width, height, background):
    """Front-to-back compositing, one pixel and one Gaussian at a time, with gsplat's rules written out: the
    projection and SH colours from gsplat's pure-torch reference; a Gaussian counts in the 16 px tiles its radius
    box touches; alpha = min(0.999, o exp(-sigma)), skipped below 1/255 or for sigma < 0; stop before the
    transmittance would reach 1e-4; depth is the expected depth; the background is added under what is left."""
    covars, _ = _quat_scale_to_covar_preci(params["quats"], params["scales"], True, False, triu=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        params["means"], covars, viewmats, intrinsics, width, height
    )
    centres = torch.linalg.inv(viewmats)[:, :3, 3]
    images, alphas = [], []
    for c in range(len(viewmats)):
        colours = _spherical_harmonics(1, params["means"] - centres[c], params["colors"]).clamp_min(-0.5) + 0.5
        colours = torch.cat([colours, depths[c][:, None]], -1)
        order = [int(g) for g in torch.argsort(depths[c]) if radii[c, g] > 0]
        rows, row_alphas = [], []
        for y in range(height):
            row, row_alpha = [], []
            for x in range(width):
                transmittance, colour = torch.ones((), dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
                for g in order:
                    mx, my = means2d[c, g].detach().tolist()
                    r = float(radii[c, g])
                    in_x = math.floor((mx - r) / 16) <= x // 16 < math.ceil((mx + r) / 16)
                    in_y = math.floor((my - r) / 16) <= y // 16 < math.ceil((my + r) / 16)
                    if not (in_x and in_y):
                        continue
                    dx, dy = means2d[c, g, 0] - (x + 0.5), means2d[c, g, 1] - (y + 0.5)
                    a, b, cc = conics[c, g]
                    sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
                    if sigma < 0:
                        continue
                    alpha = torch.clamp_max(params["opacities"][g] * torch.exp(-sigma), 0.999)
                    if alpha < 1 / 255:
                        continue
                    if transmittance * (1 - alpha) <= 1e-4:
                        break
                    colour = colour + alpha * transmittance * colours[g]
                    transmittance = transmittance * (1 - alpha)
                accumulated = 1 - transmittance
                depth = colour[3] / accumulated.clamp(min=1e-10)
                row.append(torch.cat([colour[:3] + background[c] * transmittance, depth[None]]))
                row_alpha.append(accumulated[None])
            rows.append(torch.stack(row))
            row_alphas.append(torch.stack(row_alpha))
        images.append(torch.stack(rows))
        alphas.append(torch.stack(row_alphas))
    return torch.stack(images), torch.stack(alphas)


@pytest.mark.parametrize("opacity_range", [(0.05, 0.3), (0.6, 0.999)], ids=["translucent", "nearly-opaque"])
def test_the_cpu_rasterizer_equals_per_pixel_front_to_back_compositing_values_and_gradients(opacity_range):
    width, height = 20, 18
    params = gaussians(24, opacity_range, seed=3)
    viewmats, intrinsics = cameras()
    background = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64)
    render, alpha, info = rasterization(
        params["means"], params["quats"], params["scales"], params["opacities"], params["colors"], viewmats,
        intrinsics, width, height, sh_degree=1, backgrounds=background, render_mode="RGB+ED",
    )  # fmt: skip
    expected_render, expected_alpha = composite_by_hand(params, viewmats, intrinsics, width, height, background)
    assert render.shape == (2, height, width, 4) and alpha.shape == (2, height, width, 1)
    assert info["radii"][0, -1] == 0  # the Gaussian behind the camera is culled
    torch.testing.assert_close(render, expected_render, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-9, atol=1e-10)
    stopped = alpha.max()
    if opacity_range[0] > 0.5:  # the stack uses up the transmittance: compositing stopped early somewhere
        assert stopped > 1 - 1e-3
    weights = torch.randn(render.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha_weights = torch.randn(alpha.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = torch.autograd.grad((render * weights).sum() + (alpha * alpha_weights).sum(), list(params.values()))
    theirs = torch.autograd.grad(
        (expected_render * weights).sum() + (expected_alpha * alpha_weights).sum(), list(params.values())
    )
    for name, mine, reference in zip(params, ours, theirs, strict=True):
        assert reference.abs().sum() > 0, name  # every parameter matters to the picture
        torch.testing.assert_close(mine, reference, rtol=1e-7, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


def test_the_cpu_rasterizer_refuses_what_only_gsplats_cuda_kernels_compute():
    params = gaussians(4, (0.1, 0.2), seed=0)
    viewmats, intrinsics = cameras()
    args = (params["means"], params["quats"], params["scales"], params["opacities"], params["colors"][:, 0],
            viewmats, intrinsics, 8, 8)  # fmt: skip
    with pytest.raises(ValueError, match="use-absgrad False"):
        rasterization(*args, absgrad=True)
    with pytest.raises(ValueError, match="packed"):
        rasterization(*args, packed=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gsplat's kernels)")
def test_the_cpu_rasterizer_matches_gsplats_cuda_rasterization():
    from gsplat.rendering import rasterization as gsplat_rasterization

    from ids_nerfstudio.nerf.rasterize import torch_rasterization

    width, height = 64, 48
    params = {name: value.detach().float() for name, value in gaussians(300, (0.05, 0.95), seed=5).items()}
    viewmats, intrinsics = (tensor.float() for tensor in cameras())
    intrinsics = intrinsics * torch.tensor([[3.0], [3.0], [1.0]])
    results = []
    for device in ("cpu", "cuda"):
        inputs = {name: value.to(device).requires_grad_(True) for name, value in params.items()}
        rasterize = torch_rasterization if device == "cpu" else gsplat_rasterization
        render, alpha, _ = rasterize(inputs["means"], inputs["quats"], inputs["scales"], inputs["opacities"],
                                     inputs["colors"], viewmats.to(device), intrinsics.to(device), width, height,
                                     sh_degree=1, render_mode="RGB+ED")  # fmt: skip
        weights = torch.linspace(-1, 1, render.numel(), device=device).reshape(render.shape)
        grads = torch.autograd.grad((render * weights).sum() + alpha.sum(), list(inputs.values()))
        results.append([render.cpu(), alpha.cpu(), *(g.cpu() for g in grads)])
    for name, cpu, cuda in zip(["render", "alpha", *params], *results, strict=True):
        relative = (cpu - cuda).norm() / cuda.norm().clamp(min=1e-12)
        assert relative <= 1e-4, f"{name}: relative error {relative:.2e}"


def test_a_ply_point_cloud_round_trips_and_ascii_ply_reads(tmp_path):
    from ids_nerfstudio.errors import UserError
    from ids_nerfstudio.nerf.points import read_ply_points, write_ply_points

    xyz = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    rgb = np.random.default_rng(1).integers(0, 256, size=(50, 3)).astype(np.uint8)
    write_ply_points(tmp_path / "points.ply", xyz, rgb)
    read_xyz, read_rgb = read_ply_points(tmp_path / "points.ply")
    np.testing.assert_array_equal(read_xyz, xyz)
    np.testing.assert_array_equal(read_rgb, rgb)
    header = "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
    (tmp_path / "ascii.ply").write_text(header + "property float red\nproperty float green\nproperty float blue\n"
                                        "end_header\n1 2 3 1 0 0.5\n4 5 6 0 1 0\n")  # fmt: skip
    read_xyz, read_rgb = read_ply_points(tmp_path / "ascii.ply")
    np.testing.assert_array_equal(read_xyz, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(read_rgb, [[255, 0, 128], [0, 255, 0]])  # open3d's [0, 1] colours
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(UserError, match="bad.ply: not a PLY file"):
        read_ply_points(tmp_path / "bad.ply")
