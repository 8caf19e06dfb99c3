"""Checkpoints: atomic saves, and loads that skip an unreadable newest checkpoint.

nerfstudio writes ``step-N.ckpt`` in place, so a kill during a save leaves a truncated file that every later
load picks (it is the newest). Edit runs save through ``save_atomic`` (a temporary file outside the checkpoint
folder, fsync, rename), and the trainer (``--load-dir``) and ids-eval load ``newest_readable_checkpoint``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ids_nerfstudio.errors import first_line
from ids_nerfstudio.files import write_atomic


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


def checkpoint_step(path: Path) -> int:
    """The step in a nerfstudio checkpoint name ``step-000001234.ckpt``."""
    return int(path.stem.split("-")[1])


def latest_checkpoint(load_dir: Path) -> Path | None:
    """The newest ``step-*.ckpt`` in a nerfstudio_models folder, or None if there is none."""
    checkpoints = sorted(load_dir.glob("step-*.ckpt"), key=checkpoint_step)
    return checkpoints[-1] if checkpoints else None


class UnreadableCheckpoint(Exception):
    """A checkpoint ``torch.load`` cannot read; the message is one line (the reason)."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` of a nerfstudio checkpoint on the CPU; raises UnreadableCheckpoint with a one-line reason."""
    allow_nerfstudio_checkpoints()
    try:
        return torch.load(path, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - truncated zip, bad pickle, EOF: all mean "unreadable"
        raise UnreadableCheckpoint(first_line(error, 100)) from error


def newest_readable_checkpoint(load_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint ``torch.load`` reads, with its state; None if none is readable.

    An unreadable newer one (e.g. truncated by a kill during nerfstudio's in-place save) is skipped with a
    one-line warning on stderr. Nothing in the folder is changed.
    """
    for path in sorted(load_dir.glob("step-*.ckpt"), key=checkpoint_step, reverse=True):
        try:
            return path, read_checkpoint(path)
        except UnreadableCheckpoint as error:
            print(f"warning: skipping unreadable checkpoint {path} ({error})", file=sys.stderr, flush=True)
    return None


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` so that a kill at any moment leaves either the old folder or the whole file.

    The temporary file lies in the parent of the checkpoint folder (nerfstudio parses every file name in the
    folder as a step), on the same file system.
    """
    write_atomic(path, lambda partial: torch.save(state, partial), staging=path.parent.parent)


RECONSTRUCTION = "reconstruction.ckpt"
"""File beside a run's nerfstudio_models folder holding the pipeline state the edit started from (ids-eval compares
the edit with it: the reconstruction, not the dataset image, is what the edit should keep)."""


def reconstruction_path(checkpoint_dir: Path) -> Path:
    """Where the reconstruction of the run whose checkpoints are in ``checkpoint_dir`` is kept."""
    return checkpoint_dir.parent / RECONSTRUCTION
