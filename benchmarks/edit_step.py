"""Benchmark one editing step: time and peak memory of nerfacto (full-graph and deferred rendering) and of
Gaussian splats (splatfacto), at several render sizes.

    python benchmarks/edit_step.py                 # CPU: tiny prior, render sizes 64 and 128
    python benchmarks/edit_step.py --prior demo    # CPU: the demo prior
    python benchmarks/edit_step.py --device cuda   # GPU: full-size SD-1.5 UNet (random weights, fp16), also 512

The scene is the procedural demo scene; nerfacto is untrained and the splats are the scene's point cloud (6000
Gaussians; the cost of a step does not depend on the training).
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from guidance_step import full_size_prior

from ids_nerfstudio.demo.scene import write_demo_scene
from ids_nerfstudio.method_configs import ids_edit, ids_edit_demo, ids_splat_edit, ids_splat_edit_demo

MODES = ("full-graph", "deferred", "splat")
"""nerfacto rendered with one graph or deferred, and splatfacto."""


def make_trainer(
    data: Path, output: Path, device: str, render_size: int, mode: str, chunk_size: int, prior: str = "tiny",
    demo: bool = False,
):
    methods = (ids_splat_edit_demo, ids_edit_demo) if demo else (ids_splat_edit, ids_edit)
    config = copy.deepcopy(methods[0 if mode == "splat" else 1].config)
    config.data = config.pipeline.datamanager.data = data
    config.output_dir = output
    config.machine.device_type = device.split(":")[0]
    config.vis = "tensorboard"
    config.pipeline.prompt_src, config.pipeline.prompt_trg = "a photo of balls", "a photo of oranges"
    config.reconstruction_steps = 0
    config.pipeline.prior.model = prior
    config.pipeline.render_size = render_size
    if mode != "splat":
        config.pipeline.render_mode = mode
    config.pipeline.render_chunk_size = chunk_size
    config.set_timestamp()
    return config.setup(local_rank=0, world_size=1)


def measure_one(
    data: Path, output: Path, device: str, size: int, mode: str, chunk_size: int, steps: int, prior: str, demo: bool
) -> None:
    """Time one setting in this (fresh) process and print a RESULT line: seconds per step and peak MiB.

    CUDA: peak allocated memory of the timed steps, weights included. CPU: peak resident memory of the process
    (getrusage) minus the resident memory before the first editing step.
    """
    trainer = make_trainer(data, output, device, size, mode, chunk_size, prior, demo)
    trainer.setup()
    if device.startswith("cuda"):  # full-size SD-1.5 compute instead of the tiny prior
        trainer.pipeline.prior = trainer.pipeline.guidance.prior = full_size_prior(device)
    rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    start_step = int(trainer.pipeline.edit_start_step)
    trainer.train_iteration(start_step)  # warm-up: loads the prior, encodes the source view
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    begin = time.perf_counter()
    for step in range(start_step + 1, start_step + 1 + steps):
        trainer.train_iteration(step)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    print(f"RESULT {size} {mode} {(time.perf_counter() - begin) / steps:.3f} {peak / 2**20:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed editing steps per setting")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="render sizes (short side)")
    parser.add_argument("--chunk-size", type=int, default=4096, help="rays per chunk of the deferred re-render")
    parser.add_argument("--prior", default="tiny", choices=["tiny", "demo"], help="the prior on CPU")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--demo", action="store_true", help="the -demo methods' models (small nerfacto, SH 0 splats)")
    parser.add_argument("--one", nargs=3, metavar=("DATA", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        data, size, mode = args.one
        with tempfile.TemporaryDirectory() as output:
            measure_one(Path(data), Path(output), args.device, int(size), mode, args.chunk_size, args.steps,
                        args.prior, args.demo)  # fmt: skip
        return
    device = torch.device(args.device)
    sizes = args.sizes or ([64, 128, 512] if device.type == "cuda" else [64, 128])
    with tempfile.TemporaryDirectory() as folder:
        data = write_demo_scene(Path(folder, "scene"), size=max(sizes), views=8)
        prior_label = "full-size SD-1.5 (random weights) fp16" if device.type == "cuda" else f"{args.prior} prior fp32"
        memory_label = "CUDA peak allocated, weights included" if device.type == "cuda" else "peak RSS growth"
        models = "the -demo methods' models" if args.demo else "full-size nerfacto and splatfacto"
        print(f"ids editing step on {device}, {models}, {prior_label}, {args.chunk_size} rays per chunk; "
              f"memory: {memory_label}")
        print(f"{'render size':>11s} {'mode':>10s} {'s/step':>8s} {'peak MiB':>9s}")
        for size in sizes:
            for mode in args.modes:  # one process per setting: peaks do not mix
                command = [sys.executable, __file__, "--one", str(data), str(size), mode, "--device", args.device,
                           "--steps", str(args.steps), "--chunk-size", str(args.chunk_size),
                           "--prior", args.prior, *(["--demo"] if args.demo else [])]  # fmt: skip
                result = subprocess.run(command, capture_output=True, text=True)
                lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
                if result.returncode != 0 or not lines:
                    print(f"{size:>11d} {mode:>10s} failed: {result.stderr.strip().splitlines()[-1:]}")
                    continue
                _, _, _, seconds, peak = lines[0].split()
                print(f"{size:>11d} {mode:>10s} {float(seconds):8.2f} {float(peak):9.0f}")


if __name__ == "__main__":
    main()
