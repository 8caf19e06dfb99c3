"""Relevance that follows the words: noise-difference vs word-attention vs combined masks (offline, single thread)::

    python benchmarks/relevance.py [--seeds 0 1] [--views 16] [--drawn 24] [--steps 200] [--lr 0.1]
                                   [--guidance ids dds] [--masks off noise words combined@0.5 true]
                                   [--picture docs/relevance-masks.png]

(a) mask IoU with the named object at the images' pixels (thresholded relevance, before growth and feather): on the
    README's demo scene, seeded demo views (ray-traced masks) and two-object images drawn with PIL
    (ids_nerfstudio/demo/flat.py).
(b) 2D edits with each mask (as ids-edit-image runs them; "true": the named object's true mask given, the upper
    bound of what a mask can do), measured on the decoder's whole output and pasted into the source through the
    view-pixel mask or the guidance's latent mask: the named object recoloured (its colour named as the target),
    the other object kept (PSNR to the source inside its mask), the background (outside both objects grown by 2 px)
    PSNR, and per image why it fails the issue's target.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ids_nerfstudio.demo import render_sample
from ids_nerfstudio.demo.flat import draw, flat_cases
from ids_nerfstudio.demo.scene import ring_poses
from ids_nerfstudio.demo.scoring import (
    TRUE_MASK,
    dilate,
    masked_psnr,
    object_colour,
    recolour_cases,
    relevance_overlaps,
)
from ids_nerfstudio.demo.world import render_with_masks
from ids_nerfstudio.guidance import GUIDANCE_METHODS
from ids_nerfstudio.guidance.relevance import (
    RELEVANCE_SOURCES,
    MaskConfig,
    binary_mask,
    given_mask,
    paste_into_source,
    paste_weight,
    relevance,
    view_mask,
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


def measure(data, edited: torch.Tensor, mask: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Per image: the named object recoloured (its colour named as the target), the other object's PSNR inside its
    mask (kept: >= 30 dB; pasted, infinite PSNR counted as 60), the background PSNR outside both objects grown by
    2 px, and the share of the other object's pixels that ``mask`` (image pixels, the guidance's or the paste's)
    reaches (>= 0.5)."""
    images, masks, index, _, _, colours = data
    rows: dict[str, list] = {"recoloured": [], "other": [], "background": [], "other_in_mask": []}
    for k, (source, edit, object_masks, i, colour) in enumerate(zip(images, edited, masks, index, colours,
                                                                    strict=True)):  # fmt: skip
        source, edit = source.permute(1, 2, 0).numpy(), edit.permute(1, 2, 0).numpy()
        rows["recoloured"].append(object_colour(edit, object_masks[i]) == colour)
        other = object_masks[1 - i] if len(object_masks) > 1 else None
        rows["other"].append(np.nan if other is None else min(masked_psnr(source, edit, other), 60.0))
        inside = np.nan if other is None or mask is None else float((mask[k, 0].numpy() >= 0.5)[other].mean())
        rows["other_in_mask"].append(0.0 if mask is None and other is not None else inside)
        rows["background"].append(min(masked_psnr(source, edit, ~dilate(object_masks.any(0), 2)), 60.0))
    return {key: np.array(value, dtype=float) for key, value in rows.items()}


def reasons(row: dict[str, np.ndarray]) -> str:
    """Per image, why it fails the target: N the named object not recoloured, M the other object changed and inside
    the mask (>= 10 % of its pixels), O the other object changed outside the mask; . where it meets it."""
    codes = []
    for recoloured, other, inside in zip(row["recoloured"], row["other"], row["other_in_mask"], strict=True):
        code = "" if recoloured else "N"
        if not np.isnan(other) and other < 30:
            code += "M" if inside >= 0.1 else "O"
        codes.append(code or ".")
    return " ".join(codes)


MaskChoice = tuple[str, float | None]
"""A benchmarked mask: off, a relevance source (noise, words, combined) with its threshold (None: the source's own),
or true (the named object's true mask, as a given mask)."""


def parse_mask(text: str) -> MaskChoice:
    """``source`` or ``source@threshold``."""
    source, _, threshold = text.partition("@")
    return source, float(threshold) if threshold else None


def edits(
    prior, guidance, data, choice: MaskChoice, steps: int, lr: float, strips: str | None = None,
    paste_dilations: tuple[int, ...] = (),
) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """One edit of every image with the mask ``choice`` (as ids-edit-image runs it), measured: the decoder's whole
    output, pasted into the source through the guidance's latent mask (the editor's paste before issue 32's 2D
    change), and through the view-pixel mask grown by ``view_dilation`` (and each of ``paste_dilations``) and
    feathered by ``view_feather``. With
    ``strips``, a PNG there: the sources, the edits (pasted through the view-pixel mask) and that mask, one row each."""
    images, masks, index, targets, sources, _ = data
    source, threshold = choice
    with torch.no_grad():
        z_src = prior.encode_images(images)
    config = MaskConfig(source="off" if source == "off" else "auto", threshold=threshold)
    if source == TRUE_MASK:
        view = torch.stack([torch.from_numpy(m[i]).float() for m, i in zip(masks, index, strict=True)])[:, None]
    elif source != "off":
        config = MaskConfig(source=source, threshold=threshold)
        view = view_mask(prior, z_src, targets, sources, config, images.shape[-2:], images)
    latent = None if source == "off" else given_mask(view, z_src, config)
    z = optimise_latent(guidance, z_src, targets, sources, steps=steps, lr=lr, grad_scale=PACKAGED_DEFAULT_GRAD_SCALE,
                        generator=torch.Generator().manual_seed(0), mask=latent)  # fmt: skip
    with torch.no_grad():
        edited = prior.decode_latents(z).float()
    paste = paste_weight(view, config) if latent is not None else None
    if strips is not None:
        rows = [images, edited] if paste is None else [images, paste_into_source(edited, images, paste), paste]
        grid = torch.cat([torch.cat(list(row.expand(-1, 3, -1, -1)), dim=2) for row in rows], dim=1)
        Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(strips)
    if paste is None:
        return {"off": measure(data, edited, None)}
    enlarged = F.interpolate(latent, size=images.shape[-2:], mode="bilinear", align_corners=False)
    rows = {"view-pixel paste": measure(data, paste_into_source(edited, images, paste), paste)}
    for grow in paste_dilations:
        weight = paste_weight(view, replace(config, view_dilation=grow))
        rows[f"view-pixel paste, grown {grow} px"] = measure(data, paste_into_source(edited, images, weight), weight)
    rows["latent paste"] = measure(data, paste_into_source(edited, images, latent), enlarged)
    rows["not pasted"] = measure(data, edited, enlarged)
    return rows


def scene_set(views: int = 24):
    """The README's demo scene (64 px, ``views`` cameras on a ring, one red ball turned blue), its ray-traced masks."""
    cases = [render_with_masks(pose, 64, 64, 1.2 * 64) for pose in ring_poses(views)]  # write_demo_scene's
    images = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image, _ in cases])
    src, trg = "a photo of a red ball on a grey floor", "a photo of a blue ball on a grey floor"
    return images, [np.asarray(m) for _, m in cases], [0] * views, [trg] * views, [src] * views, ["blue"] * views


SIZE_BINS = (0, 150, 300, 10_000)
"""Object areas (view pixels of 64 x 64) by which IoU is also reported."""


def iou_table(prior, sets: dict, seeds: list[int], thresholds: list[float], edge_sigmas: list[float]) -> None:
    """IoU at the images' pixels of the thresholded relevance (before growth and feather) with the named object, per
    set and per object size, and the other object's share in the mask; each source's map is computed once."""
    counts = ", ".join(f"{name} {len(data[0])}" for name, data in sets.items())
    print(f"(a) mask IoU with the named object at the view's pixels ({counts}; demo views of seeds {seeds})")
    bins = [f"{lo}-{hi} px" if hi < SIZE_BINS[-1] else f">= {lo} px" for lo, hi in itertools.pairwise(SIZE_BINS)]
    print("| source | threshold | edge sigma | " + " | ".join(f"{name} (other in mask)" for name in sets)
          + " | all views by object area: " + ", ".join(bins) + " | band outside the object (px, mean) |")  # fmt: skip
    print("|---|---|---|" + "---|" * len(sets) + "---|---|")
    for source in RELEVANCE_SOURCES:
        maps = {}
        for name, (images, _, _, targets, sources, _) in sets.items():
            with torch.no_grad():
                maps[name] = relevance(prior, prior.encode_images(images), targets, sources, MaskConfig(source=source))
        for threshold, edge_sigma in itertools.product([None, *thresholds], edge_sigmas):
            config = MaskConfig(source=source, threshold=threshold, edge_sigma=edge_sigma)
            cells, every, areas, band = [], [], [], []
            for name, (images, masks, index, *_) in sets.items():
                found = binary_mask(maps[name], config, images.shape[-2:], images)[:, 0].numpy() > 0.5
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
            print(f"| {source} | {config.mask_threshold:g} | {edge_sigma:g} | {' | '.join(cells)} | {sized} "
                  f"| {np.mean(band):.0f} |", flush=True)  # fmt: skip


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
            tiles.append(binary_mask(relevant, config, image.shape[-2:], image)[0].expand(3, -1, -1))
        strips.append(torch.cat(tiles, dim=2))
    grid = (torch.cat(strips, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def edit_table(
    prior, sets: dict, guidance_name: str, steps: int, lr: float, choices: list[MaskChoice], strips: str | None,
    paste_dilations: tuple[int, ...] = (),
) -> None:  # fmt: skip
    guidance = GUIDANCE_METHODS[guidance_name].config().setup(prior=prior)
    print(f"(b) 2D edits ({guidance_name}, {steps} steps, lr {lr:g}, {PACKAGED_DEFAULT_GRAD_SCALE:g}/(h w))")
    print("| images | mask | paste | named recoloured | other kept >= 30 dB | both | other object PSNR (dB) "
          "| background PSNR (dB) | failures: N / M / O | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    failures = []
    for name, data in sets.items():
        for source, threshold in choices:
            started = time.perf_counter()
            label = source if threshold is None or source in ("off", TRUE_MASK) else f"{source} {threshold:g}"
            strip = (
                None if strips is None else f"{strips}/{guidance_name}-{name.split()[0]}-{label.replace(' ', '')}.png"
            )
            rows = edits(prior, guidance, data, (source, threshold), steps, lr, strip, paste_dilations)
            seconds = time.perf_counter() - started
            for paste, row in rows.items():
                two = ~np.isnan(row["other"])
                kept = row["other"][two] >= 30
                both = row["recoloured"][two].astype(bool) & kept
                codes = reasons(row).split()
                counts = " / ".join(str(sum(c in code for code in codes)) for c in "NMO")
                other = "- | - | -"
                if two.any():
                    other = f"{100 * kept.mean():.0f} % | {100 * both.mean():.0f} % | {row['other'][two].mean():.1f}"
                print(
                    f"| {name} | {label} | {paste} | {100 * row['recoloured'].mean():.0f} % | {other} | "
                    f"{row['background'].mean():.1f} | {counts} | {seconds:.0f} |",
                    flush=True,
                )
                failures.append(f"{name}, {label}, {paste}: {reasons(row)}")
    print("Per image (N named not recoloured, M other changed inside the mask, O other changed outside it):")
    print("\n".join(failures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--views", type=int, default=16, help="demo views per seed")
    parser.add_argument("--drawn", type=int, default=24, help="drawn two-object images")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per 2D edit")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate of the 2D edits")
    parser.add_argument("--guidance", nargs="+", default=["ids"], choices=list(GUIDANCE_METHODS))
    parser.add_argument(
        "--masks",
        nargs="+",
        default=["off", *RELEVANCE_SOURCES, TRUE_MASK],
        help="(b): masks, each off, true, or a relevance source with an optional @threshold",
    )
    parser.add_argument(
        "--edit-sets",
        nargs="+",
        default=["demo views", "drawn two-object"],
        choices=["demo views", "drawn two-object"],
        help="(b): the image sets edited",
    )
    parser.add_argument("--thresholds", type=float, nargs="*", default=[], help="(a): also these thresholds")
    parser.add_argument("--edge-sigmas", type=float, nargs="+", default=[MaskConfig.edge_sigma, 0.0],
                        help="(a): the edge-aware smoothing's colour sigmas to compare (0: off)")
    parser.add_argument("--no-iou", action="store_true", help="skip (a)")
    parser.add_argument("--no-edits", action="store_true", help="skip (b)")
    parser.add_argument(
        "--paste-dilations",
        type=int,
        nargs="*",
        default=[],
        help="(b): also paste through the view-pixel mask grown by these pixels",
    )
    parser.add_argument("--strips", default=None, help="(b): a folder for one PNG per edit: images, edits, masks")
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
        iou_table(prior, iou_sets, args.seeds, args.thresholds, args.edge_sigmas)
    if not args.no_edits:
        chosen = {name: sets[name] for name in args.edit_sets}
        for name in args.guidance:
            edit_table(
                prior,
                chosen,
                name,
                args.steps,
                args.lr,
                [parse_mask(m) for m in args.masks],
                args.strips,
                tuple(args.paste_dilations),
            )


if __name__ == "__main__":
    main()
