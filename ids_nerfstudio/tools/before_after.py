"""``ids-before-after``: two videos of the same camera path side by side, as an animated GIF or WebP.

Made for ``ns-render`` output: the scene before the edit (``ns-render ... --load-config RUN/reconstruction.yml``)
and after it (``--load-config RUN/config.yml``), rendered with the same flags. The frames are enlarged by a whole
factor (nearest neighbour) so that a 64 px render stays crisp, and titled; the file is written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import imageio.v2 as imageio
import numpy as np
import tyro
from PIL import Image

from ids_nerfstudio.errors import UserError, first_line
from ids_nerfstudio.files import write_atomic
from ids_nerfstudio.sheets import labelled_grid

FORMATS = {".gif": "GIF", ".webp": "WEBP"}


@dataclass
class BeforeAfterArgs:
    """Put two renders of one camera path side by side in an animated GIF or WebP."""

    before: Annotated[Path, tyro.conf.Positional]
    """Video of the scene before the edit (ns-render of the run's reconstruction.yml)."""
    after: Annotated[Path, tyro.conf.Positional]
    """Video of the edited scene along the same path (ns-render of the run's config.yml, the same flags)."""
    output: Path = Path("before-after.gif")
    """Animated .gif (renders on any repository page) or .webp."""
    titles: tuple[str, str] = ("reconstruction", "edit")
    """Titles over the two columns."""
    fps: float = 12.0
    """Frames per second of the animation."""
    min_side: int = 192
    """Frames are enlarged by a whole factor until their short side is at least this many pixels."""


def read_frames(path: Path, flag: str) -> list[Image.Image]:
    """Every frame of a video as RGB images; a missing or unreadable file is named with its flag."""
    if not path.is_file():
        raise UserError(f"{flag}: no file {path}: give the video ns-render wrote (--output-path)")
    try:
        arrays = imageio.mimread(path, memtest=False)
    except Exception as error:  # noqa: BLE001 - imageio's plugins raise many types
        raise UserError(f"{flag}: cannot read {path} as a video ({first_line(error, 80)})") from error
    if not arrays:
        raise UserError(f"{flag}: {path} has no frames")
    return [Image.fromarray(np.asarray(frame)[..., :3]).convert("RGB") for frame in arrays]


def before_after(args: BeforeAfterArgs) -> Path:
    """Write the animation; returns its path."""
    kind = FORMATS.get(args.output.suffix.lower())
    if kind is None:
        raise UserError(f"--output: {args.output} must end in .gif or .webp")
    if args.fps <= 0:
        raise UserError(f"--fps: {args.fps} must be positive")
    before, after = read_frames(args.before, "BEFORE"), read_frames(args.after, "AFTER")
    if len(before) != len(after) or before[0].size != after[0].size:
        raise UserError(f"AFTER: {len(after)} frames of {after[0].size} but BEFORE has {len(before)} of "
                        f"{before[0].size}: render both with the same ns-render flags")  # fmt: skip
    pairs = zip(before, after, strict=True)
    frames = [labelled_grid([[b, a]], list(args.titles), [""], min_tile=args.min_side) for b, a in pairs]
    duration = round(1000 / args.fps)

    def save(partial: Path) -> None:
        frames[0].save(partial, format=kind, save_all=True, append_images=frames[1:], duration=duration, loop=0)

    write_atomic(args.output, save)
    return args.output
