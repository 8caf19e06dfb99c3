"""The SVG editor's behaviour test as a table: the drawn red ball edited to blue on the demo prior, by guidance,
mask and point learning rate, with the test's measures (``tests/test_svg.py``: ``run_ball_edit``,
``ball_edit_measures``), the random-UNet demo prior as the control.

    python benchmarks/svg_ball_edit.py

One thread, CPU; a few minutes. docs/svg-editing.md quotes its table.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import write_random_unet_demo  # noqa: E402
from test_svg import ball_edit_measures, run_ball_edit  # noqa: E402

RUNS = [
    ("pds", "demo", "auto", 0.1),
    ("dds", "demo", "auto", 0.1),
    ("ids", "demo", "auto", 0.1),
    ("pds", "demo", "off", 0.1),
    ("pds", "control", "auto", 0.1),
    ("pds", "demo", "auto", 0.4),
    ("pds", "demo", "auto", 0.8),
]
"""(guidance, prior, --mask.source, --point-lr) of each row; the first is the behaviour test's run."""


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as folder:
        control = write_random_unet_demo(Path(folder, "demo-random-unet"))
        print("| guidance | prior | mask | --point-lr | ball | outside the ball | other fills median / max | point "
              "move max / mean, all points | ball points' mean move | s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        for i, (guidance, prior, mask, point_lr) in enumerate(RUNS):
            run = Path(folder, str(i))
            run.mkdir()
            started = time.perf_counter()
            source, edit, _ = run_ball_edit(str(control) if prior == "control" else prior, run, guidance, mask,
                                            point_lr=point_lr)  # fmt: skip
            seconds = time.perf_counter() - started
            m = ball_edit_measures(source, edit)
            print(
                f"| {guidance} | {prior} | {mask} | {point_lr} | {m['ball']} | {m['outside_ball_mean_abs']:.4f} | "
                f"{m['rest_fill_median']:.2f} / {m['rest_fill_max']:.2f} | {m['moved_max_px']:.2f} / "
                f"{m['moved_mean_px']:.2f} px | {m['ball_moved_mean_px']:.2f} px | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
