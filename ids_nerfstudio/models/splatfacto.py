"""Gaussian splats for editing: nerfstudio's splatfacto, on CUDA (gsplat) and CPU, implementing the editing contract
(editing/contract.py).

splatfacto 1.1.5 renders only on CUDA (``.cuda()`` calls in ``get_outputs`` and ``populate_modules``, and gsplat's
CUDA rasterizer); ``EditSplatfactoModel`` keeps its fields, parameters, losses and checkpoints and renders through
``splat_rasterizer.rasterization`` (gsplat's on CUDA tensors, the pure-torch one on CPU).

While editing, the number of Gaussians is fixed by default: no densification, pruning or opacity reset (the strategy
is not stepped; ``refine_while_editing`` steps it on the edited views' gradients). The edit moves what the
reconstruction already has (colour, opacity, position, shape), which keeps the scene's identity and the memory of
the run bounded; splatfacto's refinement answers the photometric loss of a reconstruction, and the guidance
gradient is no such signal (its screen-space gradients are noisy by design); docs/demo-methods.md measures both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import RGB2SH, SplatfactoModel, SplatfactoModelConfig, get_viewmat
from torch import Tensor

from ids_nerfstudio.editing.contract import KeepWeights, RenderedViews, RenderOptions
from ids_nerfstudio.models.cameras import pixel_points, resize_camera
from ids_nerfstudio.models.lpips import LazyLPIPS, lazy_lpips
from ids_nerfstudio.models.splat_rasterizer import rasterization

SPLATFACTO_GET_OUTPUTS_SHA256 = "ebe38a3708f07ea52b6eead101870cffdad9851c0f9d9cbdc528f11cfbdf263e"
"""SHA-256 of the source of nerfstudio 1.1.5's ``SplatfactoModel.get_outputs``, which ``get_outputs`` mirrors (as
diffusers checks its ``# Copied from`` code): a nerfstudio that changes it fails a test until the mirror follows."""

GAUSSIAN_GROUPS = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
"""splatfacto's optimizer groups of the Gaussians (camera_opt and bilateral_grid are the others)."""


@dataclass
class EditSplatfactoModelConfig(SplatfactoModelConfig):
    """splatfacto for editing: same fields and checkpoints as stock splatfacto, rendering on CUDA and CPU."""

    _target: type = field(default_factory=lambda: EditSplatfactoModel)
    refine_while_editing: bool = False
    """Go on with splatfacto's densification, pruning and opacity reset while editing, from the screen-space
    gradients of the edited views (until --pipeline.model.stop-split-at, as in reconstruction); off, the number of
    Gaussians stays that of the reconstruction."""


class EditSplatfactoModel(SplatfactoModel):
    """A ``SplatfactoModel`` that builds offline, renders on any device, and is an ``EditableModel``."""

    config: EditSplatfactoModelConfig
    edited_param_groups = GAUSSIAN_GROUPS
    """Optimizer groups stepped while editing (the camera optimizer stays fixed)."""
    checkpoint_key_prefix = "_model.gauss_params."
    """A key prefix of every checkpoint of this model (``--load-dir`` of another model's run is named first)."""
    editing = False
    edit_info: dict[str, Any] | None = None
    """The rasterizer's info of the last edited views, for the refinement while editing."""
    appearance_off = False
    """Whether the bilateral grid (splatfacto's per-view colour correction, off by default) is skipped in training."""

    def populate_modules(self) -> None:
        colours = None
        if self.seed_points is not None and not self.config.random_init and len(self.seed_points[1]) > 0:
            # splatfacto builds the seed colours with .cuda(): give it none and set them here, on the CPU
            colours = self.seed_points[1]
            self.seed_points = (self.seed_points[0], colours[:0])
        with lazy_lpips():
            super().populate_modules()
        if not isinstance(self.lpips, LazyLPIPS):
            raise RuntimeError("splatfacto built its LPIPS metric outside ids_nerfstudio's lazy_lpips()")
        if colours is not None:
            rgb = colours.float() / 255
            features = RGB2SH(rgb) if self.config.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
            self.gauss_params["features_dc"] = torch.nn.Parameter(features)

    def set_editing(self, editing: bool) -> None:
        """Freeze (editing) or unfreeze the camera optimizer; while editing the Gaussians are not refined."""
        self.editing = editing
        self.camera_optimizer.requires_grad_(not editing)

    def set_appearance_off(self, off: bool) -> None:
        """Off: training renders skip the bilateral grid, splatfacto's only per-view appearance (renders of new
        views never apply it); without one (the default) nothing changes."""
        self.appearance_off = off

    def step_post_backward(self, step: int) -> None:
        """splatfacto's densification and pruning after each reconstruction step; while editing, only with
        ``refine_while_editing``, from the edited views' statistics."""
        if not self.editing:
            super().step_post_backward(step)
        elif self.config.refine_while_editing and self.edit_info is not None:
            info, self.edit_info = self.edit_info, None
            if info["means2d"].grad is not None:  # none when the step was skipped (a non-finite guidance gradient)
                self.info = info
                super().step_post_backward(step)

    def rasterize(
        self, viewmats: Float[Tensor, "C 4 4"], intrinsics: Float[Tensor, "C 3 3"], width: int, height: int,
        render_mode: str, crop_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:  # fmt: skip
        """The Gaussians (those of ``crop_ids``, if given) rasterized into C views, with splatfacto's activations
        and SH degree schedule."""
        params = {name: self.gauss_params[name] for name in GAUSSIAN_GROUPS}
        if crop_ids is not None:
            params = {name: value[crop_ids] for name, value in params.items()}
        colors = torch.cat([params["features_dc"][:, None, :], params["features_rest"]], 1)
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors, sh_degree = torch.sigmoid(colors).squeeze(1), None
        return rasterization(
            means=params["means"], quats=params["quats"], scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]).squeeze(-1), colors=colors, viewmats=viewmats,
            Ks=intrinsics, width=width, height=height, packed=False, near_plane=0.01, far_plane=1e10,
            render_mode=render_mode, sh_degree=sh_degree, sparse_grad=False,
            absgrad=self.strategy.absgrad and self.training and not self.editing,
            rasterize_mode=self.config.rasterize_mode,
        )  # fmt: skip

    def get_outputs(self, camera: Cameras) -> dict[str, Tensor | list]:
        """splatfacto's ``get_outputs`` (1.1.5), on the camera's device instead of ``.cuda()``, and without the
        strategy's bookkeeping while editing. Mirrors it line by line: tests/test_splat.py compares the two outputs, and
        fails when the source of splatfacto's own changes (``SPLATFACTO_GET_OUTPUTS_SHA256``)."""
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            if camera.shape[0] != 1:
                raise ValueError("splatfacto trains on one camera at a time")
            camera_to_world = self.camera_optimizer.apply_to_camera(camera)
        else:
            camera_to_world = camera.camera_to_worlds
        crop_ids = None
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                width, height = int(camera.width.item()), int(camera.height.item())
                return self.get_empty_outputs(width, height, self.background_color)
        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        intrinsics = camera.get_intrinsics_matrices().to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        self.last_size = (height, width)
        camera.rescale_output_resolution(scale)
        if self.config.rasterize_mode not in ("antialiased", "classic"):
            raise ValueError(f"Unknown rasterize_mode: {self.config.rasterize_mode}")
        depth_wanted = self.config.output_depth_during_training or not self.training
        render_mode = "RGB+ED" if depth_wanted else "RGB"
        viewmat = get_viewmat(camera_to_world.to(self.device))
        render, alpha, self.info = self.rasterize(viewmat, intrinsics, width, height, render_mode, crop_ids)
        if self.training and not self.editing:
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step,
                                            self.info)  # fmt: skip
        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        per_view = self.config.use_bilateral_grid and self.training and not self.appearance_off
        if per_view and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], height, width)
        depth = None
        if depth_wanted:
            depth = torch.where(alpha > 0, render[..., 3:4], render[..., 3:4].detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(height, width, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    # ------------------------------------------------------------------------------- the editing contract
    def render_edit_views(
        self, cameras: Sequence[Cameras], indices: Sequence[int], width: int, height: int, seed: int,
        options: RenderOptions,
    ) -> RenderedViews:  # fmt: skip
        """All views in one rasterization call, with one autograd graph (a splat view's graph is small, so the
        render options' chunking does not apply); the background is the one ns-render shows."""
        resized = [resize_camera(camera, width, height).to(self.device) for camera in cameras]
        viewmats = torch.cat([get_viewmat(camera.camera_to_worlds) for camera in resized])
        intrinsics = torch.cat([camera.get_intrinsics_matrices() for camera in resized]).to(self.device)
        render, alpha, info = self.rasterize(viewmats, intrinsics, width, height, "RGB")
        fixed = self.config.background_color == "random"  # training draws a random one; ns-render shows this one
        background = (self.background_color if fixed else self._get_background_color()).to(render)
        images = torch.clamp(render + (1 - alpha) * background, 0.0, 1.0)
        return RenderedViews(images=images.permute(0, 3, 1, 2), replay=info)

    def backpropagate_edit_views(self, views: RenderedViews, image_grad: Float[Tensor, "B 3 H W"]) -> None:
        """The backward of the render's graph. With ``refine_while_editing`` the strategy's statistics are taken
        here, around the backward, as splatfacto takes them around a reconstruction step's: its
        ``step_pre_backward`` before, and the rasterizer's info kept for ``step_post_backward``."""
        info = views.replay
        refine = self.config.refine_while_editing and self.training
        if refine:
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, info)
        views.images.backward(image_grad.to(views.images))
        if refine:
            self.edit_info = info

    @torch.no_grad()
    def view_points(self, camera: Cameras) -> Float[Tensor, "H W 3"]:
        """Each pixel's ray at the rasterizer's expected depth (along the camera's axis); where no Gaussian
        covers the pixel, at the view's farthest depth."""
        camera = camera.reshape((1,)).to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        viewmat = get_viewmat(camera.camera_to_worlds)
        render, alpha, _ = self.rasterize(viewmat, camera.get_intrinsics_matrices(), width, height, "RGB+ED")
        depth = torch.where(alpha > 0, render[..., 3:4], render[..., 3:4].max())[0, ..., 0]
        return pixel_points(camera[0], depth, along_axis=True)

    def editing_regularizer_losses(
        self, train_input: Cameras, batch: dict[str, Any], budget: int, keep: KeepWeights | None = None,
        reference: EditSplatfactoModel | None = None,
    ) -> dict[str, Tensor]:  # fmt: skip
        """splatfacto has no loss that is not a colour loss (its scale regularization, when on, is kept); with
        ``keep`` also ``keep_rgb_loss``, the mean of the squared colour error over the batch's training image, each
        pixel weighted by its keep weight, as for nerfacto: what lies outside the edit keeps fitting its images, or
        with ``reference`` its render of the same camera (over this render's background).
        (Squared, not splatfacto's L1: L1's constant pull at small errors holds the rim of a recoloured object at
        its old colour.) ``budget`` does not apply: the batch is one whole image."""
        kept: dict[str, Tensor] = {}
        if keep is None and not self.config.use_scale_regularization:
            return kept
        outputs = self(train_input)
        losses = self.get_loss_dict(outputs, batch)
        if self.config.use_scale_regularization:
            kept["scale_reg"] = losses["scale_reg"]
        if keep is not None:
            if reference is None:
                image = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
            else:
                with torch.no_grad():
                    kept_render = reference.train(self.training)(train_input)
                # its own background (training draws a random one) replaced by this render's
                background_change = outputs["background"] - kept_render["background"]
                image = kept_render["rgb"] + (1 - kept_render["accumulation"]) * background_change
            error = (outputs["rgb"] - image).pow(2).mean(-1)
            weights = keep(int(batch["image_idx"]))[None, None].to(error)
            weights = F.interpolate(weights, size=error.shape, mode="nearest")[0, 0]  # splatfacto may downscale
            kept["keep_rgb_loss"] = (weights * error).mean()
        return kept
