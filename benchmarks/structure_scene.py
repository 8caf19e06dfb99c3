"""The structure edit on the demo scene (offline, CPU): "a red ball" -> "a red cube" on nerfacto and splats::

    python benchmarks/structure_scene.py [--views 12] [--reconstruction-steps 2000] [--edit-steps 150]
        [--objects ball cube] [--representations nerf splat] [--rules ids dds cds pds] [--masks off on]

Per source object and representation: one reconstruction of the demo scene (``ids-demo-scene --object``), reused
with ``--load-dir`` by every edit (``NAME-edit-demo`` / ``NAME-splat-edit-demo``), without a mask and with the
ray-traced union mask of the source object and the ideal edit (the same object with the other shape, ray-traced
from each training camera: an oracle no user has; ``--pipeline.mask.source`` a folder of them). Each edit's renders
of the training cameras are measured against the reconstruction's renders (not the dataset images, so what the
reconstruction itself misses is not counted) with ``measure_structure_edit`` (centroid shift, area over the ideal
object's, IoU with the ideal and with the source object, the floor's PSNR outside the union mask grown by 2 px) and
two success measures: the demo CLIP scores the target caption above the source caption, and the silhouette (the
coloured pixels' IoU with the ideal object above their IoU with the source object). Two control rows: the
reconstruction itself (no success expected) and the ray-traced ideal edit (all success expected).

Runs are kept under ``--output``; a finished run is measured again, not retrained (delete its folder to rerun).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _common import ns_train  # noqa: E402
from helpers import training_views  # noqa: E402

from ids_nerfstudio.demo import caption  # noqa: E402
from ids_nerfstudio.demo.scene import demo_objects, write_demo_scene  # noqa: E402
from ids_nerfstudio.demo.scoring import measure_structure_edit  # noqa: E402
from ids_nerfstudio.demo.world import render_with_masks  # noqa: E402
from ids_nerfstudio.eval.models import ClipEmbedder  # noqa: E402
from ids_nerfstudio.model_names import DEMO  # noqa: E402
from ids_nerfstudio.sheets import labelled_grid  # noqa: E402

OTHER = {"ball": "cube", "cube": "ball"}
VARIANT = {"nerf": "-edit-demo", "splat": "-splat-edit-demo"}


def ray_traced(scene: Path, files: list[Path], shape: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The demo object with ``shape`` ray-traced from the cameras of the scene's views ``files``: (image, mask)."""
    transforms = json.loads((scene / "transforms.json").read_text())
    poses = {frame["file_path"]: np.array(frame["transform_matrix"]) for frame in transforms["frames"]}
    traced = [
        render_with_masks(poses[str(Path(f).relative_to(scene))], transforms["w"], transforms["h"],
                          transforms["fl_x"], demo_objects(shape))
        for f in files
    ]  # fmt: skip
    return [(image, masks[0]) for image, masks in traced]


def view_masks(scene: Path, files: list[Path], shape: str) -> list[np.ndarray]:
    """The ray-traced mask of the demo object with ``shape`` in each of the views ``files``."""
    return [mask for _, mask in ray_traced(scene, files, shape)]


def write_union_masks(scene: Path, folder: Path, shape: str) -> Path:
    """One mask image per view (named like the images): the source object's mask or the ideal edit's."""
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted((scene / "images").glob("*.png"))
    masks = zip(view_masks(scene, files, shape), view_masks(scene, files, OTHER[shape]), strict=True)
    for name, (source, ideal) in zip(files, masks, strict=True):
        Image.fromarray(((source | ideal) * 255).astype(np.uint8)).save(folder / name.name)
    return folder


def train(method: str, output: Path, *flags: str | Path, prompts: list[str]) -> tuple[Path, float]:
    """``ns_train``, or the run already finished in ``output`` (its ``done.json`` written after it succeeded)."""
    done = output / "done.json"
    if done.is_file():
        found = json.loads(done.read_text())
        return Path(found["run"]), found["seconds"]
    run, seconds = ns_train(method, output, *flags, prompts=prompts)
    done.write_text(json.dumps({"run": str(run), "seconds": seconds}))
    return run, seconds


def measure(clip: ClipEmbedder, texts: torch.Tensor, before: list[np.ndarray], after: list[np.ndarray],
            sources: list[np.ndarray], ideals: list[np.ndarray]) -> dict[str, float]:  # fmt: skip
    """The table's cells for one run: means over views; texts = (source caption, target caption) embedded."""
    measured = [measure_structure_edit(b, a, s, i) for b, a, s, i in zip(before, after, sources, ideals, strict=True)]
    embedded = clip.images(torch.from_numpy(np.stack(after)).permute(0, 3, 1, 2).float())
    prefers = (embedded @ texts.T).argmax(1) == 1
    closer = np.mean([m.iou_ideal > m.iou_source for m in measured])  # the silhouette is nearer the ideal's
    row = {"success": float(prefers.float().mean()), "silhouette": float(closer)}
    for field in ("centroid_shift", "area_ratio", "iou_ideal", "iou_source", "floor_psnr"):
        row[field] = float(np.nanmean([getattr(m, field) for m in measured]))
    return row


def record(results: Path, row: dict) -> None:
    """Append one measured row to ``results`` (JSON lines: survives a stop) and print it."""
    with results.open("a") as file:
        file.write(json.dumps(row) + "\n")
    print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--reconstruction-steps", type=int, default=2000)
    parser.add_argument("--edit-steps", type=int, default=150)
    parser.add_argument("--objects", nargs="+", default=["ball"], choices=list(OTHER))
    parser.add_argument("--representations", nargs="+", default=["nerf", "splat"], choices=list(VARIANT))
    parser.add_argument("--rules", nargs="+", default=["ids", "dds", "cds", "pds"])
    parser.add_argument("--masks", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmark-structure-scene"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    clip = ClipEmbedder(DEMO)
    results = args.output / "results.jsonl"
    seeds = ["--machine.seed", args.seed, "--pipeline.seed", args.seed]
    for shape in args.objects:
        prompts_of = {s: caption(demo_objects(s)) for s in (shape, OTHER[shape])}
        prompts = ["--prompt-src", prompts_of[shape], "--prompt-trg", prompts_of[OTHER[shape]]]
        texts = clip.texts([prompts_of[shape], prompts_of[OTHER[shape]]])
        scene = args.output / f"scene-{shape}"
        if not (scene / "transforms.json").is_file():
            write_demo_scene(scene, size=64, views=args.views, shape=shape)
        masks = write_union_masks(scene, args.output / f"masks-{shape}", shape)
        for representation in args.representations:
            base = args.output / f"{shape}-{representation}"
            method = f"{{}}{VARIANT[representation]}"
            reconstruction, seconds = train(method.format("ids"), base / "reconstruction", "--data", scene, *seeds,
                                            "--reconstruction-steps", args.reconstruction_steps,
                                            "--max-num-iterations", 0, prompts=prompts)  # fmt: skip
            before, files = training_views(reconstruction / "config.yml")
            sources, ideals = view_masks(scene, files, shape), view_masks(scene, files, OTHER[shape])
            renders = {"reconstruction": before}

            where = {"object": shape, "representation": representation}
            # controls: the unedited reconstruction (no success expected) and the ray-traced ideal edit (all)
            record(results, where | {"rule": "none", "mask": "-", "seconds": seconds}
                   | measure(clip, texts, before, before, sources, ideals))  # fmt: skip
            ideal_images = [image for image, _ in ray_traced(scene, files, OTHER[shape])]
            record(results, where | {"rule": "ideal", "mask": "-", "seconds": 0.0}
                   | measure(clip, texts, before, ideal_images, sources, ideals))  # fmt: skip
            load = ["--data", scene, *seeds, "--load-dir", reconstruction / "nerfstudio_models",
                    "--max-num-iterations", args.edit_steps]  # fmt: skip
            for mask in args.masks:
                for rule in args.rules:
                    flags = [*load, "--pipeline.mask.source", masks] if mask == "on" else load
                    run, run_seconds = train(method.format(rule), base / f"{rule}-mask-{mask}", *flags, prompts=prompts)
                    renders[f"{rule} | {mask}"] = training_views(run / "config.yml")[0]
                    record(results, where | {"rule": rule, "mask": mask, "seconds": run_seconds}
                           | measure(clip, texts, before, renders[f"{rule} | {mask}"], sources, ideals))  # fmt: skip
            picture(scene, files, renders, shape, args.output / f"structure-{shape}-{representation}.png")
    table(results)


def picture(scene: Path, files: list[Path], renders: dict[str, list[np.ndarray]], shape: str, output: Path) -> None:
    """Four training views: the ideal edit (ray-traced), the reconstruction and each run."""
    picks = np.linspace(0, len(files) - 1, 4).round().astype(int)
    ideals = ray_traced(scene, [files[k] for k in picks], OTHER[shape])

    def pil(array: np.ndarray) -> Image.Image:
        return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))

    rows = [[pil(ideal)] + [pil(r[k]) for r in renders.values()] for k, (ideal, _) in zip(picks, ideals, strict=True)]
    labelled_grid(rows, ["ideal", *renders], [f"view {k}" for k in picks], min_tile=96).save(output)
    print(f"wrote {output}")


def table(results: Path) -> None:
    """The docs' table from every measured row (the last row of each run counts)."""
    rows = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        rows[(row["object"], row["representation"], row["rule"], row["mask"])] = row
    print("\n| edit | scene | rule | mask | success (demo CLIP) | centroid shift (px) | area / ideal | IoU ideal "
          "| IoU source | silhouette nearer the ideal | floor PSNR vs reconstruction (dB) | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (shape, representation, rule, mask), r in rows.items():
        print(f"| {shape} -> {OTHER[shape]} | {representation} | {rule} | {mask} | {100 * r['success']:.0f} % | "
              f"{r['centroid_shift']:.2f} | {r['area_ratio']:.2f} | {r['iou_ideal']:.3f} | {r['iou_source']:.3f} | "
              f"{100 * r['silhouette']:.0f} % | {r['floor_psnr']:.2f} | {r['seconds']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
