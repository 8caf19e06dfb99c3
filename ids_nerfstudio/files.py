"""Atomic file writes: a crash or a kill at any moment leaves either the old file (or none) or the whole new one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

IN_FLIGHT: set[Path] = set()
"""Temporary files being written now (``remove_partial_files`` deletes them before a process leaves at once)."""


def remove_partial_files() -> None:
    """Delete every temporary file of a write in progress (for an exit that skips the writers' own cleanup)."""
    for partial in list(IN_FLIGHT):
        partial.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[Path], object], *, staging: Path | None = None) -> None:
    """Write through ``write(temporary_path)``, fsync, then rename over ``path`` (and make the rename durable).

    The temporary file keeps ``path``'s suffix (Pillow picks the format from it) and lies in ``staging`` (default:
    ``path``'s folder), which must be on the same file system; checkpoints stage one folder up, since nerfstudio
    parses every file name in a checkpoint folder as a step. A write that fails (a full disk, an interrupt)
    removes the temporary file and re-raises: the old ``path`` stays as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent if staging is None else staging
    partial = staging / f".{path.stem}.partial{path.suffix}"
    IN_FLIGHT.add(partial)
    try:
        write(partial)
        with open(partial, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        IN_FLIGHT.discard(partial)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
