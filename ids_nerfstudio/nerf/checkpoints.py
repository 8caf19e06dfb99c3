"""Checkpoint helpers shared by the trainer and the render/viewer path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def allow_numpy_scalars_in_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read numpy float64 scalars (nerfstudio's saved learning rates)."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar
    torch.serialization.add_safe_globals([scalar, np.dtype, type(np.dtype(np.float64))])


def latest_checkpoint(load_dir: Path) -> Path | None:
    """The newest ``step-*.ckpt`` in a nerfstudio_models folder, or None if there is none."""
    checkpoints = sorted(load_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    return checkpoints[-1] if checkpoints else None
