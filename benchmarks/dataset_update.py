"""Dataset-update editing on the demo scene (offline, CPU)::

    python benchmarks/dataset_update.py [--views 24] [--seeds 0 1 2] [--reconstruction-steps 1000]
        [--edit-steps 80] [--refinement-steps 240] [--update-steps 240] [--csd-period 80] [--csd-views 16]
        [--csd-iterations 20] [--runs ids ids+refine pds pds+refine csd-direct csd-update in2n-style]
        [--refine-fpr-iters 3]  # with --runs ... ids+refine-fpr: the refinement's SDEdits corrected by FPR

One reconstruction (``ns-train ids-edit-demo --max-num-iterations 0``, the first seed's) shared by the seeds, then
per seed the red ball -> blue ball edit by: IDS and PDS distillation, each also followed by PDS's refinement stage
(``--refinement-steps``); CSD's direct distillation (``csd-edit-demo``, ``--edit-steps`` as IDS and PDS); CSD's
dataset update (``--pipeline.dataset-update.mode csd``, the DDS form on the text-only demo prior); the IN2N-style
update in its SDEdit form (the demo prior has no InstructPix2Pix: the current render of one view every 10 steps,
SDEdited). Each run's training views are rendered and compared with the reconstruction's: views where the ball is
named blue, PSNR of the rest (outside the ray-traced ball mask), the ball's sharpness (mean gradient magnitude inside
the mask, relative to the reconstruction's), ``ids-eval``'s multi-view consistency (CLIP similarity of consecutive
frames along a camera path) and the run's time. Runs already in ``--output`` are reused (their recorded time): a
second call with more ``--runs`` adds rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _common import ns_train  # noqa: E402
from helpers import DEMO_PROMPTS, ball_masks, blue_shift, training_views  # noqa: E402

from ids_nerfstudio.demo.scene import write_demo_scene  # noqa: E402
from ids_nerfstudio.demo.scoring import measure_colour_edit  # noqa: E402
from ids_nerfstudio.sheets import labelled_grid  # noqa: E402
from ids_nerfstudio.tools.scene_eval import EvalArgs, evaluate  # noqa: E402


def sharpness(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean finite-difference gradient magnitude of the image's luminance inside ``mask``."""
    luminance = image.mean(-1)
    gy, gx = np.gradient(luminance)
    return float(np.hypot(gx, gy)[mask].mean()) if mask.any() else float("nan")


def measure(scene: Path, reconstruction: Path, run: Path) -> dict[str, float]:
    (before, files), (after, _) = training_views(reconstruction / "config.yml"), training_views(run / "config.yml")
    masks = ball_masks(scene, files)
    results = [measure_colour_edit(b, a, m) for b, a, m in zip(before, after, masks, strict=True)]
    blue = sum(r.after == "blue" and blue_shift(r) > 0.2 for r in results)
    views = zip(before, after, masks, strict=True)
    sharp = np.nanmean([sharpness(a, m) / max(sharpness(b, m), 1e-6) for b, a, m in views])
    evaluated = evaluate(EvalArgs(load_config=run / "config.yml", lpips_net="tiny", gradient=False))
    consistency = json.loads((evaluated / "metrics.json").read_text())["mean"]["consistency_clip"]
    return {"blue": blue, "views": len(results), "rest_db": float(np.mean([r.background_psnr for r in results])),
            "sharpness": float(sharp), "consistency_clip": consistency or float("nan")}  # fmt: skip


def picture(
    reconstruction: Path,
    edit: Path | None,
    refined: Path,
    output: Path,
    views: int = 4,
    titles: tuple[str, ...] = ("reconstruction", "IDS edit", "SDEdit of its render", "refined"),
) -> None:
    """Per view: the reconstruction, the edit (if given), the edited training image of the stage after it (the
    refinement's SDEdit of the edit's render, the CSD update's joint edit), the scene after that stage (renders of
    the training cameras)."""

    def pil(array: np.ndarray) -> Image.Image:
        return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))

    renders = [training_views(run / "config.yml")[0] for run in (reconstruction, edit, refined) if run is not None]
    edited = sorted(int(path.stem) for path in (refined / "edited_images").glob("[0-9]*.png"))
    picks = [edited[k] for k in np.linspace(0, len(edited) - 1, views).round().astype(int)]  # views it edited
    rows = [[*(pil(r[i]) for r in renders[:-1]), Image.open(refined / "edited_images" / f"{i:05d}.png"),
             pil(renders[-1][i])] for i in picks]  # fmt: skip
    labelled_grid(rows, list(titles), [f"view {i}" for i in picks], min_tile=128).save(output)
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reconstruction-steps", type=int, default=1000)
    parser.add_argument("--edit-steps", type=int, default=80)
    parser.add_argument("--refinement-steps", type=int, default=240)
    parser.add_argument("--update-steps", type=int, default=240)
    parser.add_argument("--csd-period", type=int, default=80)
    parser.add_argument("--csd-views", type=int, default=16)
    parser.add_argument("--csd-iterations", type=int, default=20)
    parser.add_argument("--runs", nargs="+", default=["ids", "ids+refine", "pds", "pds+refine", "csd-direct",
                                                      "csd-update", "in2n-style"])  # fmt: skip
    parser.add_argument("--refine-fpr-iters", type=int, default=3, help="FPR iterations of the +refine-fpr runs")
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmark-dataset-update"))
    args = parser.parse_args()
    scene = args.output / "scene"
    if not (scene / "transforms.json").is_file():  # a second call reuses the runs, and their scene
        write_demo_scene(scene, size=64, views=args.views)
    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        base = args.output / f"seed{seed}"
        seeds = ["--machine.seed", seed, "--pipeline.seed", seed, "--pipeline.dataset-update.seed", seed,
                 "--pipeline.refinement.seed", seed]  # fmt: skip
        # one reconstruction for all seeds (the first seed's): the seeds vary the edits' draws
        first = ["--machine.seed", args.seeds[0]]
        reconstruction, _ = ns_train("ids-edit-demo", args.output / f"seed{args.seeds[0]}" / "reconstruction",
                                     "--data", scene, *first,
                                     "--reconstruction-steps", args.reconstruction_steps,
                                     "--max-num-iterations", 0, prompts=DEMO_PROMPTS)  # fmt: skip
        load = ["--data", scene, *seeds, "--load-dir", reconstruction / "nerfstudio_models"]
        refine = ["--refinement-steps", args.refinement_steps]
        update = ["--max-num-iterations", args.update_steps]
        plans = {
            "ids": ("ids-edit-demo", ["--max-num-iterations", args.edit_steps]),
            "pds": ("pds-edit-demo", ["--max-num-iterations", args.edit_steps]),
            "csd-direct": ("csd-edit-demo", ["--max-num-iterations", args.edit_steps]),  # a distillation's budget
            "csd-update": ("csd-edit-demo", [*update, "--pipeline.dataset-update.mode", "csd",
                                             "--pipeline.dataset-update.period", args.csd_period,
                                             "--pipeline.dataset-update.views-per-update", args.csd_views,
                                             "--pipeline.dataset-update.csd-iterations", args.csd_iterations]),
            "in2n-style": ("ids-edit-demo", [*update, "--pipeline.dataset-update.mode", "sdedit",
                                             "--pipeline.dataset-update.start", "current"]),
        }  # fmt: skip
        runs: dict[str, tuple[Path, float]] = {}
        for name in args.runs:
            if "+refine" in name:  # +refine: PDS's refinement stage; +refine-fpr: its SDEdits corrected by FPR
                edit, seconds = runs[name.split("+")[0]]
                method = plans[name.split("+")[0]][0]
                flags = ["--data", scene, *seeds, "--load-dir", edit / "nerfstudio_models", "--max-num-iterations",
                         args.edit_steps, *refine]  # fmt: skip
                if name.endswith("-fpr"):
                    flags += ["--pipeline.refinement.fpr-iters", args.refine_fpr_iters]
                run, refine_seconds = ns_train(method, base / name, *flags, prompts=DEMO_PROMPTS)
                runs[name] = (run, refine_seconds)
            else:
                method, flags = plans[name]
                runs[name] = ns_train(method, base / name, *load, *flags, prompts=DEMO_PROMPTS)
            row = measure(scene, reconstruction, runs[name][0]) | {"seconds": runs[name][1]}
            rows.setdefault(name, []).append(row)
            print(f"seed {seed} {name}: {row}", flush=True)
        if seed == args.seeds[0] and "ids+refine" in runs:
            picture(reconstruction, runs["ids"][0], runs["ids+refine"][0], args.output / "dataset-update.png")
        if seed == args.seeds[0] and "csd-update" in runs:
            picture(reconstruction, None, runs["csd-update"][0], args.output / "dataset-update-csd.png",
                    titles=("reconstruction", "joint CSD-Edit", "CSD update"))  # fmt: skip
    print(f"\n{args.views} views of 64 px, seeds {args.seeds}; means over seeds (min-max of blue views)")
    # consistency is n/a (nan) when the evaluation split has one view (12-view scenes)
    header = ["run", "ball blue (views)", "rest PSNR to the reconstruction", "ball sharpness (x reconstruction)",
              "consistency (ids-eval CLIP)", "time"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|")
    for name, found in rows.items():
        blue = [r["blue"] for r in found]
        print(f"| {name} | {np.mean(blue):.1f} / {found[0]['views']} ({min(blue)}-{max(blue)}) | "
              f"{np.mean([r['rest_db'] for r in found]):.1f} dB | {np.mean([r['sharpness'] for r in found]):.2f} | "
              f"{np.mean([r['consistency_clip'] for r in found]):.3f} | "
              f"{np.mean([r['seconds'] for r in found]):.0f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
