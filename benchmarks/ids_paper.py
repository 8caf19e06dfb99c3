"""The IDS paper's experiments in miniature, on the demo prior (offline, CPU, seeded)::

    python benchmarks/ids_paper.py [--views 4] [--steps 100] [--parts roundtrip s1 ablations structure]

- roundtrip (Fig. 3): source -> target -> source; PSNR of the round trip's image to the source image, for DDS with
  t ~ U(0, 0.2) and U(0, 1) and IDS (and the forward leg's colour success).
- roundtrip-sweep: the same round trip for IDS with FPR's lambda 0.1 ... 1 (N 3) and N 1, 5 (lambda 1), and DDS.
- s1 (Fig. S1): the posterior mean's error ||z0|t - z_src|| (per view, mean) as t grows: no FPR, FPR on z_t (exact
  and identity Jacobian), FPR on eps (the same gradient, taken with respect to the injected noise); and the
  distance left after each FPR iteration.
- jacobian: FPR's first step in z_t, exact (autograd through the UNet) against the identity Jacobian's: lengths
  and cosine per t, with CFG 1 and 7.5.
- ablations (Figs. 6-8, S2, S4-S6): recolouring edits of rendered views (demo_prior.py's (b)) with FPR iterations
  0/1/3/5, scale 0.1/0.5/1, steps x1/x2, distance L2/L1/SSIM, the identity Jacobian, and SDS/CDS/PDS without and
  with FPR (N 3, lambda 1); scored by colour success, background PSNR and the IoU of the coloured pixels with the
  ray-traced object masks.
- structure: one-object views, "a <colour> ball" -> "a <colour> cube" and the reverse, with IDS, DDS, CDS and PDS,
  without a mask and with the ray-traced union mask of the source object and the ideal target object (the same
  object with the other shape, ray-traced): centroid shift of the coloured pixels (px), their area over the ideal
  target's, IoU with the ideal target, floor PSNR outside the union mask grown by 2 px, and success (the demo CLIP
  prefers the target caption to the source caption).

The views of each part are edited in one batch (independent samples, each with its own t and noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch

from ids_nerfstudio.demo import DemoSample, render_sample, sample_camera, sample_objects
from ids_nerfstudio.demo.scoring import measure_structure_edit, recolour, recolour_cases, saturated
from ids_nerfstudio.eval.models import ClipEmbedder
from ids_nerfstudio.guidance import CDSConfig, DDSConfig, GuidanceConfig, IDSConfig, PDSConfig, SDSConfig
from ids_nerfstudio.guidance.formulas import add_noise, predict_x0
from ids_nerfstudio.guidance.fpr import fixed_point_regularization
from ids_nerfstudio.guidance.relevance import MaskConfig, given_mask, paste_into_source
from ids_nerfstudio.image_editor import PACKAGED_DEFAULT_GRAD_SCALE, optimise_latent
from ids_nerfstudio.model_names import DEMO
from ids_nerfstudio.prior import StableDiffusionPriorConfig

GRAD_SCALE = PACKAGED_DEFAULT_GRAD_SCALE
LR = 0.1


def images_of(samples: list[DemoSample]) -> tuple[torch.Tensor, list[np.ndarray]]:
    rendered = [render_sample(s) for s in samples]
    return torch.stack([torch.from_numpy(r[0]).permute(2, 0, 1).float() for r in rendered]), [r[1] for r in rendered]


def edit(prior, config: GuidanceConfig, z_src, targets, sources, steps: int, seed: int, mask=None) -> torch.Tensor:
    guidance = config.setup(prior=prior)
    return optimise_latent(guidance, z_src, targets, sources, steps=steps, lr=LR, grad_scale=GRAD_SCALE,
                           generator=torch.Generator().manual_seed(seed), mask=mask)  # fmt: skip


def psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    mse = (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return (10 * torch.log10(1 / mse)).numpy()


def timed(label: str, run: Callable[[], str]) -> None:
    started = time.perf_counter()
    row = run()
    print(f"| {label} | {row} | {time.perf_counter() - started:.0f} |", flush=True)


# ------------------------------------------------------------------------------------------ Fig. 3
ROUNDTRIP_RULES = {
    "DDS, t ~ U(0, 0.2)": DDSConfig(t_min=0.0, t_max=0.2),
    "DDS, t ~ U(0, 1)": DDSConfig(t_min=0.0, t_max=1.0),
    "DDS, t ~ U(0.05, 0.948) (default)": DDSConfig(),
    "IDS": IDSConfig(),
}
ROUNDTRIP_SWEEP = {
    "DDS (default)": DDSConfig(),
    **{f"IDS, lambda {scale:g}, N 3": IDSConfig(fpr_scale=scale) for scale in (0.1, 0.3, 0.5, 1.0)},
    **{f"IDS, lambda 1, N {iters}": IDSConfig(fpr_iters=iters) for iters in (1, 5)},
}
"""The round trip's FPR sweep: lambda at the paper's N = 3, then N at the paper's lambda = 1."""


def roundtrip(prior, views: int, steps: int, seed: int, rules: dict[str, GuidanceConfig]) -> None:
    cases = recolour_cases(views, seed)
    pixels, _ = images_of([c.sample for c in cases])
    with torch.no_grad():
        z_src = prior.encode_images(pixels)
        reconstruction = prior.decode_latents(z_src).float()
    sources, targets = [c.sample.caption for c in cases], [c.target_caption for c in cases]
    print(f"\n### Fig. 3: round trip source -> target -> source ({views} views, {steps} steps per leg)\n")
    print(f"VAE reconstruction alone: {psnr(reconstruction, pixels).mean():.2f} dB\n")
    print("| rule | round-trip PSNR to the source (dB) | forward leg PSNR (dB) | round trip per view (dB) | seconds |")
    print("|---|---|---|---|---|")
    for label, config in rules.items():

        def run(config=config) -> str:
            z_trg = edit(prior, config, z_src, targets, sources, steps, seed)
            z_back = edit(prior, config, z_trg, sources, targets, steps, seed + 1)
            with torch.no_grad():
                forward, back = prior.decode_latents(z_trg).float(), prior.decode_latents(z_back).float()
            per_view = " / ".join(f"{v:.1f}" for v in psnr(back, pixels))
            return f"{psnr(back, pixels).mean():.2f} | {psnr(forward, pixels).mean():.2f} | {per_view}"

        timed(label, run)


# ------------------------------------------------------------------------------------------ Fig. S1
def posterior_mean_error(prior, views: int, seed: int) -> None:
    cases = recolour_cases(views, seed)
    pixels, _ = images_of([c.sample for c in cases])
    alphas_cumprod = prior.alphas_cumprod
    with torch.no_grad():
        z_src = prior.encode_images(pixels)
    text = prior.encode_text([c.sample.caption for c in cases])
    noise = torch.randn(z_src.shape, generator=torch.Generator().manual_seed(seed))
    print(f"\n### Fig. S1: posterior mean error ||z0|t - z_src|| (mean over {views} views; ||z_src|| = "
          f"{z_src.flatten(1).norm(dim=1).mean():.1f}), FPR N 3, lambda 1, CFG 7.5\n")  # fmt: skip
    print("| t | no FPR | FPR on z_t (exact) | FPR on z_t (identity J) | FPR on eps | exact: after each iteration "
          "| identity: after each iteration |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for t_value in (50, 200, 400, 600, 800, 948):
        t = torch.full((views,), t_value)

        def score(z, t=t):
            return prior.predict_noise(z, t, text, 7.5)

        def error(z_t, t=t) -> tuple[float, torch.Tensor]:
            with torch.no_grad():
                distance = (predict_x0(z_t, score(z_t), t, alphas_cumprod) - z_src).flatten(1).norm(dim=1)
            return float(distance.mean()), distance

        z_t = add_noise(z_src, noise, t, alphas_cumprod)
        cells, trails = [error(z_t)[0]], []
        for jacobian in ("exact", "identity"):
            corrected, before = fixed_point_regularization(score, z_t, z_src, t, alphas_cumprod, iters=3, scale=1.0,
                                                           jacobian=jacobian)  # fmt: skip
            final, last = error(corrected)
            cells.append(final)
            trails.append(" / ".join(f"{v:.1f}" for v in [*before.mean(1).tolist(), float(last.mean())]))
        # FPR on eps: eps <- eps - lambda d/d eps = eps - lambda sqrt(1 - a) d/d z_t, i.e. z_t moves by (1 - a) times
        one_minus_a = float(1 - alphas_cumprod[t_value])
        corrected, _ = fixed_point_regularization(score, z_t, z_src, t, alphas_cumprod, iters=3, scale=one_minus_a)
        cells.append(error(corrected)[0])
        print(f"| {t_value} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {trails[0]} | {trails[1]} |")


# ------------------------------------------------------------------------------------------ the identity Jacobian
def jacobian_check(prior, views: int, seed: int) -> None:
    """The first FPR step in z_t, exact (autograd through the UNet) against the identity Jacobian's, per t."""
    cases = recolour_cases(views, seed)
    pixels, _ = images_of([c.sample for c in cases])
    alphas_cumprod = prior.alphas_cumprod
    with torch.no_grad():
        z_src = prior.encode_images(pixels)
    text = prior.encode_text([c.sample.caption for c in cases])
    noise = torch.randn(z_src.shape, generator=torch.Generator().manual_seed(seed))
    print(f"\n### FPR's first step in z_t: exact against identity Jacobian (mean of {views} views, lambda 1)\n")
    print("| CFG | t | identity step length (1/sqrt(a)) | exact step length | cosine(exact, identity) |")
    print("|---|---|---|---|---|")
    for cfg in (1.0, 7.5):
        for t_value in (50, 200, 400, 600, 800, 948):
            t = torch.full((views,), t_value)
            z_t = add_noise(z_src, noise, t, alphas_cumprod)
            steps = [z_t - fixed_point_regularization(lambda z, t=t, cfg=cfg: prior.predict_noise(z, t, text, cfg), z_t,
                                                      z_src, t, alphas_cumprod, iters=1, scale=1.0,
                                                      jacobian=jacobian)[0]
                     for jacobian in ("exact", "identity")]  # fmt: skip
            exact, identity = (s.flatten(1) for s in steps)
            cosine = torch.nn.functional.cosine_similarity(exact, identity, dim=1).mean()
            print(f"| {cfg:g} | {t_value} | {identity.norm(dim=1).mean():.2f} | {exact.norm(dim=1).mean():.2f} | "
                  f"{cosine:.3f} |")  # fmt: skip


# ------------------------------------------------------------------------------------------ ablations
def recolour_scores(prior, config: GuidanceConfig, cases, steps: int, seed: int) -> str:
    results, _, edited = recolour(prior, config.setup(prior=prior), cases, steps=steps, grad_scale=GRAD_SCALE,
                                  seed=seed)  # fmt: skip
    ious = []
    for case, image in zip(cases, edited, strict=True):
        union = render_sample(case.sample)[1].any(0)
        found = saturated(image.permute(1, 2, 0).numpy())
        ious.append((found & union).sum() / max((found | union).sum(), 1))
    success = np.mean([r.after == c.colour for r, c in zip(results, cases, strict=True)])
    return f"{100 * success:.0f} % | {np.mean([r.background_psnr for r in results]):.2f} | {np.mean(ious):.3f}"


def ablations(prior, views: int, steps: int, seed: int) -> None:
    cases = recolour_cases(views, seed)
    print(f"\n### Ablations: recolouring {views} rendered views ({steps} steps unless noted)\n")
    print("| setting | colour success | background PSNR (dB) | object IoU | seconds |")
    print("|---|---|---|---|---|")
    rows: dict[str, tuple[GuidanceConfig, int]] = {
        "Fig. 6: FPR iterations 0 (DDS)": (DDSConfig(), steps),
        "Fig. 6: FPR iterations 1": (IDSConfig(fpr_iters=1), steps),
        "Fig. 6/7: FPR iterations 3, scale 1 (IDS)": (IDSConfig(), steps),
        "Fig. 6: FPR iterations 5": (IDSConfig(fpr_iters=5), steps),
        "Fig. 7: scale 0.1": (IDSConfig(fpr_scale=0.1), steps),
        "Fig. 7: scale 0.5": (IDSConfig(fpr_scale=0.5), steps),
        f"Fig. 8: IDS, {2 * steps} steps": (IDSConfig(), 2 * steps),
        f"Fig. 8: DDS, {2 * steps} steps": (DDSConfig(), 2 * steps),
        "Fig. S2: distance L1": (IDSConfig(fpr_distance="l1"), steps),
        "Fig. S2: distance SSIM": (IDSConfig(fpr_distance="ssim"), steps),
        "FPR identity Jacobian (IDS)": (IDSConfig(fpr_jacobian="identity"), steps),
        "Fig. S4: SDS": (SDSConfig(), steps),
        "Fig. S4: SDS + FPR": (SDSConfig(fpr_iters=3), steps),
        "Fig. S5: CDS": (CDSConfig(), steps),
        "Fig. S5: CDS + FPR": (CDSConfig(fpr_iters=3), steps),
        "Fig. S6: PDS": (PDSConfig(), steps),
        "Fig. S6: PDS + FPR": (PDSConfig(fpr_iters=3), steps),
    }
    for label, (config, n) in rows.items():
        timed(label, lambda config=config, n=n: recolour_scores(prior, config, cases, n, seed))


# ------------------------------------------------------------------------------------------ structure
def structure_cases(views: int, seed: int, shape: str) -> list[tuple[DemoSample, DemoSample]]:
    """One-object views with a ``shape`` and the same views with the other shape (the ideal edit)."""
    rng = np.random.default_rng(seed)
    other = "cube" if shape == "ball" else "ball"
    cases = []
    for _ in range(views):
        obj = dataclasses.replace(sample_objects(rng, 1)[0], shape=shape)
        pose = sample_camera(rng)
        cases.append((DemoSample((obj,), pose), DemoSample((dataclasses.replace(obj, shape=other),), pose)))
    return cases


STRUCTURE_RULES = {"ids": IDSConfig, "dds": DDSConfig, "cds": CDSConfig, "pds": PDSConfig,
                   "ids-identity": lambda: IDSConfig(fpr_jacobian="identity")}  # fmt: skip


def structure(prior, views: int, steps: int, seed: int, rules: list[str]) -> None:
    clip = ClipEmbedder(DEMO)
    print(f"\n### Structure edit: ball <-> cube, {views} one-object views per direction, {steps} steps\n")
    print("| direction | rule | mask | success (demo CLIP) | centroid shift (px) | area / ideal | IoU with ideal "
          "| floor PSNR (dB) | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in ("ball", "cube"):
        cases = structure_cases(views, seed, shape)
        pixels, source_masks = images_of([s for s, _ in cases])
        _, ideal_masks = images_of([i for _, i in cases])
        sources, targets = [s.caption for s, _ in cases], [i.caption for _, i in cases]
        with torch.no_grad():
            z_src = prior.encode_images(pixels)
            texts = clip.texts([*sources, *targets])
        union = [s[0] | i[0] for s, i in zip(source_masks, ideal_masks, strict=True)]
        latent_union = given_mask(torch.from_numpy(np.stack(union))[:, None].float(), z_src,
                                  MaskConfig(source="true"))  # fmt: skip
        data = {"pixels": pixels, "z_src": z_src, "sources": sources, "targets": targets, "texts": texts,
                "source_masks": [m[0] for m in source_masks], "ideal_masks": [m[0] for m in ideal_masks],
                "latent_union": latent_union}  # fmt: skip
        for rule in rules:
            config = STRUCTURE_RULES[rule]()
            for masked in (False, True):
                label = f"{shape} -> {'cube' if shape == 'ball' else 'ball'} | {rule} | {'on' if masked else 'off'}"
                timed(label, lambda c=config, m=masked, d=data: structure_scores(prior, clip, c, m, d, steps, seed))


def structure_scores(prior, clip: ClipEmbedder, config: GuidanceConfig, masked: bool, data: dict, steps: int,
                     seed: int) -> str:  # fmt: skip
    """One row of the structure table: the edit of ``data``'s views with ``config``, measured."""
    views, pixels = len(data["sources"]), data["pixels"]
    mask = data["latent_union"] if masked else None
    z = edit(prior, config, data["z_src"], data["targets"], data["sources"], steps, seed, mask)
    with torch.no_grad():
        edited = prior.decode_latents(z).float()
    if masked:
        edited = paste_into_source(edited, pixels, mask)
    embedded = clip.images(edited)
    texts = data["texts"]
    prefers = (embedded * texts[views:]).sum(1) > (embedded * texts[:views]).sum(1)
    before, after = pixels.permute(0, 2, 3, 1).numpy(), edited.permute(0, 2, 3, 1).numpy()
    measured = [measure_structure_edit(before[k], after[k], data["source_masks"][k], data["ideal_masks"][k])
                for k in range(views)]  # fmt: skip
    return (f"{100 * prefers.float().mean():.0f} % | {np.nanmean([m.centroid_shift for m in measured]):.2f} | "
            f"{np.mean([m.area_ratio for m in measured]):.2f} | {np.mean([m.iou_ideal for m in measured]):.3f} | "
            f"{np.mean([m.floor_psnr for m in measured]):.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=4, help="views per experiment (one batch)")
    parser.add_argument("--steps", type=int, default=100, help="optimisation steps per edit")
    parts = ["roundtrip", "roundtrip-sweep", "s1", "jacobian", "ablations", "structure"]
    parser.add_argument("--parts", nargs="+", default=["roundtrip", "s1", "ablations", "structure"], choices=parts)
    parser.add_argument("--structure-rules", nargs="+", default=["ids", "dds", "cds", "pds"],
                        choices=list(STRUCTURE_RULES))  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prior = StableDiffusionPriorConfig(model=DEMO, device="cpu", dtype="float32").setup()
    print(f"demo prior, CPU, lr {LR}, score x {GRAD_SCALE:g}/(h w), seed {args.seed}")
    parts = {
        "roundtrip": lambda: roundtrip(prior, args.views, args.steps, args.seed, ROUNDTRIP_RULES),
        "roundtrip-sweep": lambda: roundtrip(prior, args.views, args.steps, args.seed, ROUNDTRIP_SWEEP),
        "s1": lambda: posterior_mean_error(prior, args.views, args.seed),
        "jacobian": lambda: jacobian_check(prior, args.views, args.seed),
        "ablations": lambda: ablations(prior, args.views, args.steps, args.seed),
        "structure": lambda: structure(prior, args.views, args.steps, args.seed, args.structure_rules),
    }
    for part in args.parts:
        parts[part]()


if __name__ == "__main__":
    main()
