"""nerfacto for editing: constructible offline, implementing the editing contract (editing/contract.py) with the
ray-chunked renderer of ``nerfacto_rendering``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from torch import Tensor

from ids_nerfstudio.editing.contract import KeepWeights, RenderedViews, RenderOptions
from ids_nerfstudio.models.cameras import pixel_points
from ids_nerfstudio.models.lpips import LazyLPIPS, lazy_lpips
from ids_nerfstudio.models.nerfacto_rendering import backpropagate_views, render_views


@dataclass
class EditNerfactoModelConfig(NerfactoModelConfig):
    """nerfacto for editing: same fields and checkpoints as stock nerfacto."""

    _target: type = field(default_factory=lambda: EditNerfactoModel)


class EditNerfactoModel(NerfactoModel):
    """A ``NerfactoModel`` that builds offline and is an ``EditableModel``.

    In editing mode the camera poses and the appearance embedding are frozen and the guidance renders use the
    average appearance embedding (what ``ns-render`` shows), so that an edit lands in the radiance field
    instead of in per-view appearance codes or camera tweaks. With the appearance off (PDS's refinement) the
    training batches use that average embedding too.
    """

    config: EditNerfactoModelConfig
    edited_param_groups = ("proposal_networks", "fields")
    """Optimizer groups stepped while editing (the camera optimizer stays fixed)."""
    checkpoint_key_prefix = "_model.field."
    """A key prefix of every checkpoint of this model (``--load-dir`` of another model's run is named first)."""
    regularizer_loss_names = ("interlevel_loss", "distortion_loss")
    """nerfacto losses kept while editing: they shape the proposal networks and density, not the colours."""
    appearance_off = False
    """Whether every ray takes the average appearance embedding, training rays included (``set_appearance_off``)."""

    def populate_modules(self) -> None:
        with lazy_lpips():
            super().populate_modules()
        if not isinstance(self.lpips, LazyLPIPS):  # fail loudly if a nerfstudio upgrade moved that import
            raise RuntimeError(
                "nerfacto built its LPIPS metric outside ids_nerfstudio's lazy_lpips(): this nerfstudio version "
                "imports it differently from 1.1.5; update EditNerfactoModel.populate_modules"
            )

    def set_editing(self, editing: bool) -> None:
        """Freeze (editing) or unfreeze the camera optimizer and the appearance embedding."""
        for module in (self.camera_optimizer, self.field.embedding_appearance):
            if module is not None:
                module.requires_grad_(not editing)

    def set_appearance_off(self, off: bool) -> None:
        """Off: every ray, training batches included, gets the average appearance embedding (the one new views are
        rendered with), so the per-view codes have no effect. The official refinement's nerfacto has no embedding
        (``use_appearance_embedding=False``); a constant embedding is the same model (the colour MLP sees a constant
        input) that starts from the colours the edit rendered, and ns-render shows what was trained."""
        self.appearance_off = off

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, Tensor | list]:
        """nerfacto's outputs; with the appearance off, under the average appearance embedding."""
        with self.average_appearance() if self.appearance_off else contextlib.nullcontext():
            return super().get_outputs(ray_bundle)

    def render_edit_views(
        self, cameras: Sequence[Cameras], indices: Sequence[int], width: int, height: int, seed: int,
        options: RenderOptions,
    ) -> RenderedViews:  # fmt: skip
        """Whole views with the average appearance, ray-chunked, full-graph or deferred (render.py)."""
        with self.average_appearance():
            return render_views(self, cameras, indices, width, height, seed, options)

    def backpropagate_edit_views(self, views: RenderedViews, image_grad: Float[Tensor, "B 3 H W"]) -> None:
        """The deferred re-render (or the full graph's backward) of ``render_edit_views``."""
        with self.average_appearance():
            backpropagate_views(self, views, image_grad)

    def editing_regularizer_losses(
        self, train_input: RayBundle, batch: dict[str, Any], budget: int, keep: KeepWeights | None = None,
        reference: EditNerfactoModel | None = None,
    ) -> dict[str, Tensor]:  # fmt: skip
        """nerfacto's proposal (interlevel) and distortion losses on the first ``budget`` rays of a training batch
        (the pixel sampler's rays are already in random order); with ``keep`` also ``keep_rgb_loss``, the mean of
        nerfacto's squared colour error weighted by each ray's keep weight: the rest keeps fitting its images, or
        with ``reference`` its render of the same rays (in the same mode: this view's appearance, sampling jitter)."""
        count = min(budget, len(train_input))
        batch = {key: value[:count] if isinstance(value, Tensor) else value for key, value in batch.items()}
        outputs = self(train_input[:count])
        losses = self.get_loss_dict(outputs, batch, self.get_metrics_dict(outputs, batch))
        kept = {name: losses[name] for name in self.regularizer_loss_names if name in losses}
        if keep is not None:
            if reference is None:
                target = batch["image"][..., :3].to(outputs["rgb"])
            else:
                with torch.no_grad():
                    target = reference.train(self.training)(train_input[:count])["rgb"].to(outputs["rgb"])
            error = (outputs["rgb"] - target).pow(2).mean(-1)
            kept["keep_rgb_loss"] = (ray_weights(keep, batch["indices"]).to(error) * error).mean()
        return kept

    @torch.no_grad()
    def view_points(self, camera: Cameras) -> Float[Tensor, "H W 3"]:
        """Each pixel's ray at nerfacto's (median) depth, a distance along the unit ray, rendered as in evaluation
        (the proposal samplers' training jitter would move it from call to call)."""
        rays = camera.generate_rays(camera_indices=0, keep_shape=True).to(self.device)
        was_training = self.training
        self.eval()
        try:
            depth = self.get_outputs_for_camera_ray_bundle(rays)["depth"][..., 0]
        finally:
            self.train(was_training)
        return pixel_points(camera.to(self.device), depth)

    @contextlib.contextmanager
    def average_appearance(self) -> Iterator[None]:
        """Render with the average appearance embedding (the field's inference behaviour), keeping gradients."""
        was_training = self.field.training
        self.field.train(False)
        try:
            yield
        finally:
            self.field.train(was_training)


def ray_weights(keep: KeepWeights, indices: Int[Tensor, "N 3"]) -> Float[Tensor, " N"]:
    """The keep weight of each ray of a batch (its camera, row and column in a training view)."""
    values, indices = torch.zeros(len(indices)), indices.cpu().long()
    for camera_index in indices[:, 0].unique().tolist():
        rays = indices[:, 0] == camera_index
        values[rays] = keep(camera_index)[indices[rays, 1], indices[rays, 2]]
    return values
