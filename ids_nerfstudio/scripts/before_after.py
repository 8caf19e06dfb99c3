"""``ids-before-after``: the reconstruction and the edit side by side along one camera path, animated::

    ids-before-after before.mp4 after.mp4 --output before-after.gif

(``tools/before_after.py``; the videos come from ``ns-render`` of a run's reconstruction.yml and config.yml.)
"""

from __future__ import annotations

import tyro

from ids_nerfstudio.errors import exit_on_user_error
from ids_nerfstudio.tools.before_after import BeforeAfterArgs, before_after


def entrypoint() -> None:
    """Console script ``ids-before-after``: one-line errors for bad input."""
    args = tyro.cli(BeforeAfterArgs, prog="ids-before-after")
    with exit_on_user_error("ids-before-after"):
        output = before_after(args)
    print(f"wrote {output}")


if __name__ == "__main__":
    entrypoint()
