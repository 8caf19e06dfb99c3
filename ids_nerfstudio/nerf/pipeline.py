"""One editing step: views -> render -> encode -> guidance -> back-propagation into the field."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from nerfstudio.viewer.viewer_elements import ViewerCheckbox, ViewerNumber, ViewerText
from torch import Tensor

from ids_nerfstudio.guidance import GuidanceConfig, IDSConfig
from ids_nerfstudio.nerf.datamanager import EditDataManager, EditDataManagerConfig
from ids_nerfstudio.nerf.model import EditNerfactoModel, EditNerfactoModelConfig
from ids_nerfstudio.nerf.render import backpropagate_rgb, render_rgb, resize_camera, view_rays
from ids_nerfstudio.prior.base import fit_size
from ids_nerfstudio.prior.stable_diffusion import StableDiffusionPriorConfig

REGULARIZER_LOSSES = ("interlevel_loss", "distortion_loss")
"""nerfacto losses kept while editing: they shape the proposal networks and density, not the colours."""


@dataclass
class EditPipelineConfig(VanillaPipelineConfig):
    """Pipeline that reconstructs with nerfacto's losses, then edits with a guidance."""

    _target: type = field(default_factory=lambda: EditPipeline)
    datamanager: EditDataManagerConfig = field(default_factory=EditDataManagerConfig)
    """Serves ray batches and whole views."""
    model: EditNerfactoModelConfig = field(default_factory=EditNerfactoModelConfig)
    """The nerfacto model being edited."""
    guidance: GuidanceConfig = field(default_factory=IDSConfig)
    """Guidance rule and its options (e.g. --pipeline.guidance.fpr-iters 3)."""
    prior: StableDiffusionPriorConfig = field(default_factory=StableDiffusionPriorConfig)
    """Diffusion model: --pipeline.prior.model (hub id, path or tiny), .device (e.g. cuda:1) and .dtype."""
    prompt_src: str = ""
    """Source prompt (set from the top-level --prompt-src)."""
    prompt_trg: str = ""
    """Target prompt (set from the top-level --prompt-trg)."""
    render_size: int = 512
    """Short side, in pixels, of the views rendered for the guidance (aspect ratio kept)."""
    render_mode: Literal["deferred", "full-graph"] = "deferred"
    """deferred: no-graph render then chunked re-render (memory of one chunk); full-graph: one graph."""
    render_chunk_size: int = 1 << 14
    """Rays per chunk when rendering views for the guidance."""
    guidance_weight: float = 1.0
    """Weight of the guidance loss, averaged over latent elements as in the official NeRF editing code."""
    regularizer_rays: int = 1024
    """Rays per editing step on which nerfacto's proposal and distortion losses are kept (0 disables them)."""
    log_every: int = 100
    """Editing steps between logging the edited view and the gradient magnitude to the writer."""
    seed: int = 0
    """Seed of the guidance's timestep and noise draws."""


class EditPipeline(VanillaPipeline):
    """``VanillaPipeline`` whose editing steps are driven by the trainer through ``edit_step``."""

    config: EditPipelineConfig
    datamanager: EditDataManager
    model: EditNerfactoModel

    def __init__(self, config: EditPipelineConfig, device: str, **kwargs: Any) -> None:
        super().__init__(config, device, **kwargs)
        # the first editing step; -1 until the trainer decides it (saved in checkpoints, so resumes continue)
        self.register_buffer("edit_start_step", torch.tensor(-1, dtype=torch.long))
        self.prior = config.prior.setup()  # lazy: no weights are loaded until the first editing step
        self.guidance = config.guidance.setup(prior=self.prior)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.prompt_src, self.prompt_trg = config.prompt_src, config.prompt_trg
        self.on_pause: Callable[[bool], None] | None = None  # set by the trainer: pauses its loop
        # viewer controls (shown while training; a change takes effect at the next step)
        self.viewer_prompt_src = ViewerText("Source prompt", config.prompt_src, cb_hook=self._set_prompt_src)
        self.viewer_prompt_trg = ViewerText("Target prompt", config.prompt_trg, cb_hook=self._set_prompt_trg)
        self.viewer_guidance_scale = ViewerNumber(
            "Guidance scale", config.guidance.guidance_scale, cb_hook=self._set_guidance_scale
        )
        self.viewer_fpr_scale = ViewerNumber("FPR scale", config.guidance.fpr_scale, cb_hook=self._set_fpr_scale)
        self.viewer_pause = ViewerCheckbox("Pause editing", False, cb_hook=self._set_paused)

    def _set_prompt_src(self, element: ViewerText) -> None:
        self.prompt_src = element.value

    def _set_prompt_trg(self, element: ViewerText) -> None:
        self.prompt_trg = element.value

    def _set_guidance_scale(self, element: ViewerNumber) -> None:
        self.guidance.config.guidance_scale = float(element.value)

    def _set_fpr_scale(self, element: ViewerNumber) -> None:
        self.guidance.config.fpr_scale = float(element.value)

    def _set_paused(self, element: ViewerCheckbox) -> None:
        if self.on_pause is not None:
            self.on_pause(bool(element.value))

    def regularizer_losses(self, step: int) -> dict[str, Tensor]:
        """nerfacto's proposal (interlevel) and distortion losses on a random subset of a training ray batch."""
        ray_bundle, batch = self.datamanager.next_train(step)
        keep = min(self.config.regularizer_rays, len(ray_bundle))
        ray_bundle = ray_bundle[:keep]  # the pixel sampler's rays are already random
        batch = {key: value[:keep] if isinstance(value, Tensor) else value for key, value in batch.items()}
        outputs = self.model(ray_bundle)
        losses = self.model.get_loss_dict(outputs, batch, self.model.get_metrics_dict(outputs, batch))
        return {name: losses[name] for name in REGULARIZER_LOSSES if name in losses}

    def edit_step(self, step: int) -> dict[str, Tensor] | None:
        """Accumulate the guidance gradient (and nerfacto's regularizers) into the model's parameter grads.

        Returns the logged scalars, or None when the guidance gradient was not finite and nothing was applied.
        """
        edit_step = step - int(self.edit_start_step)
        views = self.datamanager.next_edit_views(edit_step)
        multiple = self.prior.size_multiple
        camera = views.cameras[0]
        width, height = fit_size(int(camera.width), int(camera.height), self.config.render_size, multiple)
        rays = [
            view_rays(resize_camera(c, width, height), i) for c, i in zip(views.cameras, views.indices, strict=True)
        ]
        seeds = [step * 1000 + k for k in range(len(rays))]
        full_graph = self.config.render_mode == "full-graph"
        chunk = self.config.render_chunk_size
        with self.model.average_appearance():
            rgb = torch.stack(
                [render_rgb(self.model, r, chunk, s, graph=full_graph) for r, s in zip(rays, seeds, strict=True)]
            )
        images = rgb.permute(0, 3, 1, 2)  # B 3 H W
        pixels = images if full_graph else images.detach().requires_grad_(True)

        encode = self.prior.encode_images
        z_src = torch.stack([self.datamanager.source_latent(i, width, height, encode) for i in views.indices])
        z_src = z_src.to(self.prior.device)
        z_trg = encode(pixels.to(self.prior.device)).float()
        out = self.guidance(z_trg, z_src.float(), self.prompt_trg, self.prompt_src, generator=self.generator)
        if not torch.isfinite(out.grad).all():
            warnings.warn(f"step {step}: non-finite guidance gradient (t={out.t.tolist()}); step skipped", stacklevel=2)
            return None
        # mean over latent elements (the official code's MSE reduction) times the guidance weight
        latent_grad = out.grad * self.config.guidance_weight / out.grad[0].numel()
        z_trg.backward(latent_grad.to(z_trg.dtype))
        if not full_graph:
            with self.model.average_appearance():
                for k, r in enumerate(rays):
                    backpropagate_rgb(self.model, r, pixels.grad[k].permute(1, 2, 0), chunk, seeds[k])

        losses = self.regularizer_losses(step) if self.config.regularizer_rays > 0 else {}
        if losses:
            sum(losses.values()).backward()

        scalars = {"guidance_loss": out.loss.detach(), "guidance_grad_norm": out.grad.norm().detach(),
                   "t": out.t.float().mean()}  # fmt: skip
        scalars.update({name: loss.detach() for name, loss in losses.items()})
        if edit_step % self.config.log_every == 0:
            writer.put_image(name="Edit/rendered view", image=rgb[0].detach(), step=step)
            grad_image = pixels.grad[0].norm(dim=0) if pixels.grad is not None else None
            if grad_image is not None:
                writer.put_image(name="Edit/image gradient", image=(grad_image / grad_image.max().clamp(min=1e-12))
                                 [..., None].expand(-1, -1, 3), step=step)  # fmt: skip
        return scalars
