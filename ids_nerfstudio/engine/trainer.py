"""Trainer for editing: reconstruct-then-edit, editing-step counting, input checks before anything is written."""

from __future__ import annotations

import copy
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import yaml
from jaxtyping import Float
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.decorators import check_main_thread, check_viewer_enabled
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from ids_nerfstudio.checkpoints import (
    UnreadableCheckpoint,
    allow_nerfstudio_checkpoints,
    checkpoint_step,
    latest_checkpoint,
    newest_readable_checkpoint,
    read_checkpoint,
    reconstruction_path,
    save_atomic,
)
from ids_nerfstudio.data.checks import check_mask_folder, check_nerfstudio_dataset, dataset_has_masks
from ids_nerfstudio.editing.dataset_update import DatasetUpdater
from ids_nerfstudio.editing.masks import DATASET_MASKS
from ids_nerfstudio.editing.pipeline import EditPipeline, EditPipelineConfig
from ids_nerfstudio.errors import UserError, check_number, exit_on_user_error, first_line
from ids_nerfstudio.files import remove_partial_files, write_atomic
from ids_nerfstudio.third_party_warnings import filter_third_party_deprecations


def checked_load_step(load_dir: Path, load_step: int | None) -> tuple[int, dict[str, Any]]:
    """The step to load from --load-dir, and its checkpoint: --load-step if that checkpoint is readable, else the
    newest readable one (a truncated newer one is skipped with a warning). Raises UserError naming the flag."""
    if not load_dir.is_dir() or latest_checkpoint(load_dir) is None:
        raise UserError(f"--load-dir {load_dir} holds no step-*.ckpt checkpoint: pass a run's nerfstudio_models folder")
    if load_step is None:
        found = newest_readable_checkpoint(load_dir)
        if found is None:
            raise UserError(f"--load-dir {load_dir}: no checkpoint there is readable (all truncated?)")
        return checkpoint_step(found[0]), found[1]
    path = load_dir / f"step-{load_step:09d}.ckpt"
    if not path.is_file():
        steps = ", ".join(str(checkpoint_step(p)) for p in sorted(load_dir.glob("step-*.ckpt"), key=checkpoint_step))
        raise UserError(f"--load-step {load_step}: --load-dir {load_dir} has no {path.name} (its steps: {steps})")
    try:
        return load_step, read_checkpoint(path)
    except UnreadableCheckpoint as error:
        raise UserError(
            f"--load-step {load_step}: {path} is unreadable ({error}); leave --load-step out to load the newest"
            " readable checkpoint"
        ) from error


def edit_start_of(state: dict[str, Any]) -> int:
    """The first editing step saved in a checkpoint, or -1 for a reconstruction (e.g. a stock nerfacto run)."""
    return int(state["pipeline"].get("edit_start_step", -1))


def check_output_folder(output_dir: Path) -> None:
    """``--output-dir``: a folder this process can create and write in (checked on its nearest existing ancestor,
    without writing anything)."""
    existing = output_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--output-dir {output_dir}: {existing} is a file, not a folder; pass a writable folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output-dir {output_dir}: {existing} is not writable (read-only or no permission); "
                        "pass a writable folder")  # fmt: skip


REPRESENTATION_KEYS = {"_model.gauss_params.": ("splatfacto", "-splat-edit"), "_model.field.": ("nerfacto", "-edit")}
"""A state-dict key prefix that only one representation's checkpoints have: its name and its methods' suffix."""


def check_checkpoint_representation(load_dir: Path, state: dict[str, Any], method_name: str, marker: str) -> None:
    """``--load-dir``: a checkpoint of the representation the method edits (``marker``: a key prefix its
    checkpoints have); otherwise name the representation found and the method that reads it."""
    keys = state["pipeline"].keys()
    if any(key.startswith(marker) for key in keys):
        return
    found = next(((name, suffix) for prefix, (name, suffix) in REPRESENTATION_KEYS.items()
                  if any(key.startswith(prefix) for key in keys)), None)  # fmt: skip
    guidance = method_name.split("-")[0]
    if found is None:
        raise UserError(f"--load-dir {load_dir}: not a checkpoint of a model {method_name} edits (no {marker}* keys)")
    variant = "-demo" if method_name.endswith("-demo") else ""
    raise UserError(f"--load-dir {load_dir} holds a {found[0]} checkpoint, which {method_name} cannot load: edit it "
                    f"with {guidance}{found[1]}{variant}")  # fmt: skip


def show_training_image(viewer: Any, dataset: InputDataset, index: int, image: Float[Tensor, "H W 3"]) -> None:
    """Draw ``image`` on training camera ``index``'s frustum in nerfstudio's viewer, as its ``init_scene`` draws the
    dataset's image (a thumbnail of short side 100); viser 0.2 cannot change a frustum's image, so the frustum is
    added again under its name, where it is, as visible as it was, and clicking it still moves the view to it. A
    camera the viewer does not draw (or a viewer without frustums: the legacy one) is left alone."""
    handles = getattr(viewer, "camera_handles", None)
    if handles is None or index not in handles:
        return
    old, camera = handles[index], dataset.cameras[index]
    thumbnail = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(2, 0, 1)
    thumbnail = torchvision.transforms.functional.resize(thumbnail, 100, antialias=None).permute(1, 2, 0)
    handle = viewer.viser_server.scene.add_camera_frustum(
        name=f"/cameras/camera_{index:05d}",
        fov=float(2 * np.arctan((camera.cx / camera.fx[0]).cpu())),
        scale=viewer.config.camera_frustum_scale,
        aspect=float((camera.cx[0] / camera.cy[0]).cpu()),
        image=thumbnail.cpu().numpy(),
        wxyz=old.wxyz,
        position=old.position,
        visible=old.visible,
    )  # fmt: skip

    def move_view_to_camera(event: Any) -> None:  # nerfstudio's init_scene callback
        with event.client.atomic():
            event.client.camera.position = event.target.position
            event.client.camera.wxyz = event.target.wxyz
            viewer.current_camera_idx = index

    handle.on_click(move_view_to_camera)
    handles[index] = handle


class NothingToDo(Exception):
    """A resumed edit run has already taken the editing steps asked for (the message says so, in one line)."""


def check_steps_left(load_dir: Path, step: int, edit_start: int, max_num_iterations: int) -> None:
    """Raise ``NothingToDo`` when --load-dir's edit run (editing since ``edit_start``, saved at ``step``) has taken
    the ``max_num_iterations`` editing steps already: ns-train would write a run that trains nothing."""
    if edit_start >= 0 and edit_start + max_num_iterations <= step + 1:
        raise NothingToDo(
            f"ns-train: nothing to do: {load_dir} has taken {step + 1 - edit_start} editing steps (steps "
            f"{edit_start}..{step}) and --max-num-iterations {max_num_iterations} counts every editing step of the "
            "run; raise it to go on"
        )


def resume_command(argv: list[str], load_dir: Path) -> str:
    """The ns-train command line ``argv`` with ``--load-dir load_dir`` in place of any --load-dir / --load-step."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in ("--load-dir", "--load-step"):
            skip = True
        elif not arg.startswith(("--load-dir=", "--load-step=")):
            kept.append(arg)
    return shlex.join(["ns-train", *kept, "--load-dir", str(load_dir)])


def saved_or_exit(path: Path, save: Callable[[], None]) -> None:
    """Run ``save`` (an atomic write of ``path``); if it fails (a full disk, no permission), say so in one line
    naming the file, the cause and the space left, and exit with code 1: the atomic write has removed its temporary
    file and the older checkpoints are untouched."""
    try:
        save()
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        free = shutil.disk_usage(path.parent if path.parent.exists() else path.parent.parent).free
        print(f"ns-train: error: could not save {path} ({first_line(error, 120)}; {free / 2**20:.0f} MiB free "
              "there); the older checkpoints are kept", file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(1) from None


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)

RECONSTRUCTION_STEPS = 5000
"""Reconstruction steps of a one-command edit (no --load-dir) by default."""
CSD_RECONSTRUCTION_STEPS = 30000
"""CSD App. B.3: its dataset update starts from a nerfacto trained 30,000 steps."""


def detached(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every tensor detached from its graph."""
    return {key: value.detach() if isinstance(value, torch.Tensor) else value for key, value in values.items()}


def _leave_now(signum: int, frame: object) -> None:
    remove_partial_files()  # a save in progress leaves no temporary file; the older checkpoints stay whole
    os._exit(130)


def _first_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: stop training (the trainer saves); any further one leaves at once, even during that save."""
    for interrupt in INTERRUPTS:
        signal.signal(interrupt, _leave_now)
    raise KeyboardInterrupt


@dataclass
class EditTrainerConfig(TrainerConfig):
    """ns-train config of the editing methods (the prompts are --prompt-src / --prompt-trg, on the pipeline)."""

    _target: type = field(default_factory=lambda: EditTrainer)
    pipeline: EditPipelineConfig = field(default_factory=EditPipelineConfig)
    """Editing pipeline (prompts, data manager, nerfacto model, guidance, prior)."""
    reconstruction_steps: int | None = None
    """Without --load-dir: reconstruction steps with the model's own losses (nerfacto, splatfacto) before editing
    starts (one command, images to edit). None: 5000, or 30,000 with --pipeline.dataset-update.mode csd (CSD's
    nerfacto, App. B.3)."""
    edit_learning_rate: float | None = None
    """Learning rate of the field and proposal networks while editing (None: go on with nerfacto's schedule).
    Adam moves each parameter by about the learning rate whatever its gradient's size, so at nerfacto's 1e-2 a
    small but consistent guidance bias (a tint) grows into a large change of the whole scene."""
    refinement_steps: int = 0
    """Steps of PDS's refinement stage after the edit (0: none): the training views are replaced one every 10 steps
    by SDEdits of the renders stored at its start (--pipeline.refinement.*). With --load-dir of a finished edit run
    (any guidance) it refines that edit."""
    update_learning_rate: float | None = None
    """Learning rate of the edited groups in dataset-update stages (--pipeline.dataset-update.mode, the refinement),
    which fit images with the model's own loss. None: each group's reconstruction rate from --optimizers (nerfacto
    1e-2, as the official refinement; splatfacto's per-group rates)."""
    update_schedulers: dict[str, Any] = field(default_factory=dict)
    """The learning-rate schedulers a dataset-update stage with restart-schedulers (the refinement) starts, per
    edited group; a group not named restarts its own --optimizers scheduler. method_configs.py sets PDS's for
    nerfacto: a 1000-step cosine warm-up from 1e-8, then exponential decay toward 1e-3."""
    edit_learning_rates: dict[str, float] = field(default_factory=dict)
    """Learning rates of single optimizer groups while editing, over --edit-learning-rate (e.g. splats:
    --edit-learning-rates features_dc 0.05 to recolour faster)."""

    @property
    def reconstruction_steps_resolved(self) -> int:
        """--reconstruction-steps, or its default for the dataset-update mode."""
        if self.reconstruction_steps is not None:
            return self.reconstruction_steps
        return CSD_RECONSTRUCTION_STEPS if self.pipeline.dataset_update.mode == "csd" else RECONSTRUCTION_STEPS

    def validate(self) -> None:
        """Check the command line and the data; raises UserError naming the flag or file (``NothingToDo`` for a
        resume whose editing steps are all taken)."""
        data = self.data or self.pipeline.datamanager.data
        if data is None:
            raise UserError("--data is required: the folder of a nerfstudio dataset (try `ids-demo-scene demo`)")
        if not data.exists():
            raise UserError(f"--data {data} does not exist")
        dataparser = self.pipeline.datamanager.dataparser
        if isinstance(dataparser, NerfstudioDataParserConfig):
            check_nerfstudio_dataset(data, dataparser.downscale_factor)
            mask = self.pipeline.mask
            if mask.enabled and not mask.automatic and mask.source != DATASET_MASKS:
                check_mask_folder(data, Path(mask.source))
            if mask.source == DATASET_MASKS and not dataset_has_masks(data):
                raise UserError(f"--pipeline.mask.source dataset: the frames of {data} have no mask_path")
        check_output_folder(self.output_dir)
        if self.load_dir is not None:
            self.load_step, state = checked_load_step(self.load_dir, self.load_step)
            marker = getattr(self.pipeline.model._target, "checkpoint_key_prefix", None)
            if marker is not None:
                check_checkpoint_representation(self.load_dir, state, self.method_name or "ns-train", marker)
            check_steps_left(self.load_dir, self.load_step, edit_start_of(state),
                             self.max_num_iterations + self.refinement_steps)  # fmt: skip
        counts = {"--reconstruction-steps": self.reconstruction_steps_resolved,
                  "--max-num-iterations": self.max_num_iterations,
                  "--refinement-steps": self.refinement_steps}  # fmt: skip
        for flag, count in counts.items():
            if count < 0:
                raise UserError(f"{flag} must be >= 0, got {count}")
        check_number("--update-learning-rate", self.update_learning_rate, positive=True)
        check_number("--edit-learning-rate", self.edit_learning_rate, positive=True)
        groups = getattr(self.pipeline.model._target, "edited_param_groups", ())
        for group, rate in self.edit_learning_rates.items():
            if group not in groups:
                raise UserError(f"--edit-learning-rates: {group} is not an edited group ({', '.join(groups)})")
            check_number("--edit-learning-rates", rate, positive=True)
        if self.machine.device_type == "cuda" and not torch.cuda.is_available():
            raise UserError("no CUDA device on this machine: add --machine.device-type cpu (slow; try ids-edit-demo)")
        self.pipeline.validate()

    def save_config(self) -> None:
        """config.yml, without the step loaded from --load-dir: ns-render, ns-viewer and ids-eval point
        load_dir at this run's own checkpoints, where the source run's step names no file."""
        saved = copy.copy(self)
        saved.load_step = None
        TrainerConfig.save_config(saved)

    def print_to_terminal(self) -> None:
        """ns-train prints the config, then saves it: check the input first, so bad input prints and writes nothing."""
        try:
            with exit_on_user_error("ns-train", sys.stdout):
                self.validate()
        except NothingToDo as done:  # before ns-train writes the run's folder
            print(done, flush=True)
            sys.exit(0)
        warning = self.pipeline.no_op_warning()
        if warning is not None:
            CONSOLE.print(f"[bold yellow]warning:[/bold yellow] {warning}", soft_wrap=True)
        super().print_to_terminal()


class EditTrainer(Trainer):
    """Runs ``reconstruction_steps`` of nerfacto (unless a checkpoint is loaded), then the editing steps.

    ``--max-num-iterations`` counts editing steps whatever step a loaded checkpoint was at, and an edit run
    resumed from its own checkpoint continues its editing-step count.
    """

    config: EditTrainerConfig
    pipeline: EditPipeline

    def __init__(self, config: EditTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        filter_third_party_deprecations()  # before nerfstudio's trainer builds its grad scaler
        super().__init__(config, local_rank, world_size)
        self.completed_step: int | None = None  # the newest step whose optimizer steps are done (what Ctrl-C saves)
        self.editing = False  # whether this process has switched the model to editing
        self.updating: DatasetUpdater | None = None  # the dataset-update stage whose learning rates are set

    def train(self) -> None:
        """nerfstudio's loop. Ctrl-C or SIGTERM saves the newest completed step atomically, prints the command that
        goes on from it and exits with code 130; a second one during that save exits at once (the older
        checkpoints stay whole). nerfstudio alone saves nothing on Ctrl-C and prints a traceback."""
        previous = {interrupt: signal.signal(interrupt, _first_interrupt) for interrupt in INTERRUPTS}
        try:
            super().train()
        except KeyboardInterrupt:
            if self.completed_step is None:
                print("Interrupted before the first step: nothing to save.", flush=True)
            else:
                self.save_checkpoint(self.completed_step)
                print(f"Interrupted: saved step {self.completed_step} to {self.checkpoint_dir}. To go on:\n"
                      f"{resume_command(sys.argv, self.checkpoint_dir)}", flush=True)  # fmt: skip
            raise SystemExit(130) from None
        finally:
            for interrupt, handler in previous.items():
                signal.signal(interrupt, handler)

    def setup(self, *args: Any, **kwargs: Any) -> None:
        allow_nerfstudio_checkpoints()  # --load-dir may hold a stock nerfacto checkpoint
        if self.config.load_dir is not None and self.config.load_step is None:  # not set by ns-train's check
            self.config.load_step = checked_load_step(self.config.load_dir, None)[0]
        super().setup(*args, **kwargs)  # loads the checkpoint, which sets _start_step (and edit_start_step)
        self.rebind_optimizers()
        loaded_edit_start = int(self.pipeline.edit_start_step)
        if loaded_edit_start >= 0:  # resuming an edit run
            edit_start = loaded_edit_start
        elif self._start_step > 0:  # a reconstruction (e.g. stock nerfacto) checkpoint: edit from here
            edit_start = self._start_step
        else:
            edit_start = self.config.reconstruction_steps_resolved
        self.pipeline.start_editing_at(edit_start)
        final_step = edit_start + self.config.max_num_iterations
        refine_start = int(self.pipeline.refine_start_step)
        if refine_start < 0 and self.config.refinement_steps > 0:  # after the edit (or the loaded, finished one)
            refine_start = max(final_step, self._start_step)
            self.pipeline.start_refinement_at(refine_start)
        if refine_start >= 0:
            final_step = refine_start + self.config.refinement_steps
        load_dir = self.config.load_dir
        self.pipeline.attach_run(self.base_dir, load_dir.parent if load_dir is not None else None)
        self.config.max_num_iterations = max(final_step - self._start_step, 0)  # the loop runs to final_step
        writer.GLOBAL_BUFFER["max_iter"] = final_step  # progress bar and ETA over the whole run
        # the viewer's "Pause editing" box pauses the loop between steps (outside the lock the viewer renders with)
        self.pipeline.set_pause_handler(self.set_paused)
        if self.config.max_num_iterations > 0:
            with exit_on_user_error("ns-train", sys.stdout):  # fail now, not after the reconstruction
                self.pipeline.prior.components  # noqa: B018 - loads the diffusion model
            for line in self.pipeline.prompt_warnings():
                CONSOLE.print(f"[bold yellow]warning:[/bold yellow] {line}", soft_wrap=True)  # one line, whole
        CONSOLE.print(f"Editing steps {edit_start}..{final_step - 1} (run starts at step {self._start_step}).")

    def rebind_optimizers(self) -> None:
        """Point each optimizer at the model's current parameters, keeping their loaded state.

        nerfstudio (1.1.5) builds the optimizers before it loads --load-dir's checkpoint, and splatfacto's
        ``load_state_dict`` replaces its Gaussian parameters with new ones of the checkpoint's size: the optimizers
        would step the discarded parameters and the loaded scene would never move. A no-op for nerfacto."""
        for name, params in self.pipeline.get_param_groups().items():
            optimizer = self.optimizers.optimizers.get(name)
            if optimizer is None:
                continue
            group = optimizer.param_groups[0]
            current = group["params"]
            if len(current) == len(params) and all(a is b for a, b in zip(current, params, strict=True)):
                continue
            for old, new in zip(group["params"], params, strict=True):
                if old in optimizer.state:
                    optimizer.state[new] = optimizer.state.pop(old)
            group["params"] = list(params)
            self.optimizers.parameters[name] = list(params)

    @check_viewer_enabled
    def _init_viewer_state(self) -> None:
        """nerfstudio's scene (each training camera's frustum with its dataset image), then the images the dataset
        updates train on instead: those loaded from a resumed run now, each new edit when it replaces its view."""
        super()._init_viewer_state()
        viewer, datamanager = self.viewer_state, self.pipeline.datamanager

        def redraw(index: int) -> None:
            show_training_image(viewer, datamanager.train_dataset, index, datamanager.train_image(index))

        for index in self.pipeline.replaced_views():
            redraw(index)
        self.pipeline.add_train_image_hook(redraw)

    def _update_viewer_state(self, step: int) -> None:
        """nerfstudio's update, plus the viewer's "Step:" every step: nerfstudio refreshes it only when it
        re-renders, which editing steps (slow, one view each) rarely let it do."""
        super()._update_viewer_state(step)
        if getattr(self, "viewer_state", None) is not None and self.config.is_viewer_enabled():
            self.viewer_state.update_step(step)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume the training loop between steps (the viewer's "Pause editing" box)."""
        self.training_state = "paused" if paused else "training"

    def start_editing(self, step: int) -> None:
        """Keep the reconstruction, freeze cameras and appearance, and switch to --edit-learning-rate (at the first
        editing step of this process)."""
        self.keep_reconstruction(step)
        self.pipeline.model.set_editing(True)
        self.pipeline.freeze_reconstruction(reconstruction_path(self.checkpoint_dir))  # with keep_target
        rates = {group: self.config.edit_learning_rate for group in self.pipeline.model.edited_param_groups}
        self.set_learning_rates(rates | self.config.edit_learning_rates)
        self.editing = True

    def start_updating(self, stage: DatasetUpdater, stage_step: int) -> None:
        """At a dataset-update stage's first step in this process (``stage_step`` of the stage): the edited groups'
        --update-learning-rate, the stage's per-view appearance and, if it restarts them, fresh schedulers; at the
        stage's very first step (not on a resume), fresh optimizers if the stage re-initialises them (csd)."""
        rate = self.config.update_learning_rate
        groups = self.pipeline.model.edited_param_groups
        own = {group: self.config.optimizers[group]["optimizer"].lr for group in groups}
        rates = {group: own[group] if rate is None else rate for group in groups}
        if stage_step == 0 and stage.config.reinitialises_optimizers:
            self.reinitialise_optimizers(rates)
        self.set_learning_rates(rates)
        self.pipeline.model.set_appearance_off(stage.config.appearance == "off")
        if stage.config.restart_schedulers:
            self.restart_schedulers(rates, stage_step)
        self.updating = stage

    def reinitialise_optimizers(self, rates: dict[str, float]) -> None:
        """Every optimizer as new (CSD App. B.3 re-initialises the reconstruction's optimizer before its dataset
        update): Adam's moments and step counts cleared (torch's Adam starts a parameter's state afresh when it has
        none), each group at its rate (``rates``, else its --optimizers one) and its own scheduler from step 0."""
        for group, optimizer in self.optimizers.optimizers.items():
            optimizer.state.clear()
            rate = rates.get(group, self.config.optimizers[group]["optimizer"].lr)
            for param_group in optimizer.param_groups:
                param_group["lr"] = param_group["initial_lr"] = rate
            scheduler = self.config.optimizers[group]["scheduler"]
            if scheduler is not None:
                self.optimizers.schedulers[group] = scheduler.setup().get_scheduler(optimizer=optimizer, lr_init=rate)

    def restart_schedulers(self, rates: dict[str, float], stage_step: int) -> None:
        """New schedulers for the groups of ``rates``, started at their rate, at step ``stage_step`` of the stage
        (a resumed stage goes on where it was); the optimizers' state (Adam's moments and step counts) is kept.
        The official refinement does this by loading the edit's checkpoint without its schedulers."""
        for group, rate in rates.items():
            config = self.config.update_schedulers.get(group, self.config.optimizers[group]["scheduler"])
            if config is None:
                continue
            optimizer = self.optimizers.optimizers[group]
            for param_group in optimizer.param_groups:  # torch's schedulers start from "initial_lr" when set
                param_group["lr"] = param_group["initial_lr"] = rate
            scheduler = config.setup().get_scheduler(optimizer=optimizer, lr_init=rate)
            if stage_step > 0:
                scheduler.last_epoch = stage_step - 1
                scheduler.step()
            self.optimizers.schedulers[group] = scheduler

    def set_learning_rates(self, rates: dict[str, float | None]) -> None:
        """Set optimizer groups' learning rates (None: leave the group as it is)."""
        for group, learning_rate in rates.items():
            if learning_rate is None:
                continue
            for param_group in self.optimizers.optimizers[group].param_groups:
                param_group["lr"] = learning_rate
            scheduler = self.optimizers.schedulers.get(group)
            if scheduler is not None:  # nerfstudio's schedulers scale their base learning rates
                scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)

    @check_main_thread
    def keep_reconstruction(self, step: int) -> None:
        """Write the pipeline state the edit starts from to ``reconstruction.ckpt`` beside the checkpoints (a resumed
        edit copies its source run's); ids-eval compares the edit with it."""
        target = reconstruction_path(self.checkpoint_dir)
        if step == int(self.pipeline.edit_start_step):
            pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
            saved_or_exit(target, lambda: save_atomic({"step": step, "pipeline": pipeline.state_dict()}, target))
        elif self.config.load_dir is not None and reconstruction_path(self.config.load_dir).is_file():
            source = reconstruction_path(self.config.load_dir)
            saved_or_exit(target, lambda: write_atomic(target, lambda partial: shutil.copyfile(source, partial)))
        if target.is_file():
            self.write_reconstruction_config(target)

    def write_reconstruction_config(self, checkpoint: Path) -> None:
        """``reconstruction.yml`` beside config.yml: this run's config loading ``checkpoint`` (the state the edit
        started from), so that ``ns-render`` / ``ns-viewer --load-config RUN/reconstruction.yml`` show the scene
        before the edit along the same camera paths (ids-before-after puts the two renders side by side)."""
        shown = yaml.load(yaml.dump(self.config), Loader=yaml.Loader)  # a deep copy, as ns-render will read it
        shown.load_dir, shown.load_step = None, None
        shown.pipeline.reconstruction_checkpoint = checkpoint
        path = self.base_dir / "reconstruction.yml"
        saved_or_exit(path, lambda: write_atomic(path, lambda partial: partial.write_text(yaml.dump(shown))))

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written atomically: a kill during the save leaves the older checkpoints only.

        Mirrors ``nerfstudio.engine.trainer.Trainer.save_checkpoint`` (1.1.5): the dictionary below is typed again
        from it, so a nerfstudio upgrade that changes its keys must change it too
        (tests/test_editing_step.py compares the two saves' keys).
        """
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state = {  # nerfstudio 1.1.5's keys
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        saved_or_exit(path, lambda: save_atomic(state, path))
        if self.config.save_only_latest_checkpoint:
            for other in self.checkpoint_dir.glob("step-*.ckpt"):
                if other != path:
                    other.unlink()

    def train_iteration(self, step: int):
        """nerfstudio's iteration for every step, reconstruction or editing (the pipeline returns the editing losses
        from ``get_train_loss_dict``): autocast, the grad scaler and gradient accumulation apply to both. The first
        editing step of this process switches the model and the learning rates to editing first."""
        if self.pipeline.is_editing_step(step) and not self.editing:
            self.start_editing(step)
        stage = self.pipeline.update_stage(step)
        if stage is not None and stage[0] is not self.updating:
            self.start_updating(*stage)
        loss, loss_dict, metrics_dict = super().train_iteration(step)
        self.completed_step = step
        # The backward is done: what nerfstudio logs next needs the values, not the graph (float() of a tensor that
        # requires grad warns).
        return loss.detach(), detached(loss_dict), detached(metrics_dict)
