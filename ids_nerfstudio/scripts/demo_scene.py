"""``ids-demo-scene``: write the demo scene in nerfstudio's format, for a first edit without any download::

    ids-demo-scene demo --size 64 --views 24
    ns-train ids-edit-demo --data demo --prompt-src "a photo of a red ball on a grey floor" \
        --prompt-trg "a photo of a blue ball on a grey floor"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from ids_nerfstudio.demo.scene import write_demo_scene
from ids_nerfstudio.errors import UserError, exit_on_user_error


@dataclass
class DemoSceneArgs:
    """Write a procedural demo scene (a ball or a cube on a floor, cameras on a ring) in nerfstudio's format."""

    output: tyro.conf.Positional[Path]
    """Folder to write transforms.json and images/ into (must be empty or new)."""
    size: int = 128
    """Image width and height in pixels."""
    views: int = 48
    """Number of camera views on the ring."""
    object: Literal["ball", "cube"] = "ball"
    """The red object's shape: a ball, or a cube in its place ("a photo of a red cube on a grey floor")."""


def entrypoint() -> None:
    """Console script ``ids-demo-scene``."""
    args = tyro.cli(DemoSceneArgs, prog="ids-demo-scene")
    with exit_on_user_error("ids-demo-scene"):
        if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
            raise UserError(f"{args.output} exists and is not an empty folder")
        try:
            write_demo_scene(args.output, args.size, args.views, shape=args.object)
        except OSError as error:
            reason = error.strerror or error
            raise UserError(f"cannot write to {args.output} ({reason}); choose another folder") from error
    print(f"wrote {args.views} views of {args.size}x{args.size} to {args.output}")


if __name__ == "__main__":
    entrypoint()
