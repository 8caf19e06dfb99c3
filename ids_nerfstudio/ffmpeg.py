"""An ``ffmpeg`` for ``ns-render`` on machines without one: the binary the ``imageio-ffmpeg`` package ships.

nerfstudio's render looks for ``ffmpeg`` on PATH (``shutil.which``, then mediapy writes the video through it) and
exits with "Could not find ffmpeg" where the system has none. ``ns-render`` builds the run's pipeline before that
check, so the edit pipeline calls ``ensure_ffmpeg_on_path`` there: when PATH has no ffmpeg, a link named ``ffmpeg``
to imageio-ffmpeg's binary is made in this package's cache folder and that folder goes on this process's PATH.
A system ffmpeg, where there is one, is left first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import imageio_ffmpeg


def cache_bin_dir() -> Path:
    """The folder holding the ``ffmpeg`` link (``$XDG_CACHE_HOME/ids_nerfstudio/bin``, default ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ids_nerfstudio" / "bin"


def ensure_ffmpeg_on_path() -> str | None:
    """The ffmpeg this process will use; adds imageio-ffmpeg's to PATH when there is none. None: none to be had."""
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    try:
        binary = Path(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError:  # no binary for this platform in the wheel
        return None
    folder = cache_bin_dir()
    link = folder / "ffmpeg"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not link.exists() or link.resolve() != binary.resolve():
            partial = folder / f".ffmpeg.{os.getpid()}"
            partial.unlink(missing_ok=True)
            partial.symlink_to(binary)
            os.replace(partial, link)  # atomic: a concurrent render sees the old link or the new one
    except OSError:
        return None
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    return shutil.which("ffmpeg")
