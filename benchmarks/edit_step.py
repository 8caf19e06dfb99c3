"""Benchmark one ids-edit step: time and peak memory of full-graph vs deferred rendering at several render sizes.

    python benchmarks/edit_step.py                 # CPU: tiny prior, render sizes 64 and 128
    python benchmarks/edit_step.py --device cuda   # GPU: full-size SD-1.5 UNet (random weights, fp16), also 512

The scene is the procedural demo scene; nerfacto is untrained (the cost of a step does not depend on it).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from _common import PeakMemory
from guidance_step import full_size_prior

from ids_nerfstudio.scenes import write_demo_scene
from method_configs import ids_edit


def make_trainer(data: Path, output: Path, device: str, render_size: int, render_mode: str, chunk_size: int):
    config = copy.deepcopy(ids_edit.config)
    config.data = config.pipeline.datamanager.data = data
    config.output_dir = output
    config.machine.device_type = device.split(":")[0]
    config.vis = "tensorboard"
    config.prompt_src, config.prompt_trg = "a photo of balls", "a photo of oranges"
    config.reconstruction_steps = 0
    config.pipeline.prior.model = "tiny"
    config.pipeline.render_size = render_size
    config.pipeline.render_mode = render_mode
    config.pipeline.render_chunk_size = chunk_size
    config.set_timestamp()
    return config.setup(local_rank=0, world_size=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed editing steps per setting")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="render sizes (short side)")
    parser.add_argument("--chunk-size", type=int, default=4096, help="rays per chunk of the deferred re-render")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = args.sizes or ([64, 128, 512] if device.type == "cuda" else [64, 128])

    with tempfile.TemporaryDirectory() as folder:
        data = write_demo_scene(Path(folder, "scene"), size=max(sizes), views=8)
        prior_label = "full-size SD-1.5 UNet fp16" if device.type == "cuda" else "tiny prior fp32"
        print(
            f"ids-edit step on {device}, {prior_label}; memory: "
            f"{'CUDA peak allocated' if device.type == 'cuda' else 'sampled RSS growth'}"
        )
        print(f"{'render size':>11s} {'mode':>10s} {'s/step':>8s} {'peak MiB':>9s}")
        for size in sizes:
            for mode in ("full-graph", "deferred"):
                trainer = make_trainer(data, Path(folder, "runs"), args.device, size, mode, args.chunk_size)
                trainer.setup()
                if device.type == "cuda":  # full-size SD-1.5 compute instead of the tiny prior
                    trainer.pipeline.prior = full_size_prior(args.device)
                    trainer.pipeline.guidance.prior = trainer.pipeline.prior
                start_step = int(trainer.pipeline.edit_start_step)
                trainer.train_iteration(start_step)  # warm-up (loads the prior, encodes the source view)
                with PeakMemory(device) as memory:
                    begin = time.perf_counter()
                    for step in range(start_step + 1, start_step + 1 + args.steps):
                        trainer.train_iteration(step)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds = (time.perf_counter() - begin) / args.steps
                print(f"{size:>11d} {mode:>10s} {seconds:8.2f} {memory.peak / 2**20:9.0f}")
                del trainer
                if device.type == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
