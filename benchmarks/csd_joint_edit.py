"""One joint CSD-Edit of 16 demo-scene views on the demo prior: how many iterations at which step size turn the ball
blue (the 2D probe behind the csd dataset update's defaults, docs/dataset-update.md)::

    python benchmarks/csd_joint_edit.py [--views 16] [--seed 0] [--out docs/csd-joint-edit.png]

The 16 views are the dataset images of the 24-view, 64 px demo scene (what the csd mode's first update starts from
after a reconstruction, up to the reconstruction's error), edited together as SVGD particles in the DDS form (the
demo prior is text-to-image) by the loop the engine runs (``video_editor.optimise_frames``), with several step
sizes: per latent element, CSD-Edit's own (``lr`` on the unscaled gradient, x 0.9 every 20 iterations) at lr 2.0
(official), 1.0, 0.5 (the packaged 2D editors'), 0.25, and the DDS/IDS 2D editor's (lr 0.1 x 2000 / 4096, no decay)
that the engine used before. Each row: views named blue with their blue share up by 0.2, and the PSNR of the rest
(outside the ray-traced ball masks) against the source images, after each listed iteration count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from helpers import ball_masks, blue_shift  # noqa: E402

from ids_nerfstudio.demo.scene import write_demo_scene  # noqa: E402
from ids_nerfstudio.demo.scoring import measure_colour_edit  # noqa: E402
from ids_nerfstudio.guidance.csd import CSDConfig  # noqa: E402
from ids_nerfstudio.images import load_image, to_tensor  # noqa: E402
from ids_nerfstudio.prior import StableDiffusionPriorConfig  # noqa: E402
from ids_nerfstudio.sheets import labelled_grid  # noqa: E402
from ids_nerfstudio.video_editor import optimise_frames  # noqa: E402

PROMPT_SRC, PROMPT_TRG = "a photo of a red ball on a grey floor", "a photo of a blue ball on a grey floor"
LATENT = 16 * 16
"""Latent elements per channel of a 64 px demo image (its VAE downsamples by 4)."""
SETTINGS = {  # name: (lr, gradient scale (x 1 / LATENT per element), decay every 20 iterations, checked iterations)
    "CSD-Edit lr 2.0 (official)": (2.0, LATENT, 0.9, (10, 20, 30, 50)),
    "CSD-Edit lr 1.0": (1.0, LATENT, 0.9, (10, 20, 30, 50)),
    "CSD-Edit lr 0.5 (packaged 2D)": (0.5, LATENT, 0.9, (10, 25, 50, 100)),
    "CSD-Edit lr 0.25": (0.25, LATENT, 0.9, (25, 50, 100)),
    "2D DDS editor's step (before)": (0.1, 2000 * LATENT / 4096, 1.0, (40, 100, 200)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmark-csd-joint-edit"))
    parser.add_argument("--out", type=Path, default=Path("docs/csd-joint-edit.png"))
    parser.add_argument("--picture-setting", default="CSD-Edit lr 2.0 (official)")
    parser.add_argument("--picture-iterations", type=int, default=20)
    args = parser.parse_args()
    scene = args.output / "scene"
    if not (scene / "transforms.json").is_file():
        write_demo_scene(scene, size=64, views=24)
    files = sorted((scene / "images").glob("*.png"))[: args.views]
    masks = ball_masks(scene, files)
    pixels = torch.cat([to_tensor(load_image(path)) for path in files])
    before = pixels.permute(0, 2, 3, 1).numpy()
    prior = StableDiffusionPriorConfig(model="demo", device="cpu").setup()
    guidance = CSDConfig().setup(prior=prior)
    with torch.no_grad():
        z_src = prior.encode_images(pixels).float()
    picture: list[np.ndarray] = []
    print(f"| setting | {' | '.join(['iterations: blue views, rest PSNR'] * 4)} |")
    for name, (lr, grad_scale, decay, checks) in SETTINGS.items():
        cells, started = [], time.perf_counter()

        def after_step(step: int, out, z: torch.Tensor, checks=checks, cells=cells, name=name) -> None:
            if step + 1 not in checks and not (name == args.picture_setting and step + 1 == args.picture_iterations):
                return
            with torch.no_grad():
                edited = prior.decode_latents(z.detach()).float().clamp(0, 1).permute(0, 2, 3, 1).numpy()
            if name == args.picture_setting and step + 1 == args.picture_iterations:
                picture.append(edited)
            if step + 1 in checks:
                results = [measure_colour_edit(b, a, m) for b, a, m in zip(before, edited, masks, strict=True)]
                blue = sum(r.after == "blue" and blue_shift(r) > 0.2 for r in results)
                rest = np.mean([r.background_psnr for r in results])
                cells.append(f"{step + 1}: {blue}/{len(files)}, {rest:.1f} dB")

        optimise_frames(guidance, z_src, PROMPT_TRG, PROMPT_SRC, steps=max(checks), lr=lr, grad_scale=grad_scale,
                        generator=torch.Generator().manual_seed(args.seed), lr_decay=decay,
                        after_step=after_step)  # fmt: skip
        print(f"| {name} | {' | '.join(cells)} | ({time.perf_counter() - started:.0f} s)", flush=True)
    if picture:

        def pil(array: np.ndarray) -> Image.Image:
            return Image.fromarray((array * 255).round().astype(np.uint8))

        picks = np.linspace(0, len(files) - 1, 6).round().astype(int)
        rows = [[pil(before[i]) for i in picks], [pil(picture[0][i]) for i in picks]]
        titles = [f"view {i}" for i in picks]
        labels = ["source", f"{args.picture_setting}, {args.picture_iterations} it."]
        labelled_grid(rows, titles, labels, min_tile=96).save(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
