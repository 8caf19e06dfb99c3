"""Dataset-update editing: periodically replace training images with 2D edits and keep training the scene with its
own reconstruction loss (PDS's refinement stage, CSD-Edit's multi-view update, Instruct-NeRF2NeRF's update).

One engine, three editors; every choice is stateless in the stage's step, so a resumed run makes the same ones:

- which views: every ``period`` steps of the stage, ``views_per_update`` views, in a fixed cycle (PDS, IN2N:
  ``itertools.cycle`` over the training views) or drawn without replacement (CSD);
- from what: the renders stored at the stage's start (PDS: the refinement run trains on the PDS run's renders and
  SDEdits them, never the source images), the current render (IN2N, CSD) or the source image;
- by which editor: ``sdedit`` (PDS ``run_sdedit``), ``in2n`` (InstructPix2Pix DDIM from a noised render, conditioned
  on the view's original image), ``csd`` (one CSD-Edit run over all the update's views as SVGD particles:
  InstructPix2Pix conditioned on each view's original, or the DDS form with a text prior);
- the edited images are written beside the run (``<run>/edited_images/NNNNN.png``, atomic) and the stored renders
  (``<run>/update_renders/``, ``<run>/refinement_renders/``), so a resumed run continues with them; the dataset's
  files are never written.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ids_nerfstudio.data.datamanagers import EditViewsMixin
from ids_nerfstudio.editing.contract import EditableModel, RenderOptions
from ids_nerfstudio.errors import UserError
from ids_nerfstudio.files import write_atomic
from ids_nerfstudio.guidance.csd import CSDConfig
from ids_nerfstudio.guidance.sdedit import ddim_edit, in2n_grid, sdedit_grid
from ids_nerfstudio.images import load_image, to_pil, to_tensor
from ids_nerfstudio.panorama import OFFICIAL_CSD_DECAY, OFFICIAL_CSD_LR
from ids_nerfstudio.prior.base import DiffusionPrior
from ids_nerfstudio.video_editor import optimise_frames

UpdateMode = Literal["off", "sdedit", "csd", "in2n"]
Appearance = Literal["off", "frozen"]
Order = Literal["cycle", "random"]
Start = Literal["stored", "current", "source"]

MODE_DEFAULTS: dict[str, tuple[int, int, Order, Start]] = {
    "sdedit": (10, 1, "cycle", "stored"),  # PDS refinement_pipeline.py: edit_rate 10, edit_count 1, cycle
    "in2n": (10, 1, "cycle", "current"),  # in2n_config.py: edit_rate 10, edit_count 1, cycle, the current render
    "csd": (2000, 16, "random", "current"),  # CSD App. B.3: 16 random views every 2000 steps; start: see config
}
"""Per mode: period, views per update, view order and start image."""

EDITED_IMAGES = "edited_images"
"""The folder of a run's edited training images (the data manager's current training set, shared by the stages)."""


@dataclass
class DatasetUpdateConfig:
    """A dataset-update stage: which training views are replaced by which 2D edit, how often."""

    mode: UpdateMode = "off"
    """off: no dataset update; sdedit: PDS refinement (SDEdit of the stored renders); in2n: Instruct-NeRF2NeRF
    (InstructPix2Pix edit of the noised current render); csd: CSD-Edit of several views jointly."""
    period: int | None = None
    """Steps between updates (None: the mode's default: sdedit and in2n 10, csd 2000)."""
    views_per_update: int | None = None
    """Views replaced per update (None: sdedit and in2n 1, csd 16, the particles of one CSD-Edit run)."""
    order: Order | None = None
    """cycle: the views in a fixed cycle (PDS, IN2N); random: drawn without replacement per update (CSD). None: the
    mode's."""
    start: Start | None = None
    """What the editor starts from: stored (the renders at the stage's start; PDS), current (the current render;
    IN2N, CSD) or source (the original image). None: the mode's."""
    size: int | None = None
    """Short side, in pixels, the editor works at (None: --pipeline.render-size, 512 as PDS, 64 in the demo
    methods); the result is resized back bilinearly."""
    seed: int = 0
    """Seed of the view draws, SDEdit skips, IN2N timesteps and noises (each update's from the stage step)."""
    sdedit_steps: int = 20
    """SDEdit: points of the prior's DDIM grid (PDS: 20; its steps_offset is read from the prior's scheduler)."""
    sdedit_skip: tuple[int, int] = (16, 18)
    """SDEdit: grid points skipped, drawn uniformly in this inclusive range (PDS: 16..18, i.e. 4, 3 or 2 steps from
    t = 151, 101 or 51 with Stable Diffusion)."""
    sdedit_guidance_scale: float = 15.0
    """SDEdit: CFG scale of the target prompt against "" (PDS: 15)."""
    in2n_steps: int = 20
    """IN2N: DDIM steps of an edit (in2n_config.py: diffusion_steps 20)."""
    in2n_t_range: tuple[float, float] = (0.02, 0.98)
    """IN2N: the start timestep's range as fractions of the schedule (in2n_config.py: lower/upper bound)."""
    in2n_guidance_scale: float = 7.5
    """IN2N: text CFG scale (image CFG: --pipeline.prior.image-guidance-scale, 1.5 as IN2N)."""
    fpr_iters: int = 0
    """SDEdit and IN2N: FPR iterations (IDS's fixed-point regularization, with the editor's own score) on the noised
    start latent, so that the edit keeps more of its start image (0: off; docs/dataset-update.md measures it)."""
    fpr_scale: float = 1.0
    """SDEdit and IN2N: the FPR step size (IDS's lambda)."""
    csd: CSDConfig = field(default_factory=CSDConfig)
    """CSD: the guidance of the joint edit (--pipeline.dataset-update.csd.fpr-iters 3 corrects it with FPR)."""
    csd_iterations: int = 200
    """CSD: SGD iterations of one joint edit (unspecified by the paper; the official 2D CSD-Edit's 200; the demo
    methods' fewer, docs/dataset-update.md)."""
    csd_lr: float = OFFICIAL_CSD_LR
    """CSD: SGD learning rate on the latents, on the unscaled gradient (the official CSD-Edit editors' 2.0)."""
    csd_lr_decay: float = OFFICIAL_CSD_DECAY
    """CSD: the learning rate is multiplied by this every 20 iterations (the official CSD-Edit editors' 0.9)."""
    appearance: Appearance = "frozen"
    """Per-view appearance while training on the updated images: off (every view gets the appearance new views are
    rendered with; PDS's refinement, whose nerfacto has no appearance embedding) or frozen (each view keeps its
    reconstructed code, as while distilling)."""
    reinitialise_optimizers: bool | None = None
    """Clear every optimizer's state (Adam's moments and step counts) and start each group's own scheduler at the
    stage's first step (a resumed stage keeps what it has since). None: the mode's: csd yes (CSD App. B.3: the
    optimizer is re-initialised after the 30,000 reconstruction steps), the others no (PDS keeps Adam's state)."""
    restart_schedulers: bool = False
    """Start the edited groups' learning-rate schedules afresh at the stage's first step (--update-schedulers, else
    each group's own from --optimizers; Adam's state is kept), as PDS's refinement does; off: they go on."""

    def resolved(self) -> tuple[int, int, Order, Start]:
        """Period, views per update, order and start, the mode's defaults filled in."""
        period, views, order, start = MODE_DEFAULTS[self.mode]
        return (self.period or period, self.views_per_update or views, self.order or order, self.start or start)

    @property
    def reinitialises_optimizers(self) -> bool:
        """Whether the stage starts with fresh optimizers (``reinitialise_optimizers``, the mode's default)."""
        return self.mode == "csd" if self.reinitialise_optimizers is None else self.reinitialise_optimizers

    def validate(self, flag_prefix: str = "--pipeline.dataset-update.") -> None:
        """Raise ``UserError`` naming the first bad flag."""
        if self.mode == "off":
            return
        period, views, _, _ = self.resolved()
        low, high = self.sdedit_skip
        checks = {
            "period": (period >= 1, ">= 1"),
            "views-per-update": (views >= 1, ">= 1"),
            "size": (self.size is None or 8 <= self.size <= 2048, "between 8 and 2048"),
            "sdedit-skip": (0 <= low <= high < self.sdedit_steps, f"0 <= low <= high < {self.sdedit_steps}"),
            "in2n-t-range": (0 < self.in2n_t_range[0] <= self.in2n_t_range[1] < 1, "two fractions 0 < low <= high < 1"),
            "csd-iterations": (self.csd_iterations >= 1, ">= 1"),
            "csd-lr": (math.isfinite(self.csd_lr) and self.csd_lr > 0, "finite and > 0"),
            "csd-lr-decay": (math.isfinite(self.csd_lr_decay) and self.csd_lr_decay > 0, "finite and > 0"),
            "fpr-iters": (self.fpr_iters >= 0, ">= 0"),
            "fpr-scale": (math.isfinite(self.fpr_scale) and self.fpr_scale >= 0, "finite and >= 0"),
        }  # fmt: skip
        for name, (ok, wanted) in checks.items():
            if not ok:
                raise UserError(f"{flag_prefix}{name} must be {wanted}")
        self.csd.validate(flag_prefix + "csd.")


class Renderer(Protocol):
    """Renders training views (no graph) at their training size: (B, 3, H, W) in [0, 1]."""

    def __call__(self, indices: list[int]) -> Float[Tensor, "B 3 H W"]: ...


def model_renderer(model: EditableModel, datamanager: EditViewsMixin, options: RenderOptions) -> Renderer:
    """A ``Renderer`` through the editing contract (each view at its training resolution, no graph)."""

    def render(indices: list[int]) -> Float[Tensor, "B 3 H W"]:
        images = []
        for index in indices:
            camera = datamanager.train_dataset.cameras[index : index + 1]
            width, height = int(camera.width), int(camera.height)
            with torch.no_grad():
                views = model.render_edit_views([camera], [index], width, height, seed=index, options=options)
            images.append(views.images.detach()[0].float().cpu())
        return torch.stack(images)

    return render


def stage_generator(seed: int, stage_step: int) -> torch.Generator:
    """The generator of one update's draws: a function of the seed and the stage step only (resumes repeat it)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stage_step)


def working_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """(h, w) with the short side ``short_side`` (PDS: ``int(h * 512 / min(h, w))``), rounded down to ``multiple``."""
    scale = short_side / min(height, width)
    return tuple(max(multiple, int(side * scale) // multiple * multiple) for side in (height, width))


class DatasetUpdater:
    """Runs a dataset-update stage on a data manager (see the module docstring)."""

    def __init__(
        self, config: DatasetUpdateConfig, prior: DiffusionPrior, datamanager: EditViewsMixin, render: Renderer,
        default_size: int = 512, stage: str = "update",
    ) -> None:  # fmt: skip
        self.config = config
        self.renders_folder = f"{stage}_renders"  # the renders stored at this stage's start
        self.size = config.size or default_size
        self.prior = prior
        self.datamanager = datamanager
        self.render = render
        self.csd = config.csd.setup(prior=prior) if config.mode == "csd" else None
        self.stored: dict[int, Tensor] = {}
        self.run_dir: Path | None = None
        self.replaced: set[int] = set()
        """The training views this stage has replaced (or loaded the edits of)."""
        self.hooks: list[Callable[[int], None]] = []
        """Called with a view's index after its training image is replaced (the viewer redraws its camera)."""

    @property
    def num_views(self) -> int:
        return len(self.datamanager.train_dataset)

    # --------------------------------------------------------------------------------------------- schedule
    def views_at(self, stage_step: int) -> list[int]:
        """The training views replaced at this step of the stage (empty between updates)."""
        period, views, order, _ = self.config.resolved()
        if stage_step < 0 or stage_step % period:
            return []
        update, count = stage_step // period, min(views, self.num_views)
        if order == "cycle":
            return [(update * count + j) % self.num_views for j in range(count)]
        generator = torch.Generator().manual_seed(self.config.seed * 7919 + update)
        return torch.randperm(self.num_views, generator=generator)[:count].tolist()

    # ------------------------------------------------------------------------------------------- persistence
    def attach(self, run_dir: Path | None, resume_dir: Path | None = None, edited_images: bool = True) -> None:
        """Write edits under ``run_dir``; first load the stored renders (and with ``edited_images`` the edited
        images, into the data manager) of ``resume_dir`` (a run this one continues) or of ``run_dir`` itself, and
        copy them into ``run_dir``."""
        self.run_dir = run_dir
        folders = (self.renders_folder, EDITED_IMAGES) if edited_images else (self.renders_folder,)
        for source in (resume_dir, run_dir):
            if source is None:
                continue
            for name in folders:
                for path in sorted((source / name).glob("[0-9]*.png")):
                    index = int(path.stem)
                    image = to_tensor(load_image(path))[0].permute(1, 2, 0)
                    if name == self.renders_folder:
                        self.stored[index] = image.permute(2, 0, 1)
                    else:
                        self.replace(index, image)
                    if run_dir is not None and source != run_dir:
                        target = run_dir / name / path.name
                        write_atomic(target, lambda partial, path=path: shutil.copyfile(path, partial))

    def replace(self, index: int, image: Float[Tensor, "H W 3"]) -> None:
        """Train view ``index`` on ``image`` from now on, and tell the hooks."""
        self.datamanager.replace_train_image(index, image)
        self.replaced.add(index)
        for hook in self.hooks:
            hook(index)

    def _save(self, folder: str, index: int, image: Float[Tensor, "3 H W"]) -> None:
        if self.run_dir is not None:
            write_atomic(self.run_dir / folder / f"{index:05d}.png", lambda partial: to_pil(image[None]).save(partial))

    def store_renders(self) -> None:
        """Render every training view once, at the stage's start (what ``start="stored"`` edits)."""
        missing = [i for i in range(self.num_views) if i not in self.stored]
        if not missing:
            return
        for index, image in zip(missing, self.render(missing), strict=True):
            self.stored[index] = image
            self._save(self.renders_folder, index, image)

    # ---------------------------------------------------------------------------------------------- update
    def start_images(self, indices: list[int]) -> Float[Tensor, "B 3 H W"]:
        """The images the editor starts from, at their training size."""
        start = self.config.resolved()[3]
        if start == "stored":
            self.store_renders()
            return torch.stack([self.stored[i] for i in indices])
        if start == "current":
            return self.render(indices)
        return torch.stack([self.datamanager.train_dataset[i]["image"][..., :3].permute(2, 0, 1).float()
                            for i in indices])  # fmt: skip

    def update(self, stage_step: int, prompt_trg: str, prompt_src: str) -> list[int]:
        """Replace this step's views (if any) by their edits; returns the views replaced."""
        indices = self.views_at(stage_step)
        if not indices:
            return []
        images = self.start_images(indices)
        height, width = images.shape[-2:]
        size = working_size(height, width, self.size, self.prior.size_multiple)
        working = F.interpolate(images, size=size, mode="bilinear")
        sources = None  # read only by the editors that condition on the originals (PDS's SDEdit never does)
        if self.config.mode == "csd" or self.prior.image_conditional:
            sources = F.interpolate(self.source_images(indices), size=size, mode="bilinear")
        edited = self.edit(working, sources, stage_step, prompt_trg, prompt_src)
        edited = F.interpolate(edited.float().cpu(), size=(height, width), mode="bilinear").clamp(0, 1)
        for index, image in zip(indices, edited, strict=True):
            self.replace(index, image.permute(1, 2, 0))
            self._save(EDITED_IMAGES, index, image)
        return indices

    def source_images(self, indices: list[int]) -> Float[Tensor, "B 3 H W"]:
        """The views' original images (the dataset's files), what IN2N and CSD-Edit condition on."""
        return torch.stack([self.datamanager.train_dataset[i]["image"][..., :3].permute(2, 0, 1).float()
                            for i in indices])  # fmt: skip

    @torch.no_grad()
    def edit(
        self, images: Float[Tensor, "B 3 h w"], sources: Float[Tensor, "B 3 h w"] | None, stage_step: int,
        prompt_trg: str, prompt_src: str,
    ) -> Float[Tensor, "B 3 h w"]:  # fmt: skip
        """The configured editor on a batch of images at the working size."""
        config, prior = self.config, self.prior
        generator = stage_generator(config.seed, stage_step)
        z_0 = prior.encode_images(images.to(prior.device)).float()
        z_src = None if sources is None else prior.encode_images(sources.to(prior.device)).float()
        batch = z_0.shape[0]
        if config.mode == "sdedit":
            low, high = config.sdedit_skip
            skip = int(torch.randint(low, high + 1, (1,), generator=generator))
            text = prior.encode_text([prompt_trg] * batch)
            grid = sdedit_grid(prior, config.sdedit_steps, skip)
            z = ddim_edit(prior, z_0, grid, text, config.sdedit_guidance_scale, generator=generator, image_cond=z_src,
                          fpr_iters=config.fpr_iters, fpr_scale=config.fpr_scale)  # fmt: skip
        elif config.mode == "in2n":
            steps = len(prior.alphas_cumprod)
            low, high = (int(steps * fraction) for fraction in config.in2n_t_range)
            t_start = int(torch.randint(low, high + 1, (1,), generator=generator))
            text = prior.encode_text([prompt_trg] * batch)
            z = ddim_edit(prior, z_0, in2n_grid(prior, config.in2n_steps, t_start), text, config.in2n_guidance_scale,
                          generator=generator, image_cond=z_src, final_alpha_cumprod=1.0, fpr_iters=config.fpr_iters,
                          fpr_scale=config.fpr_scale)  # fmt: skip
        else:
            z = self.joint_csd_edit(z_0, z_src, generator, prompt_trg, prompt_src)
        return prior.decode_latents(z)

    def joint_csd_edit(
        self, z_start: Float[Tensor, "B C h w"], z_src: Float[Tensor, "B C h w"], generator: torch.Generator,
        prompt_trg: str, prompt_src: str,
    ) -> Float[Tensor, "B C h w"]:  # fmt: skip
        """One CSD-Edit run over the update's views as particles: the video editor's loop (every particle every
        iteration, each against its own source latent ``z_src``: InstructPix2Pix's image condition, or DDS's
        source) from ``z_start``, with CSD-Edit's own schedule (the unscaled gradient, ``csd_lr`` decayed by
        ``csd_lr_decay`` every 20 iterations)."""
        assert self.csd is not None
        with torch.enable_grad():
            return optimise_frames(
                self.csd, z_src, prompt_trg, prompt_src, steps=self.config.csd_iterations, lr=self.config.csd_lr,
                grad_scale=z_src.shape[-2] * z_src.shape[-1], generator=generator,
                lr_decay=self.config.csd_lr_decay, start=z_start,
            )  # fmt: skip
