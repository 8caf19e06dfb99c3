"""``ids-compare``: run several editing methods on one scene with the same settings, measure them, tabulate::

    ids-compare --data DATA --prompt-src "..." --prompt-trg "..." --methods ids-edit dds-edit cds-edit pds-edit

Arguments after ``--`` go to every ``ns-train`` call (e.g. ``-- --pipeline.prior.model tiny``); see
``tools/scene_compare.py`` for what is run and written.
"""

from __future__ import annotations

import sys

import tyro

from ids_nerfstudio.errors import exit_on_user_error
from ids_nerfstudio.tools.scene_compare import CompareArgs, compare


def entrypoint() -> None:
    """Console script ``ids-compare``."""
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = tyro.cli(CompareArgs, args=argv, prog="ids-compare")
    args.extra = extra
    with exit_on_user_error("ids-compare"):
        compare(args)


if __name__ == "__main__":
    entrypoint()
