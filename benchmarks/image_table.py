"""Table 1 of the IDS paper for your images: LPIPS, CLIP score, background PSNR, time and memory per guidance.

    python benchmarks/image_table.py --images FOLDER --guidances ids dds cds pds [--model stable-diffusion-v1-5/...]

FOLDER holds images and a ``prompts.json`` mapping each image file name to ``[prompt_src, prompt_trg]``. With
real weights on a GPU this reproduces the paper's comparison; with no --images it edits two procedural images
on the tiny prior (offline smoke run: the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ids_nerfstudio.demo.world import look_at, render_view
from ids_nerfstudio.guidance import GUIDANCE_METHODS
from ids_nerfstudio.image_editor import ImageEditSettings, edit_image
from ids_nerfstudio.model_names import TINY


def demo_folder(folder: Path) -> Path:
    """Two demo-scene views and their prompts."""
    prompts = {}
    for k, angle in enumerate((0.3, 2.2)):
        eye = np.array([3 * np.cos(angle), 3 * np.sin(angle), 1.2])
        image = render_view(look_at(eye, np.array([0.0, 0.0, 0.25])), 96, 64, 80.0)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"view{k}.png")
        prompts[f"view{k}.png"] = ["a photo of colourful balls", "a photo of oranges"]
    (folder / "prompts.json").write_text(json.dumps(prompts))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="folder of images with prompts.json (default: demo, tiny prior)")
    parser.add_argument("--guidances", nargs="+", default=["ids", "dds", "cds", "pds"])
    parser.add_argument("--model", default=None, help="diffusion model (default SD 1.5; tiny without --images)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.images or demo_folder(Path(scratch))
        model = args.model or (TINY if args.images is None else None)
        steps = args.steps if args.images is not None or args.model else 3
        prompts = json.loads((folder / "prompts.json").read_text())
        print(f"{len(prompts)} images, {steps} steps, model {model or 'default'}")
        print("| method | LPIPS (lower better) | CLIP score | background PSNR | s / image | peak GPU MiB |")
        print("|---|---|---|---|---|---|")
        for guidance in args.guidances:
            rows = []
            for name, (prompt_src, prompt_trg) in prompts.items():
                settings = ImageEditSettings(
                    image=folder / name, prompt_trg=prompt_trg, prompt_src=prompt_src, guidance=guidance,
                    steps=steps, device=args.device, eval=True, model=model,
                    output=Path(scratch, "out", guidance, Path(name).stem),
                )  # fmt: skip
                output = edit_image(settings, GUIDANCE_METHODS[guidance].config())
                rows.append(json.loads((output / "metrics.json").read_text()))
            columns = ("lpips_to_source", "clip_score", "background_psnr", "seconds", "peak_gpu_memory_mib")
            means = {key: float(np.mean([row.get(key, np.nan) for row in rows])) for key in columns}
            formats = (".3f", ".3f", ".2f", ".1f", ".0f")
            cells = [f"{means[column]:{fmt}}" for column, fmt in zip(columns, formats, strict=True)]
            print(f"| {guidance} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
