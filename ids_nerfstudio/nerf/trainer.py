"""Trainer for editing: top-level --prompt-src/--prompt-trg, reconstruct-then-edit, editing-step counting."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from ids_nerfstudio.nerf.checkpoints import latest_checkpoint
from ids_nerfstudio.nerf.pipeline import EditPipeline, EditPipelineConfig
from ids_nerfstudio.prior import PriorLoadError


def _fail(message: str) -> None:
    """One-line error for bad input, no traceback."""
    CONSOLE.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
    sys.exit(2)


@dataclass
class EditTrainerConfig(TrainerConfig):
    """ns-train config of the editing methods."""

    _target: type = field(default_factory=lambda: EditTrainer)
    pipeline: EditPipelineConfig = field(default_factory=EditPipelineConfig)
    """Editing pipeline (data manager, nerfacto model, guidance, prior)."""
    prompt_src: str = ""
    """Prompt describing the source scene, e.g. "a photo of a bear statue"."""
    prompt_trg: str = ""
    """Prompt describing the edited scene, e.g. "a photo of a grizzly bear"."""
    reconstruction_steps: int = 5000
    """Without --load-dir: nerfacto reconstruction steps before editing starts (one command, images to edit)."""

    def validate(self) -> None:
        """Check the command line before anything is written; one-line errors."""
        data = self.data or self.pipeline.datamanager.data
        if data is None:
            _fail("--data is required: the folder of a nerfstudio dataset (try `ids-demo-scene demo`)")
        if not data.exists():
            _fail(f"--data {data} does not exist")
        if not self.prompt_trg.strip():
            _fail("--prompt-trg is empty: describe the edited scene")
        if self.prompt_src.strip() == self.prompt_trg.strip():
            CONSOLE.print("[bold yellow]warning:[/bold yellow] --prompt-src equals --prompt-trg: the edit is a no-op")
        if self.load_dir is not None and (not self.load_dir.is_dir() or latest_checkpoint(self.load_dir) is None):
            _fail(f"--load-dir {self.load_dir} holds no step-*.ckpt checkpoint: pass a run's nerfstudio_models folder")
        if self.reconstruction_steps < 0 or self.max_num_iterations < 0:
            _fail("--reconstruction-steps and --max-num-iterations must be >= 0")
        self.pipeline.prompt_src, self.pipeline.prompt_trg = self.prompt_src, self.prompt_trg

    def save_config(self) -> None:
        """ns-train saves the config first: validate before that, so bad input writes nothing."""
        self.validate()
        super().save_config()


class EditTrainer(Trainer):
    """Runs ``reconstruction_steps`` of nerfacto (unless a checkpoint is loaded), then the editing steps.

    ``--max-num-iterations`` counts editing steps whatever step a loaded checkpoint was at, and an edit run
    resumed from its own checkpoint continues its editing-step count.
    """

    config: EditTrainerConfig
    pipeline: EditPipeline

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.config.pipeline.prompt_src, self.config.pipeline.prompt_trg = (
            self.config.prompt_src,
            self.config.prompt_trg,
        )
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
            try:  # fail now, not after the reconstruction, if the diffusion model cannot be loaded
                self.pipeline.prior.components  # noqa: B018
            except PriorLoadError as error:
                _fail(str(error))
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
