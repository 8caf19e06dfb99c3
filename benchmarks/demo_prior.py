"""How well the demo prior generates and edits its world (offline; CPU, or CUDA when there is one)::

    python benchmarks/demo_prior.py [--samples 24] [--edits 10] [--batch 8] [--steps 200] [--nerf]

(a) generation: for captions of one object, the fraction of samples (DDIM, 50 steps, CFG 7.5) whose object has
    the named colour. A sampled image comes with no mask, so its object is its saturated pixels (the floor and
    sky are grey); the colour is named by chromaticity, as inside the generator's masks in (b).
(b) 2D edits of rendered views: one object changes colour ("a red ball ..." -> "a blue ball ..."), per guidance:
    success (the object, inside the generator's mask, has the target colour), background PSNR outside the mask
    (grown by 2 px), LPIPS to the source (n/a offline: LPIPS needs torchvision's AlexNet weights), seconds per
    edit. ``--batch`` views are edited together (independent samples, each with its own prompts, t and noise).
    The paper's claim in miniature: ids keeps the background better than dds.
(c) with --nerf: the same edit of the demo scene with ns-train ids-edit-demo and dds-edit-demo, measured with
    ids-eval (demo CLIP): CLIP directional similarity, background PSNR (IDS supp. D, no mask), wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ids_nerfstudio.demo import caption
from ids_nerfstudio.demo.scoring import object_colour, recolour, recolour_cases, sample_images
from ids_nerfstudio.demo.world import COLOURS, SHAPES, SceneObject
from ids_nerfstudio.eval import LpipsDistance, MetricModelError
from ids_nerfstudio.guidance import GUIDANCE_METHODS
from ids_nerfstudio.image_editor import PACKAGED_DEFAULT_GRAD_SCALE
from ids_nerfstudio.prior import StableDiffusionPriorConfig

EDIT_GUIDANCES = ("sds", "dds", "ids", "cds", "pds")


def generation(prior, samples: int, seed: int) -> None:
    colours = [list(COLOURS)[k % len(COLOURS)] for k in range(samples)]
    prompts = [caption((SceneObject(SHAPES[k % 2], colour, 0, 0, 0.3),)) for k, colour in enumerate(colours)]
    started = time.perf_counter()
    images = sample_images(prior, prompts, (16, 16), generator=torch.Generator().manual_seed(seed)).float().cpu()
    hits = [object_colour(x.permute(1, 2, 0).numpy()) == c for x, c in zip(images, colours, strict=True)]
    print(f"(a) generation: {sum(hits)}/{samples} = {100 * np.mean(hits):.0f} % of samples have the named colour "
          f"({(time.perf_counter() - started) / samples:.2f} s per sample)")  # fmt: skip


def edits(
    prior, count: int, steps: int, grad_scale: float, seed: int, batch: int, guidances, verbose: bool = False
) -> None:
    """2D edits of ``count`` rendered views per guidance, ``batch`` views per optimisation (one prompt pair each)."""
    try:
        lpips = LpipsDistance("alex")
        lpips(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64))
    except MetricModelError:
        lpips = None
    cases = recolour_cases(count, seed)
    device = prior.alphas_cumprod.device
    print(f"(b) 2D edits: {count} rendered views, one object recoloured each, {steps} steps, lr 0.1, "
          f"{grad_scale:g}/(h w), {batch} views per batch on {device}")  # fmt: skip
    print("| guidance | success | background PSNR (dB) | LPIPS | s / edit |")
    print("|---|---|---|---|---|")
    for name in guidances:
        guidance = GUIDANCE_METHODS[name].config().setup(prior=prior)
        successes, psnrs, distances, seconds = [], [], [], 0.0
        for first in range(0, count, batch):
            chunk = cases[first : first + batch]
            started = time.perf_counter()
            results, pixels, edited = recolour(prior, guidance, chunk, steps=steps, grad_scale=grad_scale, seed=seed)
            seconds += time.perf_counter() - started
            for case, result in zip(chunk, results, strict=True):
                successes.append(result.after == case.colour)
                psnrs.append(result.background_psnr)
                if verbose:
                    print(
                        f"    {case.sample.caption!r} -> {case.target_caption!r}: {result.before} -> {result.after} "
                        f"(coloured {result.coloured_fraction:.2f}, background {result.background_psnr:.1f} dB)"
                    )
            if lpips is not None:
                distances += lpips(pixels, edited).tolist()
        lpips_text = f"{np.mean(distances):.3f}" if distances else "n/a"
        print(f"| {name} | {100 * np.mean(successes):.0f} % | {np.mean(psnrs):.1f} | {lpips_text} | "
              f"{seconds / count:.2f} |", flush=True)  # fmt: skip


def nerf(steps: int) -> None:
    """ns-train {ids,dds}-edit-demo on the demo scene, then ids-eval."""
    prompt_src = "a photo of a red ball on a grey floor"
    prompt_trg = "a photo of a blue ball on a grey floor"
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        subprocess.run([bin_dir / "ids-demo-scene", folder / "scene", "--size", "64", "--views", "24"], check=True)
        print("(c) NeRF edits of the demo scene (red ball -> blue ball)")
        print("| method | CLIP directional similarity | background PSNR (dB) | wall time (min) |")
        print("|---|---|---|---|")
        for method in ("ids-edit-demo", "dds-edit-demo"):
            started = time.perf_counter()
            subprocess.run([
                bin_dir / "ns-train", method, "--data", folder / "scene", "--output-dir", folder / "outputs",
                "--prompt-src", prompt_src, "--prompt-trg", prompt_trg, "--max-num-iterations", str(steps),
                "--machine.device-type", "cuda" if torch.cuda.is_available() else "cpu", "--vis", "tensorboard",
                "--viewer.quit-on-train-completion", "True",
            ], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            minutes = (time.perf_counter() - started) / 60
            config = next((folder / "outputs").glob(f"scene/{method}/*/config.yml"))
            subprocess.run([bin_dir / "ids-eval", "--load-config", config, "--lpips-net", "tiny"], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
            metrics = json.loads((config.parent / "metrics.json").read_text())["mean"]
            print(f"| {method} | {metrics.get('clip_directional_similarity', float('nan')):.3f} | "
                  f"{metrics.get('background_psnr', float('nan')):.1f} | {minutes:.1f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=24, help="generated samples for (a)")
    parser.add_argument("--edits", type=int, default=10, help="rendered views edited per guidance for (b)")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per 2D edit")
    parser.add_argument(
        "--grad-scale",
        type=float,
        default=PACKAGED_DEFAULT_GRAD_SCALE,
        help="score x grad-scale/(h w) of the latent (ids-edit-image's default for the demo)",
    )
    parser.add_argument("--batch", type=int, default=8, help="views edited together in (b)")
    parser.add_argument("--guidances", nargs="+", default=list(EDIT_GUIDANCES), choices=EDIT_GUIDANCES)
    parser.add_argument("--model", default="demo", help="the prior (demo, or a diffusers folder)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on CUDA), float32, ...")
    parser.add_argument("--verbose", action="store_true", help="print every edit of (b)")
    parser.add_argument("--nerf", action="store_true", help="also run (c), the NeRF edits (tens of minutes on a CPU)")
    parser.add_argument("--nerf-steps", type=int, default=150, help="editing steps of each NeRF edit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prior = StableDiffusionPriorConfig(model=args.model, device=args.device, dtype=args.dtype).setup()
    if args.samples:
        generation(prior, args.samples, args.seed)
    if args.edits:
        edits(prior, args.edits, args.steps, args.grad_scale, args.seed, args.batch, args.guidances, args.verbose)
    if args.nerf:
        nerf(args.nerf_steps)


if __name__ == "__main__":
    main()
