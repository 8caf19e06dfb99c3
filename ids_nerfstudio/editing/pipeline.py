"""The editing pipeline: reconstruction steps are the model's own; an editing step is render -> encode -> guide ->
scale, returned as losses that nerfstudio's training loop back-propagates into the scene.

The pipeline speaks to the scene representation only through the editing contract (contract.py), so the same
step edits any model that implements it.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import tyro
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import DataManagerConfig
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerNumber, ViewerText
from torch import Tensor

from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints, read_checkpoint
from ids_nerfstudio.data.datamanagers import EditDataManagerConfig, EditViews, EditViewsMixin
from ids_nerfstudio.editing.contract import EditableModel, RenderedViews, RenderMode, RenderOptions
from ids_nerfstudio.editing.dataset_update import DatasetUpdateConfig, DatasetUpdater, model_renderer
from ids_nerfstudio.editing.masks import EditMasks
from ids_nerfstudio.errors import UserError, check_number
from ids_nerfstudio.ffmpeg import ensure_ffmpeg_on_path
from ids_nerfstudio.guidance import GuidanceConfig, GuidanceOutput, IDSConfig
from ids_nerfstudio.guidance.relevance import MaskConfig
from ids_nerfstudio.images import fit_size
from ids_nerfstudio.prior import InstructPix2PixPriorConfig, StableDiffusionPriorConfig
from ids_nerfstudio.prompts import check_target_prompt, no_op_warning
from ids_nerfstudio.third_party_warnings import filter_third_party_deprecations

MAX_RENDER_SIZE = 2048
"""Largest short side of the guidance views (Stable Diffusion at 2048 px already needs a large GPU)."""


@dataclass
class EditPipelineConfig(VanillaPipelineConfig):
    """Pipeline that reconstructs with the model's own losses, then edits with a guidance."""

    _target: type = field(default_factory=lambda: EditPipeline)
    datamanager: DataManagerConfig = field(default_factory=EditDataManagerConfig)
    """Serves training batches and whole views (a data manager with EditViewsMixin)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The scene being edited: a model that implements the editing contract (method_configs.py sets nerfacto's or
    splatfacto's)."""
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
    shared colour network tint the whole scene; docs/demo-methods.md measures the weights)."""
    keep_target: Literal["images", "reconstruction"] = "images"
    """What that colour loss keeps outside the mask: the dataset images, or the scene as it was when the edit
    started (a frozen copy of the reconstruction renders each kept ray's target; docs/relevance.md measures both)."""
    dataset_update: DatasetUpdateConfig = field(default_factory=DatasetUpdateConfig)
    """Edit by updating the training set instead of distilling into the scene: --pipeline.dataset-update.mode csd
    (CSD-Edit of 16 views every 2000 steps), in2n (Instruct-NeRF2NeRF) or sdedit (docs/dataset-update.md)."""
    refinement: DatasetUpdateConfig = field(
        default_factory=lambda: DatasetUpdateConfig(mode="sdedit", appearance="off", restart_schedulers=True)
    )
    """The stage after the edit that --refinement-steps N runs (PDS refinement: SDEdit of the renders stored at
    its start, one view every 10 steps, in a fixed cycle; appearance off, schedules restarted)."""
    reconstruction_checkpoint: Path | None = None
    """Load this state instead of the newest checkpoint (the run's reconstruction.yml sets it to the run's
    reconstruction.ckpt, so that ns-render and ns-viewer of reconstruction.yml show the scene before the edit)."""

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
        self.dataset_update.validate("--pipeline.dataset-update.")
        self.refinement.validate("--pipeline.refinement.")


def _refuse_viewer_value(element: ViewerText | ViewerNumber, what: str, kept: Any) -> None:
    """Warn in the terminal that a viewer box's value was refused, and put the box back to the value kept."""
    warnings.warn(f"viewer: {element.name}: refused {what}; keeping {kept!r}", stacklevel=3)
    element.value = kept


class EditPipeline(VanillaPipeline):
    """``VanillaPipeline`` whose editing steps return the guidance's losses (``get_train_loss_dict``).

    The prompts have one owner, the config (``config.prompt_src`` / ``config.prompt_trg``): every step reads
    them there and the viewer's text boxes write them there.
    """

    config: EditPipelineConfig
    datamanager: EditViewsMixin
    model: EditableModel

    def __init__(self, config: EditPipelineConfig, device: str, test_mode: str = "val", **kwargs: Any) -> None:
        allow_nerfstudio_checkpoints()  # ns-render / ns-viewer / ids-eval load this run's checkpoint next
        filter_third_party_deprecations()  # ns-render / ns-viewer of our runs start here
        ensure_ffmpeg_on_path()  # ns-render looks for one on PATH after building the pipeline
        super().__init__(config, device, test_mode=test_mode, **kwargs)
        if not isinstance(self.model, EditableModel) or not isinstance(self.datamanager, EditViewsMixin):
            raise TypeError(
                f"{type(self.model).__name__} / {type(self.datamanager).__name__}: an edit pipeline needs a model "
                "implementing editing.contract.EditableModel and a data manager with EditViewsMixin"
            )
        # the first editing step; -1 until the trainer decides it (saved in checkpoints, so resumes continue)
        self.register_buffer("edit_start_step", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("refine_start_step", torch.tensor(-1, dtype=torch.long))  # -1: no refinement stage
        self.prior = config.prior.setup()  # lazy: no weights are loaded until the first editing step
        self.guidance = config.guidance.setup(prior=self.prior)
        self.generator = torch.Generator().manual_seed(config.seed)
        views = len(self.datamanager.train_dataset)
        self.masks = EditMasks(config.mask, self.prior, self.datamanager, capacity=4 * views,  # a few prompt pairs
                               view_points=self.model.view_points)  # fmt: skip
        render = model_renderer(self.model, self.datamanager, self.render_options)
        size = config.render_size
        self.updater = DatasetUpdater(config.dataset_update, self.prior, self.datamanager, render, size)
        self.refiner = DatasetUpdater(config.refinement, self.prior, self.datamanager, render, size, "refinement")
        self._pause_handler: Callable[[bool], None] | None = None
        # keep_target "reconstruction": a frozen copy of the model as the edit started; not a submodule (nothing
        # saves, loads or optimises it)
        self.__dict__["reconstruction"] = None
        if test_mode == "val":  # ns-train; ns-viewer / ns-render / ids-eval build the pipeline with "test"
            self.add_editing_controls()

    def load_pipeline(self, loaded_state: dict[str, Any], step: int) -> None:
        """nerfstudio's load, of the reconstruction's state instead when ``reconstruction_checkpoint`` is set."""
        if self.config.reconstruction_checkpoint is not None:
            saved = read_checkpoint(self.config.reconstruction_checkpoint)
            loaded_state, step = saved["pipeline"], saved["step"]
        super().load_pipeline(loaded_state, step)

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
        if self._pause_handler is not None:
            self._pause_handler(bool(element.value))

    @property
    def render_options(self) -> RenderOptions:
        """The config's current chunk size and render mode (the viewer may change them between steps)."""
        return RenderOptions(self.config.render_chunk_size, self.config.render_mode)

    # ------------------------------------------------------------------------------------- state
    def start_editing_at(self, step: int) -> None:
        """Make ``step`` the run's first editing step (saved in checkpoints: a resumed edit keeps it)."""
        self.edit_start_step.fill_(step)

    def start_refinement_at(self, step: int) -> None:
        """Make ``step`` the first step of the refinement stage (saved in checkpoints)."""
        self.refine_start_step.fill_(step)

    def freeze_reconstruction(self, checkpoint: Path | None = None) -> None:
        """With ``keep_target`` "reconstruction": keep a frozen copy of the model as the edit started, the state in
        ``checkpoint`` (the run's reconstruction.ckpt: a resumed edit's is its source run's) or, without one, the
        model as it is now (the first editing step)."""
        config = self.config
        if config.keep_target != "reconstruction" or not config.mask.enabled or config.keep_outside_mask <= 0:
            return  # no colour loss to keep it with
        kept = frozen_copy(self.model)
        if checkpoint is not None and checkpoint.is_file():
            state = read_checkpoint(checkpoint)["pipeline"]
            kept.load_state_dict({k.removeprefix("_model."): v for k, v in state.items() if k.startswith("_model.")})
        self.__dict__["reconstruction"] = kept

    def attach_run(self, run_dir: Path | None, resume_dir: Path | None = None) -> None:
        """Keep the dataset updates' images under ``run_dir``, continuing with those of ``resume_dir`` (the run a
        --load-dir belongs to) or of ``run_dir``."""
        self.updater.attach(run_dir, resume_dir)
        self.refiner.attach(run_dir, resume_dir, edited_images=False)  # one training set: loaded once

    def add_train_image_hook(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(view index)`` whenever a dataset-update stage replaces a training image (the viewer's)."""
        self.updater.hooks.append(hook)
        self.refiner.hooks.append(hook)

    def replaced_views(self) -> list[int]:
        """The training views whose image the dataset updates have replaced so far (loaded edits included)."""
        return sorted(self.updater.replaced | self.refiner.replaced)

    def update_stage(self, step: int) -> tuple[DatasetUpdater, int] | None:
        """The dataset-update stage ``step`` belongs to and its step in it, or None (reconstruction, distillation)."""
        refine_start = int(self.refine_start_step)
        if 0 <= refine_start <= step:
            return self.refiner, step - refine_start
        if self.is_editing_step(step) and self.config.dataset_update.mode != "off":
            return self.updater, step - int(self.edit_start_step)
        return None

    def is_editing_step(self, step: int) -> bool:
        """Whether ``step`` is an editing step (the first one is decided by the trainer's setup)."""
        return 0 <= int(self.edit_start_step) <= step

    def set_pause_handler(self, handler: Callable[[bool], None]) -> None:
        """What the viewer's "Pause editing" box calls with its new state (the trainer pauses its loop)."""
        self._pause_handler = handler

    # ------------------------------------------------------------------------------------- editing step
    def get_eval_loss_dict(self, step: int) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
        """nerfstudio's evaluation losses, computed without a graph: nothing back-propagates them, and the trainer
        logs them as floats (float() of a tensor that requires grad warns)."""
        with torch.no_grad():
            return super().get_eval_loss_dict(step)

    def get_train_loss_dict(self, step: int) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
        """Reconstruction steps: the model's own losses (nerfstudio's). Editing steps: the guidance's surrogate
        loss and the model's editing regularizers, so that nerfstudio's ``train_iteration`` applies autocast, the
        grad scaler and gradient accumulation to them as to reconstruction. A step whose guidance gradient is not
        finite returns a zero loss that reaches no parameter (the optimizers then skip every group)."""
        stage = self.update_stage(step)
        if stage is not None:  # replace this step's views, then train with the model's own losses
            updater, stage_step = stage
            replaced = updater.update(stage_step, self.config.prompt_trg, self.config.prompt_src)
            if replaced and stage_step % self.config.log_every < updater.config.resolved()[0]:
                image = self.datamanager.train_image(replaced[0])
                writer.put_image(name="Edit/edited training image", image=image, step=step)
            return super().get_train_loss_dict(step)
        if not self.is_editing_step(step):
            return super().get_train_loss_dict(step)
        losses = self.edit_losses(step)
        if losses is None:
            return {}, {"guidance_loss": torch.zeros((), device=self.device, requires_grad=True)}, {}
        loss_dict, scalars = losses
        return {}, loss_dict, scalars

    def edit_losses(self, step: int) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
        """The editing losses of a step and its logged scalars, or None when the guidance gradient was not finite.

        ``guidance_loss`` has the guidance loss's value, and its gradient is the guidance gradient taken through
        the VAE encoder into the rendered views, and from them into the model by the model's own backward
        (``backpropagate_edit_views``: a deferred re-render or the render's graph), run when the loss is
        back-propagated."""
        edit_step = step - int(self.edit_start_step)
        views = self.datamanager.next_edit_views(edit_step)
        width, height = self.guidance_size(views.cameras[0])
        rendered = self.model.render_edit_views(
            views.cameras, views.indices, width, height, seed=step * 1000, options=self.render_options
        )
        images = backpropagated_into_model(self.model, rendered)
        z_trg = self.prior.encode_images(images.to(self.prior.device)).float()
        z_src = self.source_latents(views, width, height)
        prompts = (self.config.prompt_trg, self.config.prompt_src)
        mask = self.masks.latent_masks(views.indices, z_src, *prompts) if self.config.mask.enabled else None
        out = self.guidance(z_trg, z_src, *prompts, generator=self.generator, mask=mask)
        if not torch.isfinite(out.grad).all():
            warnings.warn(f"step {step}: non-finite guidance gradient (t={out.t.tolist()}); step skipped", stacklevel=2)
            return None
        latent_grad = self.latent_grad(out).to(z_trg.dtype)
        surrogate = (z_trg * latent_grad).sum()  # its gradient is latent_grad: the guidance's
        losses = {"guidance_loss": surrogate - surrogate.detach() + out.loss.detach()}
        if self.config.regularizer_rays > 0:
            losses |= self.regularizer_losses(step)
        if edit_step % self.config.log_every == 0:
            (image_grad,) = torch.autograd.grad(z_trg, images, latent_grad, retain_graph=True)
            self.log_images(rendered, image_grad, step, mask)
        scalars = {"guidance_loss": out.loss.detach(), "guidance_grad_norm": out.grad.norm().detach(),
                   "t": out.t.float().mean()}  # fmt: skip
        return losses, scalars | {name: loss.detach() for name, loss in losses.items()}

    def edit_step(self, step: int) -> dict[str, Tensor] | None:
        """Accumulate one editing step's gradients into the model's parameters (what a training iteration does
        before the optimizer step, without autocast or scaling). Returns the logged scalars, or None when the
        guidance gradient was not finite and nothing was applied."""
        losses = self.edit_losses(step)
        if losses is None:
            return None
        loss_dict, scalars = losses
        sum(loss_dict.values()).backward()
        return scalars

    def guidance_size(self, camera: Cameras) -> tuple[int, int]:
        """Width and height of a camera's guidance render: short side ``render_size``, multiples the prior accepts."""
        return fit_size(int(camera.width), int(camera.height), self.config.render_size, self.prior.size_multiple)

    def source_latents(self, views: EditViews, width: int, height: int) -> Float[Tensor, "B C h w"]:
        """The encoded source images of the views (cached by the data manager)."""
        encode = self.prior.encode_images
        latents = [self.datamanager.source_latent(i, width, height, encode) for i in views.indices]
        return torch.stack(latents).to(self.prior.device).float()

    def training_mask(self, index: int) -> Float[Tensor, "H W"]:
        """A training view's mask at its training resolution (the mask it is edited with, enlarged)."""
        camera = self.datamanager.train_dataset.cameras[index]
        return self.masks.training_mask(index, self.guidance_size(camera), self.config.prompt_trg,
                                        self.config.prompt_src)  # fmt: skip

    def latent_grad(self, out: GuidanceOutput) -> Float[Tensor, "B C h w"]:
        """The guidance gradient as a mean over latent elements (the official code's MSE) times the weight."""
        return out.grad * self.config.guidance_weight / out.grad[0].numel()

    def regularizer_losses(self, step: int) -> dict[str, Tensor]:
        """The model's own editing regularizers on a training batch (nerfacto: proposal and distortion losses), and
        with a mask the colour loss outside it (``keep_outside_mask``), each pixel of a training view weighted by
        ``keep_outside_mask x (1 - its mask)``."""
        train_input, batch = self.datamanager.next_train(step)
        keep = None
        if self.config.mask.enabled and self.config.keep_outside_mask > 0:
            weight = self.config.keep_outside_mask

            def keep(index: int) -> Float[Tensor, "H W"]:
                return weight * (1 - self.training_mask(index))

            if self.config.keep_target == "reconstruction" and self.reconstruction is None:
                self.freeze_reconstruction()  # an edit stepped without the trainer (it freezes at the edit start)
        reference = self.reconstruction if keep is not None else None
        return self.model.editing_regularizer_losses(
            train_input, batch, self.config.regularizer_rays, keep=keep, reference=reference
        )

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


class _IntoModel(torch.autograd.Function):
    """Identity on the rendered views whose backward runs the model's own backward with the views' gradient (as
    torch's reentrant checkpoint runs a backward inside a backward), under the autocast state of the forward."""

    @staticmethod
    def forward(ctx: Any, images: Tensor, model: EditableModel, views: RenderedViews) -> Tensor:
        ctx.model, ctx.views = model, views
        device = images.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return images.clone()

    @staticmethod
    def backward(ctx: Any, image_grad: Tensor) -> tuple[None, None, None]:
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            ctx.model.backpropagate_edit_views(ctx.views, image_grad)
        return None, None, None


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` without gradients. Tensors a forward left in its modules' attributes with their
    graph (nerfacto's density cache, torchmetrics' forward cache, splatfacto's rasterization info dict), which
    deepcopy refuses, are copied detached."""
    values = [value for module in model.modules() for value in vars(module).values()]
    values += [item for value in values if isinstance(value, dict) for item in value.values()]
    memo = {id(value): value.detach() for value in values if isinstance(value, Tensor) and not value.is_leaf}
    return copy.deepcopy(model, memo).requires_grad_(False)


def backpropagated_into_model(model: EditableModel, views: RenderedViews) -> Float[Tensor, "B 3 H W"]:
    """The views' images, such that back-propagating through them accumulates the model's parameter gradients
    with ``model.backpropagate_edit_views`` (a deferred re-render or the render's own graph)."""
    return _IntoModel.apply(views.images.detach().requires_grad_(True), model, views)
