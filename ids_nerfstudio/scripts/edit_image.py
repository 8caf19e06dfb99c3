"""``ids-edit-image``: edit one image with any guidance (the 2D counterpart of ``ns-train ids-edit``).

The guidance is a subcommand, as the method of ``ns-train`` (default ``ids``); its own flags follow it::

    ids-edit-image ids --image cat.png --prompt-src "a photo of a cat" --prompt-trg "a photo of a pig"
    ids-edit-image pds --image cat.png --prompt-src "..." --prompt-trg "..." --posterior exact

The older spelling ``--guidance NAME`` still works.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from ids_nerfstudio.errors import UserError, exit_on_user_error
from ids_nerfstudio.guidance import GUIDANCE_METHODS, GuidanceConfig
from ids_nerfstudio.image_editor import DEFAULT_GUIDANCE, ImageEditSettings, edit_image


@dataclass
class ImageEditCommand(ImageEditSettings):
    """The flags of one guidance subcommand: the common ones and the guidance's own, unprefixed."""

    guidance_options: Annotated[GuidanceConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(
        default_factory=GUIDANCE_METHODS[DEFAULT_GUIDANCE].config
    )
    """Options of the chosen guidance."""


def subcommands() -> dict[str, ImageEditCommand]:
    """One subcommand per registered guidance, with that guidance's defaults."""
    return {
        name: ImageEditCommand(
            image=tyro.MISSING, prompt_trg=tyro.MISSING, guidance=name, guidance_options=method.config()
        )
        for name, method in GUIDANCE_METHODS.items()
    }


def guidance_flag_as_subcommand(argv: list[str]) -> list[str]:
    """The older ``--guidance NAME`` spelling: NAME becomes the subcommand (which goes first)."""
    for i, arg in enumerate(argv):
        if arg == "--guidance" or arg.startswith("--guidance="):
            name = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            if name not in GUIDANCE_METHODS:
                raise UserError(f"--guidance: unknown guidance {name!r}; choose one of {', '.join(GUIDANCE_METHODS)}")
            return [name, *argv[:i], *argv[i + (1 if "=" in arg else 2) :]]
    return argv


def main(argv: list[str] | None = None) -> Path:
    """Parse the command line and run the edit (raises UserError on bad input)."""
    argv = guidance_flag_as_subcommand(sys.argv[1:] if argv is None else list(argv))
    choices = subcommands()
    descriptions = {name: method.summary for name, method in GUIDANCE_METHODS.items()}
    command = tyro.cli(
        tyro.extras.subcommand_type_from_defaults(choices, descriptions),
        args=argv, default=choices[DEFAULT_GUIDANCE], prog="ids-edit-image", description=ImageEditSettings.__doc__,
        config=(tyro.conf.CascadeSubcommandArgs,),  # the default subcommand (ids) takes its flags without its name
    )  # fmt: skip
    settings = ImageEditSettings(**{f.name: getattr(command, f.name) for f in dataclasses.fields(ImageEditSettings)})
    return edit_image(settings, command.guidance_options)


def entrypoint() -> None:
    """Console script: one-line errors instead of tracebacks."""
    with exit_on_user_error("ids-edit-image"):
        output = main()
    print(f"wrote {output / 'edit.png'} and {output / 'strip.png'}")


if __name__ == "__main__":
    entrypoint()
