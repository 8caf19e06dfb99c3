"""``ids-edit-svg``: edit an SVG's paths and fill colours with any guidance (PDS's SVG editing, without diffvg).

The guidance is a subcommand, as in ``ids-edit-image`` (default ``pds``, with the official SVG editor's settings);
its own flags follow it::

    ids-edit-svg pds --svg icon.svg --prompt-src "a cat" --prompt-trg "a dog"
    ids-edit-svg ids --svg icon.svg --prompt-src "a cat" --prompt-trg "a dog" --style none --fpr-iters 3
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
from ids_nerfstudio.svg_editor import DEFAULT_GUIDANCE, SvgEditSettings, edit_svg, pds_svg_defaults


@dataclass
class SvgEditCommand(SvgEditSettings):
    """The flags of one guidance subcommand: the common ones and the guidance's own, unprefixed."""

    guidance_options: Annotated[GuidanceConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(
        default_factory=pds_svg_defaults
    )
    """Options of the chosen guidance."""


def subcommands() -> dict[str, SvgEditCommand]:
    """One subcommand per registered guidance: PDS with the official SVG editor's settings, the others their own."""
    return {
        name: SvgEditCommand(
            svg=tyro.MISSING,
            prompt_trg=tyro.MISSING,
            guidance=name,
            guidance_options=pds_svg_defaults() if name == "pds" else method.config(),
        )  # fmt: skip
        for name, method in GUIDANCE_METHODS.items()
    }


def main(argv: list[str] | None = None) -> Path:
    """Parse the command line and run the edit (raises UserError on bad input)."""
    choices = subcommands()
    descriptions = {name: method.summary for name, method in GUIDANCE_METHODS.items()}
    command = tyro.cli(
        tyro.extras.subcommand_type_from_defaults(choices, descriptions),
        args=sys.argv[1:] if argv is None else list(argv), default=choices[DEFAULT_GUIDANCE], prog="ids-edit-svg",
        description=SvgEditSettings.__doc__, config=(tyro.conf.CascadeSubcommandArgs,),
    )  # fmt: skip
    settings = SvgEditSettings(**{f.name: getattr(command, f.name) for f in dataclasses.fields(SvgEditSettings)})
    return edit_svg(settings, command.guidance_options)


def entrypoint() -> None:
    """Console script: one-line errors instead of tracebacks."""
    with exit_on_user_error("ids-edit-svg"):
        output = main()
    print(f"wrote {output / 'edit.svg'}, {output / 'edit.png'} and {output / 'strip.png'}")


if __name__ == "__main__":
    entrypoint()
