"""``ids-edit-video``: edit a video with any guidance, its frames as particles (CSD's video editing).

The guidance is a subcommand (default ``csd``), as in ``ids-edit-image``::

    ids-edit-video csd --video clip.mp4 --prompt-trg "turn his shirt yellow"
    ids-edit-video dds --frames frames/ --prompt-src "a photo of a red ball" --prompt-trg "a photo of a blue ball"
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from ids_nerfstudio.errors import exit_on_user_error
from ids_nerfstudio.guidance import GUIDANCE_METHODS, GuidanceConfig
from ids_nerfstudio.scripts.edit_image import guidance_flag_as_subcommand
from ids_nerfstudio.video_editor import VideoEditSettings, edit_video

DEFAULT_VIDEO_GUIDANCE = "csd"


@dataclass
class VideoEditCommand(VideoEditSettings):
    """The flags of one guidance subcommand: the common ones and the guidance's own, unprefixed."""

    guidance_options: Annotated[GuidanceConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(
        default_factory=GUIDANCE_METHODS[DEFAULT_VIDEO_GUIDANCE].config
    )
    """Options of the chosen guidance."""


def main(argv: list[str] | None = None) -> Path:
    """Parse the command line and run the edit (raises UserError on bad input)."""
    argv = guidance_flag_as_subcommand(sys.argv[1:] if argv is None else list(argv))
    choices = {
        name: VideoEditCommand(prompt_trg=tyro.MISSING, guidance=name, guidance_options=method.config())
        for name, method in GUIDANCE_METHODS.items()
    }
    descriptions = {name: method.summary for name, method in GUIDANCE_METHODS.items()}
    command = tyro.cli(
        tyro.extras.subcommand_type_from_defaults(choices, descriptions),
        args=argv, default=choices[DEFAULT_VIDEO_GUIDANCE], prog="ids-edit-video",
        description=VideoEditSettings.__doc__, config=(tyro.conf.CascadeSubcommandArgs,),
    )  # fmt: skip
    settings = VideoEditSettings(**{f.name: getattr(command, f.name) for f in dataclasses.fields(VideoEditSettings)})
    return edit_video(settings, command.guidance_options)


def entrypoint() -> None:
    """Console script: one-line errors instead of tracebacks."""
    with exit_on_user_error("ids-edit-video"):
        output = main()
    print(f"wrote {output / 'edit.mp4'} and {output / 'grid.png'}")


if __name__ == "__main__":
    entrypoint()
