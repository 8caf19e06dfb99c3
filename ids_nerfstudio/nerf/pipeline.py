"""One editing step: render -> encode -> guide -> scale -> apply (back-propagation into the scene).

The pipeline speaks to the scene representation only through the editing contract (editable.py), so the same
step edits any model that implements it (nerfacto today).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
import tyro
from jaxtyping import Float, Int
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerNumber, ViewerText
from torch import Tensor

from ids_nerfstudio.errors import UserError, check_number
from ids_nerfstudio.guidance import GuidanceConfig, GuidanceOutput, IDSConfig
from ids_nerfstudio.guidance.relevance import MaskConfig, auto_mask, given_mask
from ids_nerfstudio.images import fit_size, load_mask
from ids_nerfstudio.nerf.checkpoints import allow_nerfstudio_checkpoints
from ids_nerfstudio.nerf.datamanager import EditDataManagerConfig, EditViews, EditViewsMixin, mask_file
from ids_nerfstudio.nerf.editable import EditableModel, RenderedViews, RenderMode, RenderOptions
from ids_nerfstudio.nerf.ffmpeg import ensure_ffmpeg_on_path
from ids_nerfstudio.nerf.model import EditNerfactoModelConfig
from ids_nerfstudio.prior import InstructPix2PixPriorConfig, StableDiffusionPriorConfig
from ids_nerfstudio.prompts import check_target_prompt, no_op_warning

MAX_RENDER_SIZE = 2048
"""Largest short side of the guidance views (Stable Diffusion at 2048 px already needs a large GPU)."""


@dataclass
class EditPipelineConfig(VanillaPipelineConfig):
    """Pipeline that reconstructs with the model's own losses, then edits with a guidance."""

    _target: type = field(default_factory=lambda: EditPipeline)
    datamanager: DataManagerConfig = field(default_factory=EditDataManagerConfig)
    """Serves training batches and whole views (a data manager with EditViewsMixin)."""
    model: ModelConfig = field(default_factory=EditNerfactoModelConfig)
    """The scene being edited: a model that implements the editing contract (nerfacto by default)."""
    guidance: GuidanceConfig = field(default_factory=IDSConfig)
    """Guidance rule and its options (e.g. --pipeline.guidance.fpr-iters 3)."""
    prior: StableDiffusionPriorConfig = field(default_factory=StableDiffusionPriorConfig)
    """Diffusion model: --pipeline.prior.model (hub id, path, demo or tiny), .device (e.g. cuda:1) and .dtype."""
    prompt_src: Annotated[str, tyro.conf.arg(aliases=("--prompt-src",))] = ""
    """Prompt describing the source scene, e.g. "a photo of a bear statue" (the viewer's box edits it live)."""
    prompt_trg: Annotated[str, tyro.conf.arg(aliases=("--prompt-trg",))] = ""
    """Prompt describing the edited scene, e.g. "a photo of a grizzly bear" (the viewer's box edits it live)."""
    render_size: int = 512
    """Short side, in pixels, of the views rendered for the guidance (aspect ratio kept)."""
    render_mode: RenderMode = "deferred"
    """deferred: no-graph render then chunked re-render (memory of one chunk); full-graph: one graph."""
    render_chunk_size: int = 1 << 14
    """Rays per chunk when rendering views for the guidance."""
    guidance_weight: float = 1.0
    """Weight of the guidance loss, averaged over latent elements as in the official NeRF editing code."""
    regularizer_rays: int = 1024
    """Rays per editing step on which the model's own regularizers are kept (nerfacto: proposal and distortion
    losses; 0 disables them)."""
    log_every: int = 100
    """Editing steps between logging the edited view and the gradient magnitude to the writer."""
    seed: int = 0
    """Seed of the guidance's timestep and noise draws."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """A local edit: --pipeline.mask.source auto (each view's relevance mask), dataset (the frames' mask_path) or a
    folder of masks named like the images (white: edit); the guidance gradient of each view is multiplied by it."""
    keep_outside_mask: float = 100.0
    """With a mask: weight of the colour loss to the dataset images on the regularizer rays, each ray weighted by
    1 - its view's mask, so what lies outside every mask keeps fitting its images (0: the mask alone, which lets the
    shared colour network tint the whole scene: demo edit 15.4 dB outside the ball at 0, 23.8 at 1, 40.4 at 100)."""

    @property
    def instruction_prior(self) -> bool:
        """Whether the prior is InstructPix2Pix (the target prompt is then an edit instruction)."""
        return isinstance(self.prior, InstructPix2PixPriorConfig)

    def no_op_warning(self) -> str | None:
        """The warning for prompts that make the edit a no-op, or None."""
        return no_op_warning(self.prompt_src, self.prompt_trg, instruction=self.instruction_prior)

    def validate(self) -> None:
        """Raise ``UserError`` naming the flag of the first bad editing setting (before anything is written)."""
        check_target_prompt(self.prompt_trg)
        checks = {
            "--pipeline.render-size": (self.render_size, 8 <= self.render_size <= MAX_RENDER_SIZE,
                                       f"between 8 and {MAX_RENDER_SIZE} pixels"),
            "--pipeline.render-chunk-size": (self.render_chunk_size, self.render_chunk_size >= 1, ">= 1"),
            "--pipeline.regularizer-rays": (self.regularizer_rays, self.regularizer_rays >= 0, ">= 0"),
            "--pipeline.log-every": (self.log_every, self.log_every >= 1, ">= 1"),
            "--pipeline.guidance-weight": (self.guidance_weight, math.isfinite(self.guidance_weight), "finite"),
            "--pipeline.keep-outside-mask": (self.keep_outside_mask,
                                             math.isfinite(self.keep_outside_mask) and self.keep_outside_mask >= 0,
                                             "finite and >= 0"),
            "--pipeline.datamanager.views-per-step": (self.datamanager.views_per_step,
                                                      self.datamanager.views_per_step >= 1, ">= 1"),
            "--pipeline.datamanager.change-view-every": (self.datamanager.change_view_every,
                                                         self.datamanager.change_view_every >= 1, ">= 1"),
        }  # fmt: skip
        for name, (value, ok, wanted) in checks.items():
            if not ok:
                raise UserError(f"{name} must be {wanted}, got {value}")
        self.guidance.validate("--pipeline.guidance.")
        self.prior.validate("--pipeline.prior.")
        self.mask.validate("--pipeline.mask.")


def _refuse_viewer_value(element: ViewerText | ViewerNumber, what: str, kept: Any) -> None:
    """Warn in the terminal that a viewer box's value was refused, and put the box back to the value kept."""
    warnings.warn(f"viewer: {element.name}: refused {what}; keeping {kept!r}", stacklevel=3)
    element.value = kept


class EditPipeline(VanillaPipeline):
    """``VanillaPipeline`` whose editing steps are driven by the trainer through ``edit_step``.

    The prompts have one owner, the config (``config.prompt_src`` / ``config.prompt_trg``): every step reads
    them there and the viewer's text boxes write them there.
    """

    config: EditPipelineConfig
    datamanager: EditViewsMixin
    model: EditableModel

    def __init__(self, config: EditPipelineConfig, device: str, test_mode: str = "val", **kwargs: Any) -> None:
        allow_nerfstudio_checkpoints()  # ns-render / ns-viewer / ids-eval load this run's checkpoint next
        ensure_ffmpeg_on_path()  # ns-render looks for one on PATH after building the pipeline
        super().__init__(config, device, test_mode=test_mode, **kwargs)
        if not isinstance(self.model, EditableModel) or not isinstance(self.datamanager, EditViewsMixin):
            raise TypeError(
                f"{type(self.model).__name__} / {type(self.datamanager).__name__}: an edit pipeline needs a model "
                "implementing nerf.editable.EditableModel and a data manager with EditViewsMixin"
            )
        # the first editing step; -1 until the trainer decides it (saved in checkpoints, so resumes continue)
        self.register_buffer("edit_start_step", torch.tensor(-1, dtype=torch.long))
        self.prior = config.prior.setup()  # lazy: no weights are loaded until the first editing step
        self.guidance = config.guidance.setup(prior=self.prior)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.on_pause: Callable[[bool], None] | None = None  # set by the trainer: pauses its loop
        if test_mode == "val":  # ns-train; ns-viewer / ns-render / ids-eval build the pipeline with "test"
            self.add_editing_controls()

    def add_editing_controls(self) -> None:
        """Viewer controls for a running edit (a change takes effect at the next step); the viewer lists every
        ``Viewer*`` attribute, so they exist only in a training pipeline, not in ns-viewer of a finished run."""
        config = self.config
        self.viewer_prompt_src = ViewerText("Source prompt", config.prompt_src, cb_hook=self._set_prompt_src)
        self.viewer_prompt_trg = ViewerText("Target prompt", config.prompt_trg, cb_hook=self._set_prompt_trg)
        self.viewer_guidance_scale = ViewerNumber(
            "Guidance scale", config.guidance.guidance_scale, cb_hook=self._set_guidance_scale
        )
        self.viewer_fpr_scale = ViewerNumber("FPR scale", config.guidance.fpr_scale, cb_hook=self._set_fpr_scale)
        self.viewer_pause = ViewerCheckbox("Pause editing", False, cb_hook=self._set_paused)

    def prompt_warnings(self) -> list[str]:
        """The prior's warnings about the two prompts (unknown words, truncation); loads the prior."""
        return self.prior.prompt_warnings([self.config.prompt_src, self.config.prompt_trg])

    def _warn_about_prompt(self, element: ViewerText) -> None:
        for line in self.prior.prompt_warnings([str(element.value)]):
            warnings.warn(f"viewer: {element.name}: {line}", stacklevel=3)

    def _set_prompt_src(self, element: ViewerText) -> None:
        self.config.prompt_src = element.value
        self._warn_about_prompt(element)

    def _set_prompt_trg(self, element: ViewerText) -> None:
        try:  # as --prompt-trg: an empty target is refused, the edit goes on
            check_target_prompt(str(element.value), element.name)
        except UserError:
            _refuse_viewer_value(element, "an empty target prompt", self.config.prompt_trg)
            return
        self.config.prompt_trg = element.value
        self._warn_about_prompt(element)

    def _set_guidance_scale(self, element: ViewerNumber) -> None:
        self._set_guidance_number(element, "guidance_scale")

    def _set_fpr_scale(self, element: ViewerNumber) -> None:
        self._set_guidance_number(element, "fpr_scale")

    def _set_guidance_number(self, element: ViewerNumber, name: str) -> None:
        """A finite number >= 0 goes into the guidance config; anything else is refused and the box reset."""
        current = getattr(self.guidance.config, name)
        try:
            value = float(element.value)
            check_number(element.name, value)
        except (TypeError, ValueError):  # UserError is a ValueError
            _refuse_viewer_value(element, repr(element.value), current)
            return
        setattr(self.guidance.config, name, value)

    def _set_paused(self, element: ViewerCheckbox) -> None:
        if self.on_pause is not None:
            self.on_pause(bool(element.value))

    @property
    def render_options(self) -> RenderOptions:
        """The config's current chunk size and render mode (the viewer may change them between steps)."""
        return RenderOptions(self.config.render_chunk_size, self.config.render_mode)

    # ------------------------------------------------------------------------------------- editing step
    def edit_step(self, step: int) -> dict[str, Tensor] | None:
        """Accumulate the guidance gradient (and the model's regularizers) into the model's parameter grads.

        Returns the logged scalars, or None when the guidance gradient was not finite and nothing was applied.
        """
        edit_step = step - int(self.edit_start_step)
        views = self.datamanager.next_edit_views(edit_step)
        width, height = self.guidance_size(views.cameras[0])
        rendered = self.model.render_edit_views(
            views.cameras, views.indices, width, height, seed=step * 1000, options=self.render_options
        )
        z_trg = self.prior.encode_images(rendered.images.to(self.prior.device)).float()
        z_src = self.source_latents(views, width, height)
        mask = self.edit_masks(views.indices, z_src) if self.config.mask.enabled else None
        out = self.guidance(
            z_trg, z_src, self.config.prompt_trg, self.config.prompt_src, generator=self.generator, mask=mask
        )
        if not torch.isfinite(out.grad).all():
            warnings.warn(f"step {step}: non-finite guidance gradient (t={out.t.tolist()}); step skipped", stacklevel=2)
            return None
        (image_grad,) = torch.autograd.grad(z_trg, rendered.images, self.latent_grad(out).to(z_trg.dtype))
        self.model.backpropagate_edit_views(rendered, image_grad)
        losses = self.regularizer_losses(step) if self.config.regularizer_rays > 0 else {}
        if losses:
            sum(losses.values()).backward()
        if edit_step % self.config.log_every == 0:
            self.log_images(rendered, image_grad, step, mask)
        scalars = {"guidance_loss": out.loss.detach(), "guidance_grad_norm": out.grad.norm().detach(),
                   "t": out.t.float().mean()}  # fmt: skip
        return scalars | {name: loss.detach() for name, loss in losses.items()}

    def guidance_size(self, camera: Cameras) -> tuple[int, int]:
        """Width and height of a camera's guidance render: short side ``render_size``, multiples the prior accepts."""
        return fit_size(int(camera.width), int(camera.height), self.config.render_size, self.prior.size_multiple)

    def source_latents(self, views: EditViews, width: int, height: int) -> Float[Tensor, "B C h w"]:
        """The encoded source images of the views (cached by the data manager)."""
        encode = self.prior.encode_images
        latents = [self.datamanager.source_latent(i, width, height, encode) for i in views.indices]
        return torch.stack(latents).to(self.prior.device).float()

    def edit_masks(self, indices: list[int], z_src: Float[Tensor, "B C h w"]) -> Float[Tensor, "B 1 h w"]:
        """The mask of each training view at latent size, cached by the data manager per view, size and prompts."""
        height, width = z_src.shape[-2:]
        dataset = self.datamanager.train_dataset
        keys = [(i, height, width, self.config.prompt_trg, self.config.prompt_src) for i in indices]
        masks = [
            self.datamanager.edit_mask(key, lambda k=k: self.view_mask(dataset, indices[k], z_src[k : k + 1])[0])
            for k, key in enumerate(keys)
        ]
        return torch.stack(masks).to(z_src.device)

    def view_mask(self, dataset: InputDataset, index: int, z_src: Float[Tensor, "1 C h w"]) -> Float[Tensor, "1 1 h w"]:
        """A view's mask at latent size: the auto mask of its source latent, or its given mask (--pipeline.mask)."""
        config = self.config.mask
        if config.automatic:
            return auto_mask(self.prior, z_src, self.config.prompt_trg, self.config.prompt_src, config)
        camera = dataset.cameras[index]
        size = (int(camera.width), int(camera.height))
        given = load_mask(mask_file(dataset, index, config.source), size, "--pipeline.mask.source")
        return given_mask(given, z_src, config)

    def latent_grad(self, out: GuidanceOutput) -> Float[Tensor, "B C h w"]:
        """The guidance gradient as a mean over latent elements (the official code's MSE) times the weight."""
        return out.grad * self.config.guidance_weight / out.grad[0].numel()

    def regularizer_losses(self, step: int) -> dict[str, Tensor]:
        """The model's own editing regularizers on a training batch (nerfacto: proposal and distortion losses), and
        with a mask the colour loss outside it (``keep_outside_mask``)."""
        train_input, batch = self.datamanager.next_train(step)
        budget, keep = self.config.regularizer_rays, None
        if self.config.mask.enabled and self.config.keep_outside_mask > 0:
            if "indices" in batch:  # a ray batch (nerfacto): one weight per ray
                keep = 1 - self.ray_masks(batch["indices"][:budget])
            else:  # a whole training image (splatfacto): one weight per pixel
                keep = 1 - self.image_mask(int(batch["image_idx"]))
            keep = self.config.keep_outside_mask * keep
        return self.model.editing_regularizer_losses(train_input, batch, budget, keep=keep)

    def image_mask(self, camera_index: int) -> Float[Tensor, "H W"]:
        """A training view's latent mask at the view's training resolution (nearest: each pixel takes the latent
        pixel it falls in)."""
        camera = self.datamanager.train_dataset.cameras[camera_index]
        width, height = self.guidance_size(camera)
        z_src = self.datamanager.source_latent(camera_index, width, height, self.prior.encode_images)
        mask = self.edit_masks([camera_index], z_src[None].to(self.prior.device).float()).cpu()
        return F.interpolate(mask, size=(int(camera.height), int(camera.width)), mode="nearest")[0, 0]

    def ray_masks(self, indices: Int[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        """The mask value of each ray (camera, row, column of a training view): its view's latent mask at the pixel."""
        values, indices = torch.zeros(len(indices)), indices.cpu().long()
        for camera_index in indices[:, 0].unique().tolist():
            rays = indices[:, 0] == camera_index
            values[rays] = self.image_mask(camera_index)[indices[rays, 1], indices[rays, 2]]
        return values

    def log_images(
        self, rendered: RenderedViews, image_grad: Float[Tensor, "B 3 H W"], step: int, mask: Tensor | None = None
    ) -> None:
        """The first edited view, its image-gradient magnitude and its mask, to the writer (tensorboard, wandb)."""
        writer.put_image(name="Edit/rendered view", image=rendered.images[0].detach().permute(1, 2, 0), step=step)
        magnitude = image_grad[0].norm(dim=0)
        magnitude = magnitude / magnitude.max().clamp(min=1e-12)
        writer.put_image(name="Edit/image gradient", image=magnitude[..., None].expand(-1, -1, 3), step=step)
        if mask is not None:
            enlarged = F.interpolate(mask[:1].float().cpu(), size=magnitude.shape, mode="nearest")[0, 0]
            writer.put_image(name="Edit/mask", image=enlarged[..., None].expand(-1, -1, 3), step=step)
