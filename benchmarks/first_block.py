"""What the README's first scene block gives, measured on its run (offline, CPU)::

    python .ci/readme_commands.py --full --keep /tmp/first   # the block at the README's sizes: time, peak memory
    python benchmarks/first_block.py /tmp/first/outputs/demo/ids-edit-demo/*/config.yml

Over the training views (those the scene was reconstructed from): the reconstruction's PSNR to the dataset images
(each view, the minimum is what the contact sheet's rows must clear), the views where the ball is named blue after
the edit, and the PSNR of everything outside the ball (its ray-traced mask grown by 2 px) between the edit and the
reconstruction it started from (the run's reconstruction.yml), mean and worst view.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_edits import ball_masks, training_renders  # noqa: E402

from ids_nerfstudio.demo.scoring import measure_colour_edit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the edit run's config.yml")
    parser.add_argument("--scene", type=Path, default=None, help="the demo scene folder (default: the run's data)")
    args = parser.parse_args()
    import yaml

    config = yaml.load(args.config.read_text(), Loader=yaml.Loader)
    if not Path(config.output_dir).is_absolute():  # nerfstudio's paths are relative to where ns-train ran
        os.chdir(args.config.resolve().parents[3 + len(Path(config.output_dir).parts)])
        args.config = args.config.resolve().relative_to(Path.cwd())
    scene = args.scene or Path(config.data)
    before, files, _, _ = training_renders(args.config.parent / "reconstruction.yml")
    after, _, _, _ = training_renders(args.config)
    images = [np.asarray(Image.open(f), dtype=np.float64)[..., :3] / 255 for f in files]
    fidelity = [-10 * np.log10(np.mean((b - i) ** 2)) for b, i in zip(before, images, strict=True)]
    results = [measure_colour_edit(b, a, m) for b, a, m in zip(before, after, ball_masks(scene, files), strict=True)]
    rest = [r.background_psnr for r in results]
    blue = sum(r.after == "blue" for r in results)
    print(f"training views: {len(files)}")
    print(f"reconstruction vs images: mean {np.mean(fidelity):.1f} dB, min {np.min(fidelity):.1f} dB")
    print(f"ball blue: {blue} of {len(results)} views ({100 * blue / len(results):.0f} %)")
    print(f"rest vs reconstruction: mean {np.mean(rest):.1f} dB, worst view {np.min(rest):.1f} dB")


if __name__ == "__main__":
    main()
