"""Patch-wise panoramas and videos on the demo prior: success, seams and consistency per method (one run, one seed).

    python benchmarks/panorama_video.py [--steps 100] [--out docs]

Panorama: the 192 x 64 demo panorama (three red balls) edited toward blue balls with 16 x 16 latent patches at
stride 4: CSD (SVGD), CSD without SVGD, CSD with the random-noise baseline, independent non-overlapping tiles (CSD
per tile alone), and DDS and IDS patch-wise (the 2D editor's step per patch). Seams: the mean |horizontal
gradient| of the edit's change (edit - source) on the columns where patches meet, over its mean on the columns
2-4 px beside them (1: no seam). Video: an 8-frame demo orbit as particles, CSD with and without SVGD and with the
random-noise baseline: frames named blue, background PSNR, consecutive-frame CLIP similarity (the demo CLIP) and
LPIPS (with a random AlexNet backbone: torchvision's weights cannot be downloaded here) and mean squared change
between frames.
Writes docs/panorama-demo.png, docs/video-demo.png and docs/video-demo.gif.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
from PIL import Image

from ids_nerfstudio.demo.scoring import dilate, masked_psnr, measure_colour_edit
from ids_nerfstudio.demo.wide import render_orbit, render_panorama
from ids_nerfstudio.eval import ClipEmbedder, LpipsDistance, consecutive_similarity
from ids_nerfstudio.guidance import CSDConfig, DDSConfig, IDSConfig
from ids_nerfstudio.image_editor import PACKAGED_DEFAULT_GRAD_SCALE
from ids_nerfstudio.panorama import PACKAGED_CSD_LR, optimise_panorama
from ids_nerfstudio.prior import StableDiffusionPriorConfig
from ids_nerfstudio.sheets import labelled_grid, stacked_with_titles
from ids_nerfstudio.video_editor import optimise_frames

BLUE = "a photo of a blue ball on a grey floor"
PATCH, STRIDE = (16, 16), 4
CSD_STEP = dict(lr=PACKAGED_CSD_LR, lr_decay=0.9, grad_scale=PATCH[0] * PATCH[1])
EDITOR_STEP = dict(lr=0.1, lr_decay=1.0, grad_scale=PACKAGED_DEFAULT_GRAD_SCALE)
PANORAMA_METHODS = {
    "CSD (SVGD)": (CSDConfig(), CSD_STEP, STRIDE),
    "CSD without SVGD": (CSDConfig(svgd=False), CSD_STEP, STRIDE),
    "CSD, random-noise baseline": (CSDConfig(baseline="noise"), CSD_STEP, STRIDE),
    "independent tiles (CSD per tile)": (CSDConfig(svgd=False), CSD_STEP, PATCH[1]),
    "DDS patch-wise": (DDSConfig(), EDITOR_STEP, STRIDE),
    "IDS patch-wise": (IDSConfig(), EDITOR_STEP, STRIDE),
}
VIDEO_METHODS = {
    "CSD (SVGD)": CSDConfig(),
    "CSD without SVGD": CSDConfig(svgd=False),
    "CSD, random-noise baseline": CSDConfig(baseline="noise"),
}


def seam_ratio(source: np.ndarray, edit: np.ndarray, columns: list[int]) -> float:
    """How much the edit's change jumps across the given columns compared with its neighbourhood: the mean
    |change[:, c] - change[:, c - 1]| over the border columns c, over the same mean on the columns 2 to 4 pixels to
    either side (change = edit - source, averaged over colour; 1: no seam)."""
    change = (edit - source).mean(-1)
    jump = np.abs(np.diff(change, axis=1))  # jump[:, c - 1] lies between columns c - 1 and c
    near = [c + d for c in columns for d in (-4, -3, -2, 2, 3, 4) if 1 <= c + d < change.shape[1]]
    return float(jump[:, [c - 1 for c in columns]].mean() / jump[:, [c - 1 for c in near]].mean())


def panorama(prior, steps: int) -> tuple[list[str], list[Image.Image], list[str]]:
    image, masks, caption = render_panorama()
    width = image.shape[1]
    with torch.no_grad():
        z_src = prior.encode_images(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    scale = prior.latent_downsample
    tile_borders = list(range(PATCH[1] * scale, width, PATCH[1] * scale))
    patch_borders = list(range(STRIDE * scale, width, STRIDE * scale))
    rows = ["| method | balls blue | floor PSNR (dB) | seam ratio, tile borders (64, 128 px) | seam ratio, every "
            "16 px | time (s) |", "|---|---|---|---|---|---|"]  # fmt: skip
    pictures, titles = [Image.fromarray((image * 255).round().astype(np.uint8))], ["source"]
    for name, (config, step, stride) in PANORAMA_METHODS.items():
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        z = optimise_panorama(config.setup(prior=prior), z_src, [BLUE], caption, steps=steps, size=PATCH,
                              stride=stride, per_step=6, generator=generator, **step)  # fmt: skip
        seconds = time.perf_counter() - started
        with torch.no_grad():
            edit = prior.decode_latents(z)[0].permute(1, 2, 0).numpy()
        blue = sum(measure_colour_edit(image, edit, mask).after == "blue" for mask in masks)
        floor = masked_psnr(image, edit, ~dilate(masks.any(0), 2))
        rows.append(f"| {name} | {blue}/3 | {floor:.1f} | {seam_ratio(image, edit, tile_borders):.2f} | "
                    f"{seam_ratio(image, edit, patch_borders):.2f} | {seconds:.0f} |")  # fmt: skip
        print(rows[-1], flush=True)
        pictures.append(Image.fromarray((edit * 255).round().astype(np.uint8)))
        titles.append(name)
    return rows, pictures, titles


def video(prior, steps: int) -> tuple[list[str], list[list[Image.Image]], list[str]]:
    frames, masks, caption = render_orbit(8)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        z_src = prior.encode_images(pixels)
    clip, lpips = ClipEmbedder("demo"), LpipsDistance("tiny")

    def consistency(images: torch.Tensor) -> tuple[float, float, float]:
        clip_sim = float(consecutive_similarity(clip.images(images)).mean())
        return clip_sim, float(lpips(images[:-1], images[1:]).mean()), float((images[1:] - images[:-1]).pow(2).mean())

    rows = ["| method | frames blue | background PSNR (dB) | consecutive CLIP | consecutive LPIPS (random AlexNet) | "
            "consecutive MSE x 1000 | time (s) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    source_clip, source_lpips, source_mse = consistency(pixels)
    rows.append(f"| source video | - | - | {source_clip:.4f} | {source_lpips:.4f} | {1000 * source_mse:.2f} | - |")
    strips, titles = [[Image.fromarray((f * 255).round().astype(np.uint8)) for f in frames]], ["source"]
    for name, config in VIDEO_METHODS.items():
        started = time.perf_counter()
        z = optimise_frames(config.setup(prior=prior), z_src, BLUE, caption, steps=steps,
                            generator=torch.Generator().manual_seed(0), **CSD_STEP)  # fmt: skip
        seconds = time.perf_counter() - started
        with torch.no_grad():
            edit = prior.decode_latents(z).float()
        edit_np = edit.permute(0, 2, 3, 1).numpy()
        results = [measure_colour_edit(a, b, m) for a, b, m in zip(frames, edit_np, masks, strict=True)]
        blue = sum(r.after == "blue" for r in results)
        clip_sim, lpips_value, mse = consistency(edit)
        rows.append(f"| {name} | {blue}/8 | {np.mean([r.background_psnr for r in results]):.1f} | {clip_sim:.4f} | "
                    f"{lpips_value:.4f} | {1000 * mse:.2f} | {seconds:.0f} |")  # fmt: skip
        print(rows[-1], flush=True)
        strips.append([Image.fromarray((f * 255).round().astype(np.uint8)) for f in edit_np])
        titles.append(name)
    return rows, strips, titles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="editing steps of every run")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder of the pictures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prior = StableDiffusionPriorConfig(model="demo", device="cpu").setup()
    args.out.mkdir(parents=True, exist_ok=True)

    rows, pictures, titles = panorama(prior, args.steps)
    enlarged = [p.resize((p.width * 3, p.height * 3), Image.NEAREST) for p in pictures]
    stacked_with_titles(enlarged, titles).save(args.out / "panorama-demo.png")
    print("\n".join(rows))

    rows, strips, titles = video(prior, args.steps)
    labelled_grid(strips, [str(i) for i in range(len(strips[0]))], titles, min_tile=96).save(
        args.out / "video-demo.png"
    )
    gif = [np.concatenate([np.asarray(strips[0][i]), np.asarray(strips[1][i])], axis=1) for i in range(len(strips[0]))]
    gif = [np.asarray(Image.fromarray(frame).resize((frame.shape[1] * 2, frame.shape[0] * 2), Image.NEAREST))
           for frame in gif + gif[::-1]]  # fmt: skip
    imageio.mimwrite(args.out / "video-demo.gif", gif, duration=0.15, loop=0)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
