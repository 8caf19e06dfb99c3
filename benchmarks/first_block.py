"""What the README's first scene block gives, measured on its run (offline, CPU)::

    python .ci/readme_commands.py --full --keep /tmp/first   # the block at the README's sizes: time, peak memory
    python benchmarks/first_block.py /tmp/first/outputs/demo/ids-edit-demo/*/config.yml

Over the training views (those the scene was reconstructed from): the reconstruction's PSNR to the dataset images
(each view, the minimum is what the contact sheet's rows must clear), the views where the ball is named blue after
the edit, and the PSNR of everything outside the ball (its ray-traced mask grown by 2 px) between the edit and the
reconstruction it started from (the run's reconstruction.yml), mean and worst view.

Over seeds, as a user runs the README's masked edit (each seed its own reconstruction and edit in one ``ns-train``)::

    python benchmarks/first_block.py --seeds 0 1 2 3 4 --folder /tmp/seeds [--splat] [--edit-flags "..."]

runs the block's ``ids-demo-scene`` and its ``ns-train`` command (``--splat``: the "Gaussian splats" block's, with
``--pipeline.mask.source auto`` appended) once per seed with ``--machine.seed N`` appended, in FOLDER/seedN
(``--edit-flags``: in FOLDER/seedN-<flags>, appended too), reusing a run that finished there, and measures each
as above, then prints a table of the seeds.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".ci"))
from local_edits import ball_masks, training_renders  # noqa: E402
from readme_commands import README, first_bash_block  # noqa: E402

from ids_nerfstudio.demo.scoring import measure_colour_edit  # noqa: E402


def measure(config: Path, scene: Path | None = None) -> dict:
    """The run's training views: reconstruction vs images, views with a blue ball, rest vs the reconstruction."""
    import yaml

    config = config.resolve()
    loaded = yaml.load(config.read_text(), Loader=yaml.Loader)
    if not Path(loaded.output_dir).is_absolute():  # nerfstudio's paths are relative to where ns-train ran
        os.chdir(config.parents[3 + len(Path(loaded.output_dir).parts)])
        config = config.relative_to(Path.cwd())
    scene = scene or Path(loaded.data)
    before, files, _, _ = training_renders(config.parent / "reconstruction.yml")
    after, _, _, _ = training_renders(config)
    images = [np.asarray(Image.open(f), dtype=np.float64)[..., :3] / 255 for f in files]
    fidelity = [-10 * np.log10(np.mean((b - i) ** 2)) for b, i in zip(before, images, strict=True)]
    results = [measure_colour_edit(b, a, m) for b, a, m in zip(before, after, ball_masks(scene, files), strict=True)]
    rest = [r.background_psnr for r in results]
    return {"views": len(files), "fidelity": fidelity, "blue": sum(r.after == "blue" for r in results), "rest": rest}


def report(numbers: dict) -> None:
    fidelity, rest, blue, views = numbers["fidelity"], numbers["rest"], numbers["blue"], numbers["views"]
    print(f"training views: {views}")
    print(f"reconstruction vs images: mean {np.mean(fidelity):.1f} dB, min {np.min(fidelity):.1f} dB")
    print(f"ball blue: {blue} of {views} views ({100 * blue / views:.0f} %)")
    print(f"rest vs reconstruction: mean {np.mean(rest):.1f} dB, worst view {np.min(rest):.1f} dB "
          f"(view {int(np.argmin(rest))})", flush=True)  # fmt: skip


def seed_commands(splat: bool, seed: int, flags: str) -> list[list[str]]:
    """The README's scene command and its masked ns-train command, with the seed (and ``flags``) appended."""
    text = README.read_text()
    scene, nerf, *_ = first_bash_block(text, "## First edit: a scene")
    train = first_bash_block(text, "## Gaussian splats")[0] + " --pipeline.mask.source auto" if splat else nerf
    assert "--pipeline.mask.source auto" in train, "the README's first block is no longer the masked edit"
    return [shlex.split(scene), [*shlex.split(train), "--machine.seed", str(seed), *shlex.split(flags)]]


def finished_run(folder: Path) -> Path | None:
    """The config.yml of a run in ``folder`` whose last checkpoint is its last step, or None."""
    import yaml

    for config in sorted(glob.glob(str(folder / "outputs" / "*" / "*" / "*" / "config.yml"))):
        loaded = yaml.load(Path(config).read_text(), Loader=yaml.Loader)
        last = loaded.reconstruction_steps + loaded.max_num_iterations - 1
        if (Path(config).parent / "nerfstudio_models" / f"step-{last:09d}.ckpt").exists():
            return Path(config)
    return None


def seeds(seed_list: list[int], folder: Path, splat: bool, flags: str) -> None:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    rows = []
    for seed in seed_list:
        run = folder / (f"seed{seed}" + (f"-{flags.replace(' ', '')}" if flags else ""))
        config = finished_run(run)
        if config is None:
            run.mkdir(parents=True, exist_ok=True)
            for words in seed_commands(splat, seed, flags):
                print(f"$ (cd {run} && {shlex.join(words)})", flush=True)
                with open(run / "commands.log", "a") as log:
                    subprocess.run(words, cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
            config = finished_run(run)
        print(f"seed {seed}: {config}")
        numbers = measure(config)
        report(numbers)
        rows.append((seed, numbers))
    print("| seed | ball blue | rest vs reconstruction, mean / worst view (dB) | worst view | reconstruction vs "
          "images, mean / min (dB) |\n|---|---|---|---|---|")  # fmt: skip
    for seed, n in rows:
        rest, fidelity = n["rest"], n["fidelity"]
        print(f"| {seed} | {n['blue']} / {n['views']} | {np.mean(rest):.1f} / {np.min(rest):.1f} | "
              f"{int(np.argmin(rest))} | {np.mean(fidelity):.1f} / {np.min(fidelity):.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", help="the edit run's config.yml")
    parser.add_argument("--scene", type=Path, default=None, help="the demo scene folder (default: the run's data)")
    parser.add_argument("--seeds", type=int, nargs="+", help="run the README's masked edit once per seed")
    parser.add_argument("--folder", type=Path, help="with --seeds: where the runs go (finished runs are reused)")
    parser.add_argument("--splat", action="store_true", help="with --seeds: the splat block's method, masked")
    parser.add_argument("--edit-flags", default="", help="with --seeds: extra ns-train flags (a run folder of its own)")
    args = parser.parse_args()
    if args.seeds:
        if args.folder is None:
            parser.error("--seeds needs --folder")
        seeds(args.seeds, args.folder.resolve(), args.splat, args.edit_flags)
    elif args.config is None:
        parser.error("give a config.yml, or --seeds with --folder")
    else:
        report(measure(args.config, args.scene))


if __name__ == "__main__":
    main()
