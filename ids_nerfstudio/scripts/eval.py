"""``ids-eval``: measure an edited nerfstudio run with the metrics of the papers::

    ids-eval --load-config outputs/scene/ids-edit/<timestamp>/config.yml [--source-config SOURCE/config.yml]

Writes ``metrics.json``, ``metrics.md`` and ``contact_sheet.png`` into the run folder (``tools/scene_eval.py``).
"""

from __future__ import annotations

import tyro

from ids_nerfstudio.errors import exit_on_user_error
from ids_nerfstudio.tools.scene_eval import EvalArgs, evaluate


def entrypoint() -> None:
    """Console script ``ids-eval``: one-line errors for bad input."""
    args = tyro.cli(EvalArgs, prog="ids-eval")
    with exit_on_user_error("ids-eval"):
        run_dir = evaluate(args)
    print(f"wrote {run_dir / 'metrics.json'}, metrics.md and contact_sheet.png")


if __name__ == "__main__":
    entrypoint()
