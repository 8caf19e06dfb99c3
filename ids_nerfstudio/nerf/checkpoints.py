"""Checkpoint helpers shared by the trainer and the render/viewer path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def allow_nerfstudio_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read numpy float64 scalars (nerfstudio's saved learning rates).

    nerfstudio 1.1.5 saves its schedulers' learning rates as numpy float64, which torch >= 2.6's default
    ``weights_only=True`` rejects (nerfstudio issue 3683). Called explicitly right before a checkpoint is loaded:
    by the trainer (``--load-dir``), the edit pipeline (``ns-render``, ``ns-viewer``, ``ids-eval``) and ids-eval's
    stock nerfacto source run. It extends torch's process-wide allow-list; nothing is allow-listed at import.
    """
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar
    torch.serialization.add_safe_globals([scalar, np.dtype, type(np.dtype(np.float64))])


def latest_checkpoint(load_dir: Path) -> Path | None:
    """The newest ``step-*.ckpt`` in a nerfstudio_models folder, or None if there is none."""
    checkpoints = sorted(load_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    return checkpoints[-1] if checkpoints else None
