"""Relevance that follows the words: noise-difference vs word-attention vs combined masks (offline, single thread)::

    python benchmarks/relevance.py [--seeds 0 1] [--views 16] [--drawn 24] [--steps 200] [--guidance ids]
                                   [--picture docs/relevance-masks.png]

(a) mask IoU with the named object at latent resolution (thresholded relevance, before dilation and feather): on
    seeded demo views (ray-traced masks) and on two-object images drawn with PIL (ids_nerfstudio/demo/flat.py).
(b) 2D edits with each mask (as ids-edit-image runs them), pasted into the source and not: the named object
    recoloured (its colour named as the target), the other object kept (PSNR to the source inside its mask), and the
    background (outside both objects grown by 2 px) PSNR.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from PIL import Image

from ids_nerfstudio.demo import render_sample
from ids_nerfstudio.demo.flat import draw, flat_cases
from ids_nerfstudio.demo.scene import ring_poses
from ids_nerfstudio.demo.scoring import dilate, masked_psnr, object_colour, recolour_cases, relevance_overlaps
from ids_nerfstudio.demo.world import render_with_masks
from ids_nerfstudio.guidance import GUIDANCE_METHODS
from ids_nerfstudio.guidance.relevance import (
    RELEVANCE_SOURCES,
    MaskConfig,
    auto_mask,
    binary_mask,
    paste_into_source,
    relevance,
)
from ids_nerfstudio.image_editor import PACKAGED_DEFAULT_GRAD_SCALE, optimise_latent
from ids_nerfstudio.prior import StableDiffusionPriorConfig


def demo_set(seeds: list[int], views: int):
    """Seeded demo views: images (N, 3, H, W), masks (N, objects, H, W) padded, named index, captions."""
    cases = [case for seed in seeds for case in recolour_cases(views, seed)]
    rendered = [render_sample(case.sample) for case in cases]
    images = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image, _ in rendered])
    masks = [np.asarray(m) for _, m in rendered]
    targets, sources = [c.target_caption for c in cases], [c.sample.caption for c in cases]
    colours = [c.colour for c in cases]
    return images, masks, [c.index for c in cases], targets, sources, colours


def drawn_set(count: int):
    cases = flat_cases(count)
    drawn = [draw(case) for case in cases]
    images = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image, _ in drawn])
    targets, sources = [c.caption(recoloured=True) for c in cases], [c.caption() for c in cases]
    return images, [m for _, m in drawn], [c.index for c in cases], targets, sources, [c.colour for c in cases]


def ious(prior, data, config: MaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per image: IoU with the named object, share of the other object in the mask (nan without one)."""
    images, masks, index, targets, sources, _ = data
    named = torch.stack([torch.from_numpy(m[i]).float() for m, i in zip(masks, index, strict=True)])[:, None]
    other = torch.stack([torch.from_numpy(m[1 - i]).float() if len(m) > 1 else torch.zeros(images.shape[-2:])
                         for m, i in zip(masks, index, strict=True)])[:, None]  # fmt: skip
    return relevance_overlaps(prior, images, named, other, targets, sources, config)


def measure(data, edited: torch.Tensor) -> dict[str, float]:
    """Named object recoloured (its colour named as the target), other object's PSNR inside its mask (kept: >= 30
    dB), background PSNR outside both objects grown by 2 px."""
    images, masks, index, _, _, colours = data
    recoloured, kept, background, other_psnr = [], [], [], []
    for source, edit, object_masks, i, colour in zip(images, edited, masks, index, colours, strict=True):
        source, edit = source.permute(1, 2, 0).numpy(), edit.permute(1, 2, 0).numpy()
        recoloured.append(object_colour(edit, object_masks[i]) == colour)
        if len(object_masks) > 1:
            other_psnr.append(min(masked_psnr(source, edit, object_masks[1 - i]), 60.0))  # pasted: inf -> 60
            kept.append(other_psnr[-1] >= 30)
        background.append(min(masked_psnr(source, edit, ~dilate(object_masks.any(0), 2)), 60.0))
    nan = float("nan")
    return {"recoloured": 100 * np.mean(recoloured), "kept": 100 * np.mean(kept) if kept else nan,
            "other": np.mean(other_psnr) if other_psnr else nan, "background": np.mean(background)}  # fmt: skip


def edits(prior, guidance, data, config: MaskConfig | None, steps: int) -> dict[str, dict[str, float]]:
    """One edit of every image with the mask of ``config`` (None: no mask), measured pasted into the source through
    the mask and not."""
    images, _, _, targets, sources, _ = data
    with torch.no_grad():
        z_src = prior.encode_images(images)
    mask = None if config is None else auto_mask(prior, z_src, targets, sources, config)
    z = optimise_latent(guidance, z_src, targets, sources, steps=steps, lr=0.1, grad_scale=PACKAGED_DEFAULT_GRAD_SCALE,
                        generator=torch.Generator().manual_seed(0), mask=mask)  # fmt: skip
    with torch.no_grad():
        edited = prior.decode_latents(z).float()
    if mask is None:
        return {"off": measure(data, edited)}
    return {config.source: measure(data, paste_into_source(edited, images, mask)),
            f"{config.source}, not pasted": measure(data, edited)}  # fmt: skip


def scene_set(views: int = 24):
    """The README's demo scene (64 px, ``views`` cameras on a ring, one red ball turned blue), its ray-traced masks."""
    cases = [render_with_masks(pose, 64, 64, 1.2 * 64) for pose in ring_poses(views)]  # write_demo_scene's
    images = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image, _ in cases])
    src, trg = "a photo of a red ball on a grey floor", "a photo of a blue ball on a grey floor"
    return images, [np.asarray(m) for _, m in cases], [0] * views, [trg] * views, [src] * views, ["blue"] * views


SIZE_BINS = (0, 150, 300, 10_000)
"""Object areas (view pixels of 64 x 64) by which IoU is also reported."""


def iou_table(prior, sets: dict, seeds: list[int], thresholds: list[float]) -> None:
    """IoU at the images' pixels of the thresholded relevance (before growth and feather) with the named object, per
    set and per object size, and the other object's share in the mask; each source's map is computed once."""
    counts = ", ".join(f"{name} {len(data[0])}" for name, data in sets.items())
    print(f"(a) mask IoU with the named object at the view's pixels ({counts}; demo views of seeds {seeds})")
    bins = [f"{lo}-{hi} px" if hi < SIZE_BINS[-1] else f">= {lo} px" for lo, hi in itertools.pairwise(SIZE_BINS)]
    print("| source | threshold | " + " | ".join(f"{name} (other in mask)" for name in sets) + " | all views by "
          "object area: " + ", ".join(bins) + " | band outside the object (px, mean) |")  # fmt: skip
    print("|---|---|" + "---|" * len(sets) + "---|---|")
    for source in RELEVANCE_SOURCES:
        maps = {}
        for name, (images, _, _, targets, sources, _) in sets.items():
            with torch.no_grad():
                maps[name] = relevance(prior, prior.encode_images(images), targets, sources, MaskConfig(source=source))
        for threshold in [None, *thresholds]:
            config = MaskConfig(source=source, threshold=threshold)
            cells, every, areas, band = [], [], [], []
            for name, (images, masks, index, *_) in sets.items():
                found = binary_mask(maps[name], config, images.shape[-2:])[:, 0].numpy() > 0.5
                named = np.stack([m[i] for m, i in zip(masks, index, strict=True)])
                iou = (found & named).sum((1, 2)) / np.maximum((found | named).sum((1, 2)), 1)
                others = [(f & m[1 - i]).sum() / m[1 - i].sum() for f, m, i in zip(found, masks, index, strict=True)
                          if len(m) > 1]  # fmt: skip
                other = f" ({100 * np.mean(others):.0f} %)" if others else ""
                cells.append(f"{iou.mean():.2f}{other}")
                every += iou.tolist()
                areas += named.sum((1, 2)).tolist()
                band += (found & ~named).sum((1, 2)).tolist()
            every, areas = np.array(every), np.array(areas)
            by_size = [every[(areas >= lo) & (areas < hi)] for lo, hi in itertools.pairwise(SIZE_BINS)]
            sized = ", ".join(f"{b.mean():.2f} ({len(b)})" if len(b) else "-" for b in by_size)
            print(f"| {source} | {config.mask_threshold:g} | {' | '.join(cells)} | {sized} | {np.mean(band):.0f} |",
                  flush=True)  # fmt: skip


def picture(prior, sets: dict, path: str, rows: int = 6) -> None:
    """Rows of: image | named object | noise | words | combined masks (thresholded at the image's pixels), first 2 demo
    views with two objects and the first ``rows`` - 2 drawn images."""
    demo = sets["demo views"]
    two = [k for k, m in enumerate(demo[1]) if len(m) == 2][:2]
    chosen = [(demo, k) for k in two] + [(sets["drawn two-object"], k) for k in range(rows - len(two))]
    strips = []
    for data, k in chosen:
        images, masks, index, targets, sources, _ = data
        image = images[k : k + 1]
        with torch.no_grad():
            z_src = prior.encode_images(image)
        tiles = [image[0], torch.from_numpy(masks[k][index[k]]).float().expand(3, -1, -1)]
        for source in RELEVANCE_SOURCES:
            config = MaskConfig(source=source)
            relevant = relevance(prior, z_src, targets[k : k + 1], sources[k : k + 1], config)
            tiles.append(binary_mask(relevant, config, image.shape[-2:])[0].expand(3, -1, -1))
        strips.append(torch.cat(tiles, dim=2))
    grid = (torch.cat(strips, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def edit_table(prior, sets: dict, guidance_name: str, steps: int) -> None:
    guidance = GUIDANCE_METHODS[guidance_name].config().setup(prior=prior)
    print(f"(b) 2D edits ({guidance_name}, {steps} steps, lr 0.1, {PACKAGED_DEFAULT_GRAD_SCALE:g}/(h w))")
    print("| images | mask | named recoloured | other kept >= 30 dB | other object PSNR (dB) | background PSNR (dB) | "
          "s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, data in sets.items():
        for source in ("off", *RELEVANCE_SOURCES):
            started = time.perf_counter()
            rows = edits(prior, guidance, data, None if source == "off" else MaskConfig(source=source), steps)
            seconds = time.perf_counter() - started
            for label, row in rows.items():
                print(
                    f"| {name} | {label} | {row['recoloured']:.0f} % | {row['kept']:.0f} % | {row['other']:.1f} | "
                    f"{row['background']:.1f} | {seconds:.0f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--views", type=int, default=16, help="demo views per seed")
    parser.add_argument("--drawn", type=int, default=24, help="drawn two-object images")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per 2D edit")
    parser.add_argument("--guidance", default="ids", choices=list(GUIDANCE_METHODS))
    parser.add_argument("--thresholds", type=float, nargs="*", default=[], help="(a): also these thresholds")
    parser.add_argument("--no-iou", action="store_true", help="skip (a)")
    parser.add_argument("--no-edits", action="store_true", help="skip (b)")
    parser.add_argument("--picture", default=None, help="also write a PNG: images and their masks, one row each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prior = StableDiffusionPriorConfig(model="demo", device="cpu").setup()
    sets = {"demo views": demo_set(args.seeds, args.views), "drawn two-object": drawn_set(args.drawn)}
    if not args.no_iou:
        iou_sets = {"demo scene": scene_set(), **sets}
    if args.picture:
        picture(prior, sets, args.picture)
    if not args.no_iou:
        iou_table(prior, iou_sets, args.seeds, args.thresholds)
    if not args.no_edits:
        edit_table(prior, sets, args.guidance, args.steps)


if __name__ == "__main__":
    main()
