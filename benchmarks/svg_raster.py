"""Benchmark the vector rasterizer: time of one render + backward (an SVG editing step without the diffusion model)
and its peak memory, by render size and by number of paths.

    python benchmarks/svg_raster.py                  # CPU
    python benchmarks/svg_raster.py --device cuda    # GPU

Scenes: the demo-world drawing (``demo/drawing.py``: sky, floor, 86 floor tiles, 4 ball rings: 93 paths) at 64,
256 and 512 px; and N random semi-transparent circles (4 cubics each, radius 4-16 % of the side) at 256 px, with
solid or radial gradient fills.
2 x 2 supersamples, as the SVG editor renders.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from _common import PeakMemory

from ids_nerfstudio.demo.drawing import demo_world_svg
from ids_nerfstudio.svg_editor import move_scene
from ids_nerfstudio.vector import FilledPath, GradientFill, RasterSettings, VectorScene, read_svg, render


def random_circles(count: int, seed: int = 0, gradient: bool = False) -> VectorScene:
    """``count`` circles on a 100 x 100 canvas, each 4 cubics (the usual quarter-arc approximation); solid fills, or
    radial gradients (two stops, an off-centre focal point) with ``gradient``."""
    generator = torch.Generator().manual_seed(seed)
    k = 4 / 3 * math.tan(math.pi / 8)
    unit = []
    for i in range(4):  # quarter arcs: end point, then its two controls
        a, b = i * math.pi / 2, (i + 1) * math.pi / 2
        unit += [(math.cos(a), math.sin(a)), (math.cos(a) - k * math.sin(a), math.sin(a) + k * math.cos(a)),
                 (math.cos(b) + k * math.sin(b), math.sin(b) - k * math.cos(b))]  # fmt: skip
    unit = torch.tensor(unit)
    paths = []
    for _ in range(count):
        centre, radius = torch.rand(2, generator=generator) * 100, 4 + 12 * torch.rand(1, generator=generator)
        colour = torch.cat([torch.rand(3, generator=generator), torch.tensor([0.7])])
        if not gradient:
            paths.append(FilledPath([centre + radius * unit], colour))
            continue
        fill = GradientFill("radial", torch.cat([centre, radius, centre - 0.3 * radius]),
                            torch.tensor([1.0, 0, 0, 1, 0, 0]), torch.tensor([0.0, 1.0]),
                            torch.stack([torch.tensor([1.0, 1.0, 1.0, 0.7]), colour]))  # fmt: skip
        paths.append(FilledPath([centre + radius * unit], None, gradient=fill))
    return VectorScene(100.0, 100.0, paths)


def measure(scene: VectorScene, size: int, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds of render + backward, peak memory in MiB) of one step."""
    move_scene(scene, device)
    for tensor in [*scene.point_tensors(), *scene.color_tensors()]:
        tensor.requires_grad_(True)
    weights = torch.rand(3, size, size, device=device)
    times, peak = [], 0.0
    for _ in range(repeats + 1):  # the first is a warm-up
        with PeakMemory(device) as memory:
            started = time.perf_counter()
            (render(scene, size, size, RasterSettings(samples=2)) * weights).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
        peak = max(peak, memory.peak / 2**20)
    return statistics.median(times[1:]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    print("| scene | paths | size | render + backward (ms) | peak memory (MiB) |\n|---|---|---|---|---|")
    for size in (64, 256, 512):
        scene = read_svg(demo_world_svg())
        seconds, peak = measure(scene, size, device, args.repeats)
        print(f"| demo drawing | {len(scene.paths)} | {size} | {seconds * 1000:.0f} | {peak:.0f} |")
    for count in (1, 10, 100, 300):
        seconds, peak = measure(random_circles(count), 256, device, args.repeats)
        print(f"| random circles | {count} | 256 | {seconds * 1000:.0f} | {peak:.0f} |")
    for count in (10, 100):
        seconds, peak = measure(random_circles(count, gradient=True), 256, device, args.repeats)
        print(f"| random circles, radial gradient fills | {count} | 256 | {seconds * 1000:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
