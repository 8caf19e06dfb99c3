"""PDS's toy (PDS paper, Fig. 3) with the real guidance rules: a table and a picture of the trajectories.

    python benchmarks/pds_toy.py [--points 32] [--steps 200] [--picture docs/pds-toy.png]

Trains the 2-D class-conditional toy prior (ids_nerfstudio/prior/toy.py, seconds on a CPU), then edits points of
class a toward class b with SDS, DDS, IDS (exact and identity FPR Jacobian) and PDS at CFG 1 and 7.5 (SGD lr 0.1,
score x 1). Per rule: mean distance to b's mode, mean error against the translated source (source + the mode
shift: the edit that keeps each point's offset), the mean move along the shift, and the spread across it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch

from ids_nerfstudio.guidance import DDSConfig, IDSConfig, PDSConfig, SDSConfig
from ids_nerfstudio.image_editor import optimise_latent
from ids_nerfstudio.prior.toy import ToyPriorConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RULES = {
    "sds": SDSConfig,
    "dds": DDSConfig,
    "ids": IDSConfig,
    "ids (identity J)": lambda **kw: IDSConfig(fpr_jacobian="identity", **kw),
    "pds": PDSConfig,
}
COLOURS = {"sds": "tab:orange", "dds": "tab:green", "ids": "tab:purple", "ids (identity J)": "tab:pink",
           "pds": "tab:blue"}  # fmt: skip


def run(prior, z_src, rule, scale: float, steps: int) -> np.ndarray:
    """The trajectory (steps + 1, N, 2) of every point."""
    guidance = RULES[rule](guidance_scale=scale).setup(prior=prior)
    path = [z_src.flatten(1).clone()]
    optimise_latent(guidance, z_src, "b", "a", steps=steps, lr=0.1, grad_scale=1.0,
                    generator=torch.Generator().manual_seed(0),
                    after_step=lambda _s, _o, z: path.append(z.detach().flatten(1).clone()))  # fmt: skip
    return torch.stack(path).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 7.5])
    parser.add_argument("--picture", type=Path, default=None, help="write the trajectories as a PNG")
    args = parser.parse_args()
    torch.set_num_threads(1)
    prior = ToyPriorConfig().setup()
    z_src = prior.sample(0, args.points, torch.Generator().manual_seed(1))
    source = z_src.flatten(1).numpy()
    mode_b = prior.means[1].numpy()
    shift = mode_b - prior.means[0].numpy()
    paths = {}
    print("| CFG | rule | to b's mode | to source + shift | move along shift | spread across (source "
          f"{source[:, 1].std():.2f}) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for scale in args.scales:
        for rule in RULES:
            path = paths[scale, rule] = run(prior, z_src, rule, scale, args.steps)
            end = path[-1]
            print(f"| {scale:g} | {rule} | {np.linalg.norm(end - mode_b, axis=1).mean():.2f} | "
                  f"{np.linalg.norm(end - source - shift, axis=1).mean():.2f} | {(end - source)[:, 0].mean():.2f} | "
                  f"{end[:, 1].std():.2f} |")  # fmt: skip
    if args.picture:
        grid = np.stack(np.meshgrid(np.linspace(-2, 7, 300), np.linspace(-1.5, 1.5, 100)), -1)
        flat = torch.from_numpy(grid.reshape(-1, 2)).float()
        density = sum(prior.log_density(flat, k).exp() for k in range(2)).reshape(grid.shape[:2]).numpy()
        figure, axes = plt.subplots(len(args.scales), 1, figsize=(10, 2.6 * len(args.scales)), squeeze=False)
        for ax, scale in zip(axes[:, 0], args.scales, strict=True):
            ax.contourf(grid[..., 0], grid[..., 1], density, levels=12, cmap="Greys")
            ax.text(-1, 1.2, "class a", ha="center")
            ax.text(1, 1.2, "class b", ha="center")
            for rule in (r for r in RULES if r != "ids (identity J)"):  # far off the frame at CFG 7.5
                path = paths[scale, rule]
                for k in range(0, path.shape[1], 4):
                    ax.plot(path[:, k, 0], path[:, k, 1], color=COLOURS[rule], lw=0.7, alpha=0.7)
                ax.scatter(path[-1, :, 0], path[-1, :, 1], color=COLOURS[rule], s=8, label=rule)
            ax.scatter(source[:, 0], source[:, 1], color="red", s=8, label="source")
            ax.set_xlim(-2, 7)
            ax.set_ylim(-1.5, 1.5)
            ax.set_aspect("equal")
            ax.set_title(f"a -> b, CFG {scale:g}, {args.steps} steps (every 4th trajectory drawn; ends: dots)")
            ax.legend(loc="lower right", fontsize=7, ncol=3)
        figure.tight_layout()
        figure.savefig(args.picture, dpi=110)
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
