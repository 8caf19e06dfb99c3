"""Trainer for editing: reconstruct-then-edit, editing-step counting, input checks before anything is written."""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from ids_nerfstudio.errors import UserError, check_number, exit_on_user_error
from ids_nerfstudio.nerf.checkpoints import (
    UnreadableCheckpoint,
    allow_nerfstudio_checkpoints,
    checkpoint_step,
    latest_checkpoint,
    newest_readable_checkpoint,
    read_checkpoint,
    save_atomic,
)
from ids_nerfstudio.nerf.pipeline import EditPipeline, EditPipelineConfig


def check_nerfstudio_dataset(data: Path) -> None:
    """A nerfstudio dataset: transforms.json (or the given .json) with frames whose image files exist."""
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    if not transforms.is_file():
        raise UserError(f"--data {data}: no transforms.json there; pass a nerfstudio dataset (ns-process-data output)")
    try:
        frames = json.loads(transforms.read_text())["frames"]
        paths = [transforms.parent / frame["file_path"] for frame in frames]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{transforms}: not a nerfstudio transforms file ({type(error).__name__}: {error})") from error
    if not paths:
        raise UserError(f"{transforms}: no frames")
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{transforms}: {len(missing)} of {len(paths)} images are missing, e.g. {missing[0]}")


def checked_load_step(load_dir: Path, load_step: int | None) -> int:
    """The step to load from --load-dir: --load-step if that checkpoint is readable, else the newest readable one
    (a truncated newer one is skipped with a warning). Raises UserError naming the flag otherwise."""
    if not load_dir.is_dir() or latest_checkpoint(load_dir) is None:
        raise UserError(f"--load-dir {load_dir} holds no step-*.ckpt checkpoint: pass a run's nerfstudio_models folder")
    if load_step is None:
        found = newest_readable_checkpoint(load_dir)
        if found is None:
            raise UserError(f"--load-dir {load_dir}: no checkpoint there is readable (all truncated?)")
        return checkpoint_step(found[0])
    path = load_dir / f"step-{load_step:09d}.ckpt"
    if not path.is_file():
        steps = ", ".join(str(checkpoint_step(p)) for p in sorted(load_dir.glob("step-*.ckpt"), key=checkpoint_step))
        raise UserError(f"--load-step {load_step}: --load-dir {load_dir} has no {path.name} (its steps: {steps})")
    try:
        read_checkpoint(path)
    except UnreadableCheckpoint as error:
        raise UserError(
            f"--load-step {load_step}: {path} is unreadable ({error}); leave --load-step out to load the newest"
            " readable checkpoint"
        ) from error
    return load_step


@dataclass
class EditTrainerConfig(TrainerConfig):
    """ns-train config of the editing methods (the prompts are --prompt-src / --prompt-trg, on the pipeline)."""

    _target: type = field(default_factory=lambda: EditTrainer)
    pipeline: EditPipelineConfig = field(default_factory=EditPipelineConfig)
    """Editing pipeline (prompts, data manager, nerfacto model, guidance, prior)."""
    reconstruction_steps: int = 5000
    """Without --load-dir: nerfacto reconstruction steps before editing starts (one command, images to edit)."""
    edit_learning_rate: float | None = None
    """Learning rate of the field and proposal networks while editing (None: go on with nerfacto's schedule).
    Adam moves each parameter by about the learning rate whatever its gradient's size, so at nerfacto's 1e-2 a
    small but consistent guidance bias (a tint) grows into a large change of the whole scene."""

    def validate(self) -> None:
        """Check the command line and the data; raises UserError naming the flag or file."""
        data = self.data or self.pipeline.datamanager.data
        if data is None:
            raise UserError("--data is required: the folder of a nerfstudio dataset (try `ids-demo-scene demo`)")
        if not data.exists():
            raise UserError(f"--data {data} does not exist")
        if isinstance(self.pipeline.datamanager.dataparser, NerfstudioDataParserConfig):
            check_nerfstudio_dataset(data)
        if self.load_dir is not None:
            self.load_step = checked_load_step(self.load_dir, self.load_step)
        if self.reconstruction_steps < 0 or self.max_num_iterations < 0:
            raise UserError("--reconstruction-steps and --max-num-iterations must be >= 0")
        check_number("--edit-learning-rate", self.edit_learning_rate, positive=True)
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
        with exit_on_user_error("ns-train", sys.stdout):
            self.validate()
        warning = self.pipeline.no_op_warning()
        if warning is not None:
            CONSOLE.print(f"[bold yellow]warning:[/bold yellow] {warning}")
        super().print_to_terminal()


class EditTrainer(Trainer):
    """Runs ``reconstruction_steps`` of nerfacto (unless a checkpoint is loaded), then the editing steps.

    ``--max-num-iterations`` counts editing steps whatever step a loaded checkpoint was at, and an edit run
    resumed from its own checkpoint continues its editing-step count.
    """

    config: EditTrainerConfig
    pipeline: EditPipeline

    def setup(self, *args: Any, **kwargs: Any) -> None:
        allow_nerfstudio_checkpoints()  # --load-dir may hold a stock nerfacto checkpoint
        if self.config.load_dir is not None and self.config.load_step is None:  # not set by ns-train's check
            self.config.load_step = checked_load_step(self.config.load_dir, None)
        super().setup(*args, **kwargs)  # loads the checkpoint, which sets _start_step (and edit_start_step)
        loaded_edit_start = int(self.pipeline.edit_start_step)
        if loaded_edit_start >= 0:  # resuming an edit run
            edit_start = loaded_edit_start
        elif self._start_step > 0:  # a reconstruction (e.g. stock nerfacto) checkpoint: edit from here
            edit_start = self._start_step
        else:
            edit_start = self.config.reconstruction_steps
        self.pipeline.edit_start_step.fill_(edit_start)
        final_step = edit_start + self.config.max_num_iterations
        self.config.max_num_iterations = max(final_step - self._start_step, 0)  # the loop runs to final_step
        writer.GLOBAL_BUFFER["max_iter"] = final_step  # progress bar and ETA over the whole run
        # the viewer's "Pause editing" box pauses the loop between steps (outside the lock the viewer renders with)
        self.pipeline.on_pause = lambda paused: setattr(self, "training_state", "paused" if paused else "training")
        if self.config.max_num_iterations > 0:
            with exit_on_user_error("ns-train", sys.stdout):  # fail now, not after the reconstruction
                self.pipeline.prior.components  # noqa: B018 - loads the diffusion model
        CONSOLE.print(f"Editing steps {edit_start}..{final_step - 1} (run starts at step {self._start_step}).")

    def _update_viewer_state(self, step: int) -> None:
        """nerfstudio's update, plus the viewer's "Step:" every step: nerfstudio refreshes it only when it
        re-renders, which editing steps (slow, one view each) rarely let it do."""
        super()._update_viewer_state(step)
        if getattr(self, "viewer_state", None) is not None and self.config.is_viewer_enabled():
            self.viewer_state.update_step(step)

    _editing = False

    def start_editing(self) -> None:
        """Freeze cameras and appearance, and switch to --edit-learning-rate (at the first editing step)."""
        self.pipeline.model.set_editing(True)
        learning_rate = self.config.edit_learning_rate
        if learning_rate is not None:
            for group in self.pipeline.model.edited_param_groups:
                for param_group in self.optimizers.optimizers[group].param_groups:
                    param_group["lr"] = learning_rate
                scheduler = self.optimizers.schedulers.get(group)
                if scheduler is not None:  # nerfstudio's schedulers scale their base learning rates
                    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
        self._editing = True

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written atomically: a kill during the save leaves the older checkpoints only.

        Mirrors ``nerfstudio.engine.trainer.Trainer.save_checkpoint`` (1.1.5): the dictionary below is typed again
        from it, so a nerfstudio upgrade that changes its keys must change it too
        (tests/test_nerf.py compares the two saves' keys).
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
        save_atomic(state, path)
        if self.config.save_only_latest_checkpoint:
            for other in self.checkpoint_dir.glob("step-*.ckpt"):
                if other != path:
                    other.unlink()

    def train_iteration(self, step: int):
        """Reconstruction steps are nerfacto's; editing steps call the pipeline's ``edit_step``."""
        if step < int(self.pipeline.edit_start_step):
            return super().train_iteration(step)
        if not self._editing:
            self.start_editing()
        self.optimizers.zero_grad_all()
        scalars = self.pipeline.edit_step(step)
        if scalars is None:  # a non-finite guidance gradient: leave the fields unchanged
            return torch.tensor(0.0), {}, {}
        for group in self.pipeline.model.edited_param_groups:  # cameras stay fixed while editing
            self.optimizers.optimizer_step(group)
        self.optimizers.scheduler_step_all(step)
        loss = scalars["guidance_loss"]
        return loss, {"guidance_loss": loss}, scalars
