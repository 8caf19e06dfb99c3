"""Local edits with relevance masks on the demo world (offline; CPU, or CUDA when there is one)::

    python benchmarks/local_edits.py [--seeds 0 1 2] [--edits 8] [--steps 200] [--guidances ids dds]
                                     [--masks off auto true] [--nerf] [--nerf-guidances ids dds] [--nerf-steps 150]

(a) the auto mask: IoU at latent resolution of the thresholded relevance with the ray-traced mask of the object the
    prompts name, one- and two-object views, for the demo prior and the control (the demo prior with a random UNet).
(b) 2D edits of rendered views (one object recoloured) with the mask off, auto, or the true mask: success (the
    object has the target colour), the other object kept (two-object views: its colour unchanged), background PSNR
    outside the object (grown by 2 px).
(c) with --nerf: the README's demo edit (red ball -> blue ball) with ns-train NAME-edit-demo (--splat: on splats,
    NAME-splat-edit-demo) from one
    reconstruction per seed, mask off and auto: the training views where the ball is named blue, the PSNR of
    everything outside the ball against the reconstruction, and the editing time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ids_nerfstudio.demo.scene import write_demo_scene
from ids_nerfstudio.demo.scoring import (
    TRUE_MASK,
    auto_mask_iou,
    measure_colour_edit,
    object_colour,
    recolour,
    recolour_cases,
)
from ids_nerfstudio.demo.world import render_with_masks
from ids_nerfstudio.guidance import GUIDANCE_METHODS
from ids_nerfstudio.guidance.relevance import MaskConfig
from ids_nerfstudio.image_editor import PACKAGED_DEFAULT_GRAD_SCALE
from ids_nerfstudio.prior import StableDiffusionPriorConfig

PROMPT_SRC = "a photo of a red ball on a grey floor"
PROMPT_TRG = "a photo of a blue ball on a grey floor"


def random_unet_prior(folder: Path, device: str):
    """The control: the demo prior's folder with only the UNet replaced by a seeded random one."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from helpers import write_random_unet_demo

    return StableDiffusionPriorConfig(model=str(write_random_unet_demo(folder)), device=device).setup()


def mask_iou(priors: dict, seeds: list[int], count: int) -> None:
    print(f"(a) auto mask IoU with the true object mask ({count} views per seed, seeds {seeds})")
    print("| prior | mean | one object | two objects | views >= 0.3 |")
    print("|---|---|---|---|---|")
    for name, prior in priors.items():
        ious, two = [], []
        for seed in seeds:
            cases = recolour_cases(count, seed)
            ious += auto_mask_iou(prior, cases, MaskConfig(source="auto")).tolist()
            two += [len(case.sample.objects) == 2 for case in cases]
        ious, two = np.array(ious), np.array(two)
        print(f"| {name} | {ious.mean():.2f} | {ious[~two].mean():.2f} | {ious[two].mean():.2f} | "
              f"{100 * np.mean(ious >= 0.3):.0f} % |", flush=True)  # fmt: skip


def edits_2d(
    prior, seeds: list[int], count: int, steps: int, guidances: list[str], masks: list[str], pastes: list[str]
) -> None:
    """Each masked row once per entry of ``pastes``: "on" pastes the decoded edit into the source through the mask
    (as ids-edit-image writes it), "off" measures the decoder's whole output."""
    scale = PACKAGED_DEFAULT_GRAD_SCALE
    print(f"(b) 2D edits: {count} views per seed x seeds {seeds}, {steps} steps, lr 0.1, {scale:g}/(h w)")
    print("| guidance | mask | success | two-object success | other object kept | background PSNR (dB) | "
          "two-object background (dB) | s / edit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in guidances:
        guidance = GUIDANCE_METHODS[name].config().setup(prior=prior)
        for mask, paste in itertools.product(masks, pastes):
            if mask == "off" and paste != pastes[0]:
                continue  # nothing to paste
            label = mask if mask == "off" or paste == "on" else f"{mask}, not pasted"
            rows, seconds = [], 0.0
            for seed in seeds:
                cases = recolour_cases(count, seed)
                started = time.perf_counter()
                results, _, edited = recolour(prior, guidance, cases, steps=steps, grad_scale=scale, seed=seed,
                                              mask=MaskConfig(source=mask),
                                              paste_outside_mask=paste == "on")  # fmt: skip
                seconds += time.perf_counter() - started
                for case, result, image in zip(cases, results, edited, strict=True):
                    rows.append((case, result, other_object_kept(case, image.permute(1, 2, 0).numpy())))
            ok = np.array([r.after == c.colour for c, r, _ in rows])
            two = np.array([len(c.sample.objects) == 2 for c, _, _ in rows])
            kept = np.array([k for _, _, k in rows if k is not None])
            psnr = np.array([r.background_psnr for _, r, _ in rows])
            print(f"| {name} | {label} | {100 * ok.mean():.0f} % | {100 * ok[two].mean():.0f} % | "
                  f"{100 * kept.mean():.0f} % | {psnr.mean():.1f} | {psnr[two].mean():.1f} | "
                  f"{seconds / len(rows):.2f} |", flush=True)  # fmt: skip


def other_object_kept(case, edit: np.ndarray) -> bool | None:
    """Whether the object the prompts do not name keeps its colour (None for a one-object view)."""
    from ids_nerfstudio.demo import render_sample

    if len(case.sample.objects) < 2:
        return None
    other = 1 - case.index
    masks = render_sample(case.sample)[1]
    return object_colour(edit, masks[other]) == case.sample.objects[other].colour


def ns_train(method: str, *args) -> Path:
    output = Path(args[list(args).index("--output-dir") + 1])
    command = [sys.executable, "-m", "nerfstudio.scripts.train", method, "--vis", "tensorboard",
               "--machine.device-type", "cuda" if torch.cuda.is_available() else "cpu",
               "--prompt-src", PROMPT_SRC, "--prompt-trg", PROMPT_TRG, *map(str, args)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return next(output.rglob("config.yml"))


def training_renders(config: Path, balls: list[np.ndarray] | None = None):
    """Renders of a run's training views and their image files; with the views' true ball masks, also the IoU of
    each view's edit mask at the view's pixels (the colour loss's, > 0.5) with its ball, and those masks."""
    from nerfstudio.utils.eval_utils import eval_setup

    from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints

    allow_nerfstudio_checkpoints()
    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    dataset = pipeline.datamanager.train_dataset
    with torch.no_grad():
        views = [pipeline.model.get_outputs_for_camera(dataset.cameras[i : i + 1].to(pipeline.device))["rgb"]
                 .clamp(0, 1).cpu().numpy() for i in range(len(dataset))]  # fmt: skip
    files = list(pipeline.datamanager.train_dataparser_outputs.image_filenames)
    ious, masks = [], []
    if balls is not None and pipeline.config.mask.enabled:
        for index, ball in enumerate(balls):
            found = pipeline.training_mask(index).cpu().numpy() > 0.5  # the mask at the view's pixels
            ious.append(float((found & ball).sum() / max((found | ball).sum(), 1)))
            masks.append(found)
    return views, files, ious, masks


def ball_surface_points(count: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Points spread evenly over the demo ball's surface (a Fibonacci sphere) and their outward normals."""
    from ids_nerfstudio.demo.world import DEMO_OBJECTS

    (ball,) = DEMO_OBJECTS
    k = np.arange(count) + 0.5
    z = 1 - 2 * k / count
    phi = np.pi * (1 + 5**0.5) * k
    normals = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], axis=-1)
    return np.array([ball.x, ball.y, ball.size]) + ball.size * normals, normals


def mask_agreement(masks: list[np.ndarray], poses: list[np.ndarray], focal: float, balls: list[np.ndarray]) -> str:
    """How the views' edit masks agree about the ball: each surface point of the ball is looked up in the mask of
    every view that sees it (front-facing and where that view's ray-traced ball mask is), and counted as marked by
    all of those views, by some, or by none (points seen by at least two views)."""
    points, normals = ball_surface_points()
    marked, seen = np.zeros(len(points)), np.zeros(len(points))
    for mask, pose, ball in zip(masks, poses, balls, strict=True):
        height, width = mask.shape
        offset = points - pose[:3, 3]
        local = offset @ pose[:3, :3]  # world -> camera (OpenGL: the camera looks down -z)
        column = np.floor(width / 2 + focal * local[:, 0] / -local[:, 2]).astype(int)
        row = np.floor(height / 2 - focal * local[:, 1] / -local[:, 2]).astype(int)
        inside = (local[:, 2] < 0) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
        column, row = np.clip(column, 0, width - 1), np.clip(row, 0, height - 1)
        visible = inside & (np.sum(normals * offset, axis=1) < 0) & ball[row, column]
        seen += visible
        marked += visible & mask[row, column]
    several = seen >= 2
    share = marked[several] / seen[several]
    return (f"; ball points seen by 2+ views ({several.sum()} of {len(points)}): marked by all "
            f"{100 * np.mean(share == 1):.0f} %, by some {100 * np.mean((share > 0) & (share < 1)):.0f} %, "
            f"by none {100 * np.mean(share == 0):.0f} %")  # fmt: skip


def mask_ious(ious: list[float]) -> str:
    """", mask IoU with the ball: mean (min), views below 0.3" of a masked run, "" without masks."""
    if not ious:
        return ""
    return f", mask IoU {np.mean(ious):.2f} (min {np.min(ious):.2f}), {sum(i < 0.3 for i in ious)} views below 0.3"


def gaussian_count(config: Path) -> str:
    """", N Gaussians" for a splat run (its newest checkpoint), "" for a NeRF."""
    from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints

    allow_nerfstudio_checkpoints()
    (checkpoint, *_) = sorted(config.parent.glob("nerfstudio_models/step-*.ckpt"), reverse=True)
    means = torch.load(checkpoint, map_location="cpu")["pipeline"].get("_model.gauss_params.means")
    return "" if means is None else f", {len(means)} Gaussians"


def training_poses(scene: Path, image_files: list[Path]) -> tuple[list[np.ndarray], dict]:
    """The camera-to-world matrix of each image file (in the scene's own frame) and the scene's transforms.json."""
    transforms = json.loads((scene / "transforms.json").read_text())
    poses = {frame["file_path"]: np.array(frame["transform_matrix"]) for frame in transforms["frames"]}
    return [poses[str(Path(name).relative_to(scene))] for name in image_files], transforms


def ball_masks(scene: Path, image_files: list[Path]) -> list[np.ndarray]:
    poses, transforms = training_poses(scene, image_files)
    return [render_with_masks(pose, transforms["w"], transforms["h"], transforms["fl_x"])[1][0] for pose in poses]


def nerf(
    seeds: list[int], guidances: list[str], masks: list[str], steps: int, variant: str = "-edit-demo",
    flag_sets: tuple[str, ...] = ("",), shared: tuple[Path, Path] | None = None,
) -> None:  # fmt: skip
    """Each edit runs once per entry of ``flag_sets`` (extra ns-train flags, "" for none), from the same
    reconstruction: the seed's own, or with ``shared`` = (scene folder, reconstruction's config.yml) that one for
    every seed (the seed then only draws the edit's noise)."""
    print(f"(c) scene demo edit (ns-train NAME{variant}, 24 views of 64 px, {steps} editing steps, seeds {seeds})")
    print("| guidance | mask | flags | views with a blue ball | rest vs reconstruction (dB), mean (min) of runs | "
          "worst view (dB) | reconstruction vs images (dB) | edit time (min) | mask IoU with the ball, mean (min) "
          "|")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    table: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for seed in seeds:
            if shared is None:
                scene = write_demo_scene(folder / f"scene{seed}", size=64, views=24)
                reconstruction = ns_train(f"ids{variant}", "--data", scene, "--output-dir", folder / f"rec{seed}",
                                          "--max-num-iterations", 0, "--machine.seed", seed)  # fmt: skip
            else:
                scene, reconstruction = shared
            before, files, _, _ = training_renders(reconstruction)
            balls = ball_masks(scene, files)
            poses, transforms = training_poses(scene, files)
            images = [np.asarray(Image.open(f), dtype=np.float64)[..., :3] / 255 for f in files]
            fidelity = np.mean([-10 * np.log10(np.mean((b - i) ** 2)) for b, i in zip(before, images, strict=True)])
            for run, (name, mask, flags) in enumerate(itertools.product(guidances, masks, flag_sets)):
                started = time.perf_counter()
                output = folder / f"{name}-{mask}-{seed}-{run}"
                edit = ns_train(f"{name}{variant}", "--data", scene, "--output-dir", output, "--load-dir",
                                reconstruction.parent / "nerfstudio_models", "--max-num-iterations", steps,
                                "--pipeline.mask.source", mask, "--pipeline.seed", seed, *flags.split())  # fmt: skip
                minutes = (time.perf_counter() - started) / 60
                after, _, ious, edit_masks = training_renders(edit, balls)
                results = [measure_colour_edit(b, a, m) for b, a, m in zip(before, after, balls, strict=True)]
                row = table.setdefault((name, mask, flags), {"blue": [], "rest": [], "fidelity": [], "minutes": [],
                                                             "iou": [], "worst": []})  # fmt: skip
                row["iou"] += ious
                agreement = mask_agreement(edit_masks, poses, transforms["fl_x"], balls) if edit_masks else ""
                row["blue"] += [r.after == "blue" for r in results]
                row["rest"].append(np.mean([r.background_psnr for r in results]))
                worst = int(np.argmin([r.background_psnr for r in results]))
                row["worst"].append(results[worst].background_psnr)
                row["fidelity"].append(fidelity)
                row["minutes"].append(minutes)
                print(f"  run {name} mask {mask} {flags} seed {seed}: blue {sum(r.after == 'blue' for r in results)}/"
                      f"{len(results)}, rest {row['rest'][-1]:.1f} dB (worst view {worst}: {row['worst'][-1]:.1f} dB), "
                      f"reconstruction {fidelity:.1f} dB, "
                      f"{minutes:.1f} min{gaussian_count(edit)}{mask_ious(ious)}{agreement}",
                      flush=True)  # survives a stop  # fmt: skip
        for (name, mask, flags), row in table.items():
            iou = f"{np.mean(row['iou']):.2f} ({np.min(row['iou']):.2f})" if row["iou"] else "n/a"
            print(f"| {name} | {mask} | {flags or '-'} | {100 * np.mean(row['blue']):.0f} % | "
                  f"{np.mean(row['rest']):.1f} (min {np.min(row['rest']):.1f}) | {np.min(row['worst']):.1f} | "
                  f"{np.mean(row['fidelity']):.1f} | "
                  f"{np.mean(row['minutes']):.1f} | {iou} |", flush=True)  # fmt: skip


def fusion_ious(scene: Path, reconstruction: Path) -> None:
    """The auto masks of a reconstruction's training views at the view's pixels (the colour loss's, > 0.5), each
    from its own view and fused across views (``--pipeline.mask.fuse``, the reconstruction's depth): IoU with the
    ray-traced ball, the mask's pixels outside the ball grown by 2 px, and how the views agree about the ball."""
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.utils.eval_utils import eval_setup

    from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints
    from ids_nerfstudio.demo.scoring import dilate
    from ids_nerfstudio.demo.world import trace_view
    from ids_nerfstudio.editing.masks import fuse_view_masks

    allow_nerfstudio_checkpoints()
    _, pipeline, _, _ = eval_setup(reconstruction, test_mode="test")
    own: list[np.ndarray] = []
    files = list(pipeline.datamanager.train_dataparser_outputs.image_filenames)
    balls = ball_masks(scene, files)
    poses, transforms = training_poses(scene, files)
    print(f"(d) auto masks of {len(balls)} views, own vs fused (one reconstruction)")
    print("| masks | IoU with the ball, mean (min) | pixels outside the ball + 2 px, mean (max) | s | agreement |")
    print("|---|---|---|---|---|")
    pipeline.config.mask.source = "auto"
    for fuse in (False, True):
        pipeline.config.mask.fuse = fuse
        pipeline.masks.clear()
        started = time.perf_counter()
        masks = [pipeline.training_mask(index).cpu().numpy() > 0.5 for index in range(len(balls))]
        seconds = time.perf_counter() - started
        ious = [(m & b).sum() / max((m | b).sum(), 1) for m, b in zip(masks, balls, strict=True)]
        band = [(m & ~dilate(b, 2)).sum() for m, b in zip(masks, balls, strict=True)]
        agreement = mask_agreement(masks, poses, transforms["fl_x"], balls).removeprefix("; ")
        print(f"| {'fused' if fuse else 'own'} | {np.mean(ious):.2f} ({np.min(ious):.2f}) | {np.mean(band):.0f} "
              f"({np.max(band)}) | {seconds:.0f} | {agreement} |", flush=True)  # fmt: skip
        own = own if fuse else masks
    # the same vote with the scene's true geometry (ray-traced points, the dataset's cameras)
    size, focal = transforms["w"], transforms["fl_x"]
    points = [torch.from_numpy(trace_view(pose, size, size, focal)[2]).float() for pose in poses]
    points = [torch.where(p.isfinite(), p, torch.full_like(p, 1e6)) for p in points]  # nothing hit: far away
    cameras = Cameras(camera_to_worlds=torch.from_numpy(np.stack(poses)[:, :3]).float(), fx=focal, fy=focal,
                      cx=size / 2, cy=size / 2, width=size, height=size)  # fmt: skip
    masks = [m.numpy() > 0.5 for m in fuse_view_masks([torch.from_numpy(m).float() for m in own], points, cameras)]
    ious = [(m & b).sum() / max((m | b).sum(), 1) for m, b in zip(masks, balls, strict=True)]
    band = [(m & ~dilate(b, 2)).sum() for m, b in zip(masks, balls, strict=True)]
    agreement = mask_agreement(masks, poses, focal, balls).removeprefix("; ")
    print(f"| fused, ray-traced points | {np.mean(ious):.2f} ({np.min(ious):.2f}) | {np.mean(band):.0f} "
          f"({np.max(band)}) | - | {agreement} |", flush=True)  # fmt: skip


def worst_views(scene: Path, reconstruction: Path, edit: Path, picture: Path | None, count: int = 4) -> None:
    """(e) A finished edit's views against its reconstruction: per view the rest vs the reconstruction and the
    reconstruction's own rest vs the dataset image (both outside the ball grown by 2 px); a picture of the
    ``count`` worst views: reconstruction | edit | |edit - reconstruction| x 4 | the view's mask."""
    from ids_nerfstudio.demo.scoring import dilate, masked_psnr

    before, files, _, _ = training_renders(reconstruction)
    balls = ball_masks(scene, files)
    after, _, _, masks = training_renders(edit, balls)
    images = [np.asarray(Image.open(f), dtype=np.float64)[..., :3] / 255 for f in files]
    results = [measure_colour_edit(b, a, m) for b, a, m in zip(before, after, balls, strict=True)]
    rest = [r.background_psnr for r in results]
    fit = [masked_psnr(i, b, ~dilate(m, 2)) for i, b, m in zip(images, before, balls, strict=True)]
    print("(e) per view: rest vs the reconstruction (dB) | the reconstruction vs its image outside the ball (dB)")
    for k in np.argsort(rest):
        print(f"  view {k} ({files[k].name}): {rest[k]:.1f} | {fit[k]:.1f}")
    ranks = [np.argsort(np.argsort(values)) for values in (rest, fit)]
    print(f"  Spearman correlation of the two over views: {np.corrcoef(*ranks)[0, 1]:.2f}")
    print(f"  blue {sum(r.after == 'blue' for r in results)}/{len(results)}, rest {np.mean(rest):.1f} dB (worst "
          f"{np.min(rest):.1f}); the reconstruction vs the images outside the ball {np.mean(fit):.1f} dB")
    if picture is not None:
        rows = [np.concatenate([before[k], after[k], np.clip(4 * np.abs(after[k] - before[k]), 0, 1),
                                np.repeat(masks[k][..., None], 3, -1).astype(float)], 1)
                for k in np.argsort(rest)[:count]]  # fmt: skip
        grid = (np.concatenate(rows, 0) * 255).round().astype(np.uint8)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(picture)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--edits", type=int, default=8, help="rendered views per seed in (a) and (b)")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per 2D edit")
    parser.add_argument("--guidances", nargs="+", default=["ids", "dds"], choices=list(GUIDANCE_METHODS))
    parser.add_argument("--masks", nargs="+", default=["off", "auto", TRUE_MASK], help="(b): off, auto, true")
    parser.add_argument("--paste", nargs="+", default=["on"], choices=["on", "off"],
                        help="(b): masked edits pasted into the source through the mask (on), or not (off)")
    parser.add_argument("--no-iou", action="store_true", help="skip (a)")
    parser.add_argument("--no-2d", action="store_true", help="skip (b)")
    parser.add_argument("--nerf", action="store_true", help="also run (c) (about 10 minutes per run on 2 CPU cores)")
    parser.add_argument("--nerf-guidances", nargs="+", default=["ids", "dds"], choices=list(GUIDANCE_METHODS))
    parser.add_argument("--nerf-masks", nargs="+", default=["off", "auto"], help="(c): off, auto")
    parser.add_argument("--splat", action="store_true", help="(c) on Gaussian splats: NAME-splat-edit-demo")
    parser.add_argument("--nerf-steps", type=int, default=150, help="editing steps of each NeRF edit")
    parser.add_argument("--edit-flags", action="append", default=None,
                        help="(c): extra ns-train flags of the edits, one quoted string per variant (repeatable)")
    parser.add_argument("--scene", type=Path, default=None,
                        help="(c): one scene folder for every seed (with --reconstruction)")  # fmt: skip
    parser.add_argument("--reconstruction", type=Path, default=None,  # fmt: skip
                        help="(c): the config.yml of a finished reconstruction of --scene, edited by each seed")
    parser.add_argument("--fusion", action="store_true",
                        help="(d): the auto masks of --reconstruction's views, own and fused (no edit)")  # fmt: skip
    parser.add_argument("--worst-views", type=Path, default=None,
                        help="(e): config.yml of an edit of --reconstruction: its views, worst first")  # fmt: skip
    parser.add_argument("--picture", type=Path, default=None, help="(e): also a PNG of the 4 worst views")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.fusion:
        fusion_ious(args.scene, args.reconstruction)
    if args.worst_views:
        worst_views(args.scene, args.reconstruction, args.worst_views, args.picture)
    prior = StableDiffusionPriorConfig(model="demo", device=args.device).setup()
    if not args.no_iou:
        with tempfile.TemporaryDirectory() as folder:
            control = random_unet_prior(Path(folder) / "random-unet", args.device)
            mask_iou({"demo": prior, "random UNet": control}, args.seeds, args.edits)
    if not args.no_2d:
        edits_2d(prior, args.seeds, args.edits, args.steps, args.guidances, args.masks, args.paste)
    if args.nerf:
        nerf(args.seeds, args.nerf_guidances, args.nerf_masks, args.nerf_steps,
             "-splat-edit-demo" if args.splat else "-edit-demo", tuple(args.edit_flags or [""]),
             None if args.reconstruction is None else (args.scene, args.reconstruction))  # fmt: skip


if __name__ == "__main__":
    main()
