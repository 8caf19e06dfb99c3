"""Gaussian splats: the CPU rasterizer against compositing written out, the splat editing model, the point cloud."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics
from helpers import (
    check_live_viewer,
    checkpoints,
    feathered_left_half,
    fixed_guidance,
    parameter_grads,
    resumed_trainer,
    run,
    step_of,
)
from nerfstudio.engine.callbacks import TrainingCallbackLocation

from ids_nerfstudio.models.splat_rasterizer import rasterization


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


@pytest.mark.parametrize(
    "opacity_range, chunk",
    [((0.05, 0.3), 256), ((0.6, 0.999), 256), ((0.6, 0.999), 3)],
    ids=["translucent", "nearly-opaque", "nearly-opaque-in-chunks-of-3"],
)
def test_the_cpu_rasterizer_equals_per_pixel_front_to_back_compositing_values_and_gradients(
    opacity_range, chunk, monkeypatch
):
    import ids_nerfstudio.models.splat_rasterizer as rasterize_module

    monkeypatch.setattr(rasterize_module, "GAUSSIANS_PER_CHUNK", chunk)  # chunks of 3: the early stop is taken
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

    from ids_nerfstudio.models.splat_rasterizer import torch_rasterization

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
    from ids_nerfstudio.data.ply import read_ply_points, write_ply_points
    from ids_nerfstudio.errors import UserError

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


# ------------------------------------------------------------------------------ the splat editing methods
TINY_CPU = ["--pipeline.prior.model", "tiny", "--pipeline.render-size", "16", "--machine.device-type", "cpu",
            "--vis", "tensorboard"]  # fmt: skip
"""Flags that both representations take: the tiny prior, 16 px guidance views, the CPU."""
SPLAT_EDIT = [*TINY_CPU, "--prompt-src", "a photo of balls", "--prompt-trg", "a photo of oranges"]


@pytest.fixture(scope="module")
def splat_workspace(tmp_path_factory):
    from ids_nerfstudio.demo.scene import write_demo_scene

    workspace = tmp_path_factory.mktemp("splat")
    write_demo_scene(workspace / "scene", size=24, views=6)
    return workspace


@pytest.fixture(scope="module")
def splat_run(splat_workspace):
    """`ns-train ids-splat-edit-demo` from images (the demo scene's point cloud): 20 reconstruction steps, then 2
    editing steps, with the tiny prior."""
    output = splat_workspace / "run"
    result = run([sys.executable, "-m", "nerfstudio.scripts.train", "ids-splat-edit-demo", "--data",
                  str(splat_workspace / "scene"), "--output-dir", str(output), *SPLAT_EDIT,
                  "--reconstruction-steps", "20", "--max-num-iterations", "2"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def splat_trainer(splat_run):
    """A trainer resumed from the splat run, set up in this process (training mode, its data manager)."""
    return resumed_trainer(splat_run, 4)


def test_ids_splat_edit_from_images_starts_from_the_point_cloud_and_renders(splat_run):
    from nerfstudio.utils.eval_utils import eval_setup

    from ids_nerfstudio.demo.world import world_points

    (checkpoint,) = splat_run.rglob("step-*.ckpt")
    state = torch.load(checkpoint, map_location="cpu")
    assert state["step"] == 21 and int(state["pipeline"]["edit_start_step"]) == 20
    assert {"means", "features_dc", "opacities", "scales", "quats", "features_rest"} <= set(state["optimizers"])
    assert not any(word in key for key in state["pipeline"] for word in ("unet", "vae", "text_encoder", "prior"))
    kept = torch.load(next(splat_run.rglob("reconstruction.ckpt")))
    means = "_model.gauss_params.means"
    assert len(kept["pipeline"][means]) == len(world_points()[0]), "no refinement in 20 steps: one per point"
    assert not torch.equal(kept["pipeline"][means], state["pipeline"][means]), "the edit moved the Gaussians"

    (config,) = splat_run.rglob("config.yml")
    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    outputs = pipeline.model.get_outputs_for_camera(camera)
    assert outputs["rgb"].shape == (24, 24, 3) and torch.isfinite(outputs["depth"]).all()  # what ns-render calls


def test_the_splat_model_renders_exactly_as_stock_splatfacto(splat_trainer, monkeypatch):
    """``EditSplatfactoModel.get_outputs`` mirrors splatfacto's: the stock method, run on the CPU with its
    ``.cuda()`` calls made no-ops and gsplat's rasterization replaced by the CPU one, gives the same outputs, in
    training (same random background) and in evaluation mode."""
    import nerfstudio.models.splatfacto as splatfacto

    from ids_nerfstudio.models.splat_rasterizer import torch_rasterization

    model = splat_trainer.pipeline.model
    model.step_cb(splat_trainer.optimizers, int(splat_trainer.pipeline.edit_start_step) - 1)  # as the trainer does
    camera = splat_trainer.pipeline.datamanager.train_dataset.cameras[1:2]
    ours = {}
    for training in (True, False):
        model.train(training)
        torch.manual_seed(4)
        ours[training] = model.get_outputs(copy.deepcopy(camera))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    monkeypatch.setattr(splatfacto, "rasterization", torch_rasterization)
    for training in (True, False):
        model.train(training)
        torch.manual_seed(4)
        stock = splatfacto.SplatfactoModel.get_outputs(model, copy.deepcopy(camera))
        for key in ("rgb", "accumulation", "background"):
            torch.testing.assert_close(ours[training][key], stock[key], msg=f"{key} (training={training})")
        if not training:
            torch.testing.assert_close(ours[training]["depth"], stock["depth"])
    model.train()


def test_a_splat_editing_step_moves_the_loaded_gaussians_and_not_their_number(splat_trainer):
    """While editing (from a resumed run, whose Gaussians splatfacto's load_state_dict replaced): the six Gaussian
    groups take an Adam step on the model's own parameters, and the Gaussians keep their number (no densification,
    pruning or opacity reset: the strategy's state is untouched). (splatfacto's camera optimizer is off.)"""
    trainer, model = splat_trainer, splat_trainer.pipeline.model
    optimizers = trainer.optimizers.optimizers

    def adam_steps(group: str) -> list[int]:
        return [int(optimizers[group].state[p].get("step", 0)) for g in optimizers[group].param_groups
                for p in g["params"]]  # fmt: skip

    step = int(trainer.pipeline.edit_start_step) + 2
    for callback in trainer.callbacks:  # what the trainer's loop does around train_iteration
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    before = {name: p.detach().clone() for name, p in model.gauss_params.items()}
    strategy_before = {key: None if value is None else torch.as_tensor(value).clone()
                       for key, value in model.strategy_state.items()}  # fmt: skip
    steps_before = {group: adam_steps(group) for group in optimizers}
    trainer.train_iteration(step)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    assert model.editing
    assert {name: p.shape for name, p in model.gauss_params.items()} == {n: p.shape for n, p in before.items()}
    moved = {name for name, p in model.gauss_params.items() if not torch.equal(before[name], p)}
    assert {"means", "features_dc", "opacities", "scales", "quats"} <= moved, moved
    for group in ("means", "features_dc", "opacities", "scales", "quats", "features_rest"):
        assert [a - b for a, b in zip(adam_steps(group), steps_before[group], strict=True)] == [1], group
    for key, value in model.strategy_state.items():
        was = strategy_before[key]
        assert (value is None and was is None) or torch.equal(torch.as_tensor(value), was), key


def test_refining_while_editing_grows_the_gaussians_the_edited_views_move(splat_run, monkeypatch):
    """With ``refine_while_editing`` (and splatfacto's strategy set to refine at this step, growing whatever has a
    screen-space gradient, splitting nothing for its size on screen and pruning nothing), one editing step adds one
    Gaussian for each Gaussian with a non-zero screen-space gradient in the step's edited views (a duplicate or the
    second half of a split), and the optimizers hold the grown parameters with their Adam state resized to match."""
    from ids_nerfstudio.models.splatfacto import GAUSSIAN_GROUPS

    trainer = resumed_trainer(splat_run, 4)
    model, strategy = trainer.pipeline.model, trainer.pipeline.model.strategy
    monkeypatch.setattr(model.config, "refine_while_editing", True)
    for name, value in {"refine_start_iter": 0, "refine_every": 1, "grow_grad2d": 0.0, "prune_opa": 0.0,
                        "reset_every": 10**6, "pause_refine_after_reset": 0, "refine_stop_iter": 10**6,
                        "refine_scale2d_stop_iter": 0}.items():  # fmt: skip
        monkeypatch.setattr(strategy, name, value)
    moved = []
    original = type(strategy).step_post_backward

    def recording(self, params, optimizers, state, step, info, packed=False):
        moved.append(int((info["means2d"].grad.norm(dim=-1) > 0).any(0).sum()))
        return original(self, params, optimizers, state, step, info, packed=packed)

    monkeypatch.setattr(type(strategy), "step_post_backward", recording)
    step = int(trainer.pipeline.edit_start_step) + 1
    count = len(model.means)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    trainer.train_iteration(step)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    assert model.editing and len(moved) == 1 and 0 < moved[0] < count
    assert len(model.means) == count + moved[0]
    for group in GAUSSIAN_GROUPS:
        (parameter,) = trainer.optimizers.optimizers[group].param_groups[0]["params"]
        assert parameter is model.gauss_params[group], group
        assert trainer.optimizers.optimizers[group].state[parameter]["exp_avg"].shape == parameter.shape, group


def test_a_live_viewer_of_a_splat_edit_shows_every_editing_step_and_the_editing_controls(
    splat_trainer, splat_workspace, monkeypatch, tmp_path
):  # fmt: skip
    check_live_viewer(splat_trainer, splat_workspace / "scene", monkeypatch, tmp_path)


def test_one_splat_editing_step_applies_the_guidance_gradient_through_one_batched_render(splat_trainer, monkeypatch):
    """For a fixed guidance output G on two views, the step's Gaussian gradients are those of
    ``weight / numel(G_k) * sum_k <G_k, E(R_k)>``, R_k written here as splatfacto's own evaluation render of view k
    resized to the guidance size (one camera at a time, ns-render's background), E the VAE encoder."""

    from ids_nerfstudio.models.cameras import resize_camera

    pipeline, model = splat_trainer.pipeline, splat_trainer.pipeline.model
    seen: dict = {}
    monkeypatch.setattr(pipeline.guidance, "forward", fixed_guidance(seen))
    monkeypatch.setattr(pipeline.config, "regularizer_rays", 0)
    monkeypatch.setattr(pipeline.config, "guidance_weight", 0.7)
    monkeypatch.setattr(pipeline.datamanager.config, "views_per_step", 2)
    model.set_editing(True)
    pipeline.datamanager.reset_edit_views(seed=0)
    model.zero_grad()
    assert pipeline.edit_step(int(pipeline.edit_start_step) + 3) is not None
    indices, ours, grad = pipeline.datamanager.current_edit_views, parameter_grads(model), seen["grad"]
    assert len(set(indices)) == 2 and grad.shape[0] == 2

    model.zero_grad()
    model.eval()
    try:
        renders = []
        for i in indices:
            camera = resize_camera(pipeline.datamanager.train_dataset.cameras[i : i + 1], 16, 16)
            renders.append(model.get_outputs(camera)["rgb"])
        latents = pipeline.prior.encode_images(torch.stack(renders).permute(0, 3, 1, 2))
        (0.7 / grad[0].numel() * (grad * latents).sum()).backward()
    finally:
        model.train()
    expected = parameter_grads(model)
    assert ours.keys() == expected.keys() and any(g.abs().sum() > 0 for g in expected.values())
    for name in expected:
        error = (ours[name] - expected[name]).norm() / expected[name].norm().clamp(min=1e-12)
        assert error < 1e-4, f"{name}: relative error {float(error):.2e}"


def left_half_masked_step(splat_trainer, tmp_path: Path, monkeypatch, **config: Any):
    """The splat trainer's pipeline set up for a masked editing step: every view's mask white on its left half (a
    folder of masks), zero guidance, colour loss weight 0.6 and ``config``'s pipeline settings; the data manager
    hands out one fixed training camera and batch. Returns (pipeline, model, camera, batch)."""
    from PIL import Image

    pipeline, model = splat_trainer.pipeline, splat_trainer.pipeline.model
    datamanager = pipeline.datamanager
    mask = np.zeros((24, 24), dtype=np.uint8)
    mask[:, :12] = 255
    for name in datamanager.train_dataset.image_filenames:
        Image.fromarray(mask).save(tmp_path / f"{Path(name).stem}.png")
    monkeypatch.setattr(pipeline.guidance, "forward", fixed_guidance({"scale": 0.0}))
    monkeypatch.setattr(pipeline.config.mask, "source", str(tmp_path))
    for name, value in {"keep_outside_mask": 0.6, **config}.items():
        monkeypatch.setattr(pipeline.config, name, value)
    camera, batch = datamanager.next_train(0)
    monkeypatch.setattr(datamanager, "next_train", lambda step: (copy.deepcopy(camera), dict(batch)))
    pipeline.masks.clear()
    model.set_editing(True)
    return pipeline, model, camera, batch


def test_with_a_mask_a_splat_editing_step_also_fits_the_image_outside_it(splat_trainer, tmp_path, monkeypatch):
    """Masks white on each view's left half and zero guidance: the step applies the gradient of
    w * mean_p((1 - m_p) * mean_c (rgb_pc - image_pc)^2) on its training image (as nerfacto's), m_p the mask of
    the image's view at its pixel, grown by --pipeline.mask.view-dilation (2 pixels) and its edge feathered by
    --pipeline.mask.view-feather (1 pixel)."""
    pipeline, model, camera, batch = left_half_masked_step(splat_trainer, tmp_path, monkeypatch)
    model.zero_grad()
    torch.manual_seed(0)  # the training render's random background
    scalars = pipeline.edit_step(int(pipeline.edit_start_step) + 5)
    ours = parameter_grads(model)
    assert "keep_rgb_loss" in scalars

    keep = 0.6 * (1 - feathered_left_half(white=12 + pipeline.config.mask.view_dilation)).expand(24, 24)
    assert (keep < 0.01).any() and (keep > 0.5).any(), "pixels inside and outside the masks"
    model.zero_grad()
    torch.manual_seed(0)
    outputs = model(copy.deepcopy(camera))
    image = batch["image"].float() / 255
    ((keep * (outputs["rgb"] - image).pow(2).mean(-1)).mean()).backward()
    expected = parameter_grads(model)
    for name, value in ours.items():
        torch.testing.assert_close(value, expected.get(name, torch.zeros_like(value)), rtol=1e-4, atol=1e-8,
                                   msg=name)  # fmt: skip


def test_keep_target_reconstruction_on_splats_fits_the_pixels_outside_the_mask_to_the_kept_scene(
    splat_trainer, tmp_path, monkeypatch
):
    """--pipeline.keep-target reconstruction: the loss of the test above with the image replaced by the render of
    the kept copy (the scene as the edit started) over the same background as the model's render. Training draws a
    random background per render: while the scene is the kept one the loss is zero all the same; after its colours
    move, it is the loss written out with the kept copy rendered here over the model's drawn background."""
    pipeline, model, camera, batch = left_half_masked_step(
        splat_trainer, tmp_path, monkeypatch, keep_target="reconstruction"
    )
    colours = model.gauss_params["features_dc"].detach().clone()
    step = int(pipeline.edit_start_step) + 5
    try:
        pipeline.freeze_reconstruction()
        kept = pipeline.reconstruction
        torch.manual_seed(0)
        assert float(pipeline.edit_step(step)["keep_rgb_loss"]) < 1e-10, "the kept scene, another background"
        torch.manual_seed(0)
        assert (1 - model(copy.deepcopy(camera))["accumulation"]).max() > 0.05, "the background shows"

        with torch.no_grad():
            model.gauss_params["features_dc"] += 0.5
        model.zero_grad()
        torch.manual_seed(0)
        scalars = pipeline.edit_step(step)
        ours = parameter_grads(model)
        keep = 0.6 * (1 - feathered_left_half(white=12 + pipeline.config.mask.view_dilation)).expand(24, 24)
        model.zero_grad()
        torch.manual_seed(0)
        outputs = model(copy.deepcopy(camera))
        monkeypatch.setattr(kept, "_get_background_color", lambda: outputs["background"].detach())
        with torch.no_grad():
            target = kept(copy.deepcopy(camera))["rgb"]
        assert (target - outputs["rgb"]).abs().max() > 0.1
        loss = (keep * (outputs["rgb"] - target).pow(2).mean(-1)).mean()
        torch.testing.assert_close(scalars["keep_rgb_loss"], loss.detach(), rtol=1e-4, atol=1e-8)
        loss.backward()
        expected = parameter_grads(model)
        for name, value in ours.items():
            torch.testing.assert_close(value, expected.get(name, torch.zeros_like(value)), rtol=1e-4, atol=1e-8,
                                       msg=name)  # fmt: skip
    finally:
        with torch.no_grad():
            model.gauss_params["features_dc"].copy_(colours)
        pipeline.__dict__["reconstruction"] = None


def test_ids_compare_compares_a_nerfacto_and_a_splat_edit_of_one_scene(splat_workspace):
    """``ids-compare --methods ids-edit-demo ids-splat-edit-demo``: each reconstructs the scene from its images
    (3 steps), edits it (1 step), is measured by ids-eval, and takes its row of the table."""
    import json

    output = splat_workspace / "compare"
    result = run([sys.executable, "-m", "ids_nerfstudio.scripts.compare", "--data", str(splat_workspace / "scene"),
                  "--prompt-src", "a photo of balls", "--prompt-trg", "a photo of oranges",
                  "--methods", "ids-edit-demo", "ids-splat-edit-demo", "--max-num-iterations", "1",
                  "--output-dir", str(output), "--", *TINY_CPU, "--reconstruction-steps", "3"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((output / "comparison.json").read_text())
    assert list(table) == ["ids-edit-demo", "ids-splat-edit-demo"]
    assert all(math.isfinite(row["clip_score"]) and math.isfinite(row["background_psnr"]) for row in table.values())
    assert "| ids-splat-edit-demo |" in (output / "comparison.md").read_text()


STOCK_SPLATFACTO = """
import sys
import torch
import nerfstudio.models.splatfacto as splatfacto
from ids_nerfstudio.models.lpips import lazy_lpips
from ids_nerfstudio.models.splat_rasterizer import torch_rasterization
# stock splatfacto 1.1.5 on the CPU: its .cuda() calls made no-ops, gsplat's CUDA rasterization swapped for the
# CPU one and LPIPS's AlexNet download avoided; model, data manager, strategy, optimizers and checkpoints are
# nerfstudio's own
torch.Tensor.cuda = lambda self, *args, **kwargs: self
splatfacto.rasterization = torch_rasterization
from nerfstudio.scripts.train import entrypoint
sys.argv = ["ns-train", "splatfacto", *sys.argv[1:]]
with lazy_lpips():
    entrypoint()
"""


def test_ids_splat_edit_from_a_stock_splatfacto_run_edits_its_gaussians_and_writes_nothing_there(splat_workspace):
    """``ns-train splatfacto`` (stock: random initialisation, 30 steps), then ``ids-splat-edit --load-dir`` of it:
    the edit counts its own steps after the source's, moves the source's Gaussians and keeps their number, and
    writes nothing into the source run."""


    stock = splat_workspace / "stock"
    result = run([sys.executable, "-c", STOCK_SPLATFACTO, "--data", str(splat_workspace / "scene"), "--output-dir",
                  str(stock), "--machine.device-type", "cpu", "--vis", "tensorboard", "--max-num-iterations", "30",
                  "--pipeline.model.use-absgrad", "False", "--pipeline.model.random-init", "True",
                  "--pipeline.model.num-random", "800",
                  "nerfstudio-data", "--load-3D-points", "False"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (source,) = checkpoints(stock)
    output = splat_workspace / "from-stock"
    result = run([sys.executable, "-m", "nerfstudio.scripts.train", "ids-splat-edit", "--data",
                  str(splat_workspace / "scene"), "--output-dir", str(output), *SPLAT_EDIT, "--load-dir",
                  str(source.parent), "--max-num-iterations", "2"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (edited,) = checkpoints(output)
    assert step_of(edited) == step_of(source) + 2
    assert checkpoints(stock) == [source], "nothing is written into the source run"
    before, after = (torch.load(c, map_location="cpu")["pipeline"] for c in (source, edited))
    means = "_model.gauss_params.means"
    assert after[means].shape == before[means].shape == (800, 3)
    assert not torch.equal(after[means], before[means]), "the edit moved the stock run's Gaussians"
    assert after["_model.gauss_params.features_rest"].shape == before["_model.gauss_params.features_rest"].shape


EXPORT = """
import sys, types
try:
    import open3d  # noqa: F401
except ImportError:  # nerfstudio's exporter module imports open3d, which gaussian-splat export never calls
    sys.modules["open3d"] = types.ModuleType("open3d")
from nerfstudio.scripts.exporter import entrypoint
sys.argv = ["ns-export", "gaussian-splat", *sys.argv[1:]]
entrypoint()
"""


def test_ns_export_gaussian_splat_writes_the_edited_gaussians_as_a_3dgs_ply(splat_run, tmp_path):
    """The .ply a 3DGS viewer opens: one vertex per Gaussian of opacity >= 1/255, with the 3DGS properties, and
    the edited run's positions and colours. (open3d needs the system's libusb; without it a stand-in module lets
    nerfstudio's exporter import: gaussian-splat export never calls open3d.)"""
    from ids_nerfstudio.data.ply import read_ply_points

    (config,) = splat_run.rglob("config.yml")
    result = run([sys.executable, "-c", EXPORT, "--load-config", str(config), "--output-dir", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    data = (tmp_path / "splat.ply").read_bytes()
    header = data[: data.index(b"end_header")].decode().splitlines()
    properties = [line.split()[-1] for line in header if line.startswith("property")]
    assert {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "rot_0"} <= set(properties)
    (checkpoint,) = splat_run.rglob("step-*.ckpt")
    params = torch.load(checkpoint, map_location="cpu")["pipeline"]
    kept = params["_model.gauss_params.opacities"][:, 0] >= math.log(1 / 254)  # logit(1/255)
    count = int(next(line for line in header if line.startswith("element vertex")).split()[-1])
    assert count == int(kept.sum()) > 0
    xyz, _ = read_ply_points(tmp_path / "splat.ply")
    np.testing.assert_allclose(xyz, params["_model.gauss_params.means"][kept].numpy(), rtol=1e-6)


def test_the_mirror_of_splatfactos_get_outputs_follows_nerfstudios_source():
    """EditSplatfactoModel.get_outputs mirrors splatfacto's line by line; when nerfstudio changes its source, this
    fails until the mirror (and the recorded hash) are updated together."""
    import hashlib
    import inspect

    from nerfstudio.models.splatfacto import SplatfactoModel

    from ids_nerfstudio.models.splatfacto import SPLATFACTO_GET_OUTPUTS_SHA256

    source = inspect.getsource(SplatfactoModel.get_outputs)
    assert hashlib.sha256(source.encode()).hexdigest() == SPLATFACTO_GET_OUTPUTS_SHA256, (
        "nerfstudio's SplatfactoModel.get_outputs changed: update EditSplatfactoModel.get_outputs to mirror it"
    )


def test_a_nerfacto_method_given_a_splat_checkpoint_names_the_method_that_reads_it(
    splat_run, splat_workspace, tmp_path
):
    (models,) = {path.parent for path in checkpoints(splat_run)}
    output = tmp_path / "out"
    result = run([sys.executable, "-m", "nerfstudio.scripts.train", "ids-edit", "--data",
                  str(splat_workspace / "scene"), "--output-dir", str(output), "--load-dir", str(models),
                  "--prompt-trg", "x", "--machine.device-type", "cpu", "--vis", "tensorboard"])  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "holds a splatfacto checkpoint, which ids-edit cannot load: edit it with ids-splat-edit" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr and not output.exists()


def test_splat_view_points_lie_on_each_pixels_ray_at_the_rendered_axis_depth(splat_trainer):
    """splatfacto's ``view_points``: each point projects back into its own pixel, and its depth along the camera's
    viewing axis is the depth splatfacto's own evaluation render gives (where a Gaussian covers the pixel)."""
    from ids_nerfstudio.editing.masks import project_points

    model = splat_trainer.pipeline.model
    camera = splat_trainer.pipeline.datamanager.train_dataset.cameras[0:1].to(model.device)
    points = model.view_points(camera)
    height, width = int(camera.height), int(camera.width)
    row, column, inside = project_points(points.reshape(-1, 3), camera)
    assert inside.all() and torch.equal(row * width + column, torch.arange(height * width))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model.get_outputs(camera)
    finally:
        model.train(was_training)
    pose = camera.camera_to_worlds[0]
    along_axis = -((points - pose[:, 3]) @ pose[:, 2])  # the camera looks down -z
    covered = outputs["accumulation"][..., 0] > 0
    assert covered.float().mean() > 0.5, "the view shows the scene"
    torch.testing.assert_close(along_axis[covered], outputs["depth"][..., 0][covered], rtol=1e-4, atol=1e-5)
