"""Trainer for editing: reconstruct-then-edit, editing-step counting, input checks before anything is written."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from ids_nerfstudio.errors import UserError, exit_on_user_error
from ids_nerfstudio.nerf.checkpoints import allow_nerfstudio_checkpoints, latest_checkpoint
from ids_nerfstudio.nerf.pipeline import EditPipeline, EditPipelineConfig


@dataclass
class EditTrainerConfig(TrainerConfig):
    """ns-train config of the editing methods (the prompts are --prompt-src / --prompt-trg, on the pipeline)."""

    _target: type = field(default_factory=lambda: EditTrainer)
    pipeline: EditPipelineConfig = field(default_factory=EditPipelineConfig)
    """Editing pipeline (prompts, data manager, nerfacto model, guidance, prior)."""
    reconstruction_steps: int = 5000
    """Without --load-dir: nerfacto reconstruction steps before editing starts (one command, images to edit)."""

    def validate(self) -> None:
        """Check the command line; raises UserError naming the flag."""
        data = self.data or self.pipeline.datamanager.data
        if data is None:
            raise UserError("--data is required: the folder of a nerfstudio dataset (try `ids-demo-scene demo`)")
        if not data.exists():
            raise UserError(f"--data {data} does not exist")
        if not self.pipeline.prompt_trg.strip():
            raise UserError("--prompt-trg is empty: describe the edited scene")
        if self.load_dir is not None and (not self.load_dir.is_dir() or latest_checkpoint(self.load_dir) is None):
            raise UserError(
                f"--load-dir {self.load_dir} holds no step-*.ckpt checkpoint: pass a run's nerfstudio_models folder"
            )
        if self.reconstruction_steps < 0 or self.max_num_iterations < 0:
            raise UserError("--reconstruction-steps and --max-num-iterations must be >= 0")

    def print_to_terminal(self) -> None:
        """ns-train prints the config, then saves it: check the input first, so bad input prints and writes nothing."""
        with exit_on_user_error("ns-train", sys.stdout):
            self.validate()
        if self.pipeline.prompt_src.strip() == self.pipeline.prompt_trg.strip():
            CONSOLE.print("[bold yellow]warning:[/bold yellow] --prompt-src equals --prompt-trg: the edit is a no-op")
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

    def train_iteration(self, step: int):
        """Reconstruction steps are nerfacto's; editing steps call the pipeline's ``edit_step``."""
        if step < int(self.pipeline.edit_start_step):
            return super().train_iteration(step)
        self.pipeline.model.set_editing(True)
        self.optimizers.zero_grad_all()
        scalars = self.pipeline.edit_step(step)
        if scalars is None:  # a non-finite guidance gradient: leave the fields unchanged
            return torch.tensor(0.0), {}, {}
        for group in ("proposal_networks", "fields"):  # cameras stay fixed while editing
            self.optimizers.optimizer_step(group)
        self.optimizers.scheduler_step_all(step)
        loss = scalars["guidance_loss"]
        return loss, {"guidance_loss": loss}, scalars
