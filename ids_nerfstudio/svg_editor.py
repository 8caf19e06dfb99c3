"""The SVG editor (library of ``ids-edit-svg``): edit a vector image's points and fill colours with any guidance.

PDS's SVG editing (official ``svg_editing/pds_svg.py``) without diffvg: each step renders the paths with the
PyTorch rasterizer of ``vector/`` (2 x 2 supersamples over white), VAE-encodes the render *with* gradient, and
back-propagates the guidance loss through the encoder and the rasterizer into the control points and the RGBA fills;
Adam on each (points lr 0.8 px of a 512 px picture, as the official on its 512-unit canvases, converted to the SVG's
units; colours lr 0.01 clamped to [0, 1]). The loss is the official one, the score times
``1 / (C h w)`` of the latent (``0.5 * mse(reduction="mean")``); Adam makes its scale matter little. What differs
from ``image_editor`` is only this loop: the prior, masks, metrics and outputs are the image editor's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro
from jaxtyping import Float
from PIL import Image
from tqdm.auto import tqdm

from ids_nerfstudio.errors import UserError, check_number
from ids_nerfstudio.eval.edit_metrics import EditMetrics
from ids_nerfstudio.files import write_atomic
from ids_nerfstudio.guidance import Guidance, GuidanceConfig, GuidanceOutput, PDSConfig
from ids_nerfstudio.guidance.relevance import MaskConfig
from ids_nerfstudio.image_editor import (
    PACKAGED_DEFAULT_SIZE,
    check_writable,
    edit_mask,
    prior_config,
    validate_shared,
)
from ids_nerfstudio.images import fit_size, mask_to_pil, to_pil
from ids_nerfstudio.model_names import has_random_weights, is_packaged
from ids_nerfstudio.prior.base import DiffusionPrior
from ids_nerfstudio.sheets import side_by_side
from ids_nerfstudio.vector import RasterSettings, VectorScene, read_svg, render, write_svg

DEFAULT_GUIDANCE = "pds"
DEFAULT_SIZE = 512
"""The official working size (short side) with Stable Diffusion."""
POINT_LR_SIDE = 512
"""--point-lr is in pixels of a picture of this short side: the official lr 0.8 moves the points of its 512-unit
canvases (rendered at 512 px) 0.8 px per step."""
STYLE_SUFFIXES = {
    "iconography": ". minimal flat 2d vector image. lineal color. trending on artstation",
    "pixelart": ". pixel art. trending on artstation",
    "none": "",
}
"""What the official ``--style`` appends to both prompts (pixelart also keeps the points fixed)."""


def pds_svg_defaults() -> PDSConfig:
    """PDS as the official SVG editor runs it: t index in [0.1, 0.98] of a 500-step DDIM grid, CFG 100."""
    return PDSConfig(guidance_scale=100.0, num_ddim_steps=500, t_min=0.1, t_max=0.98)


@dataclass
class SvgEditSettings:
    """Edit an SVG's path points and fill colours from a source prompt to a target prompt."""

    svg: Path
    """Source SVG: its filled shapes are edited, solid or gradient fills (strokes, text, images and patterns are named
    and left out)."""
    prompt_trg: str
    """Target prompt (for csd with InstructPix2Pix: the edit instruction)."""
    prompt_src: str = ""
    """Prompt describing the source SVG."""
    guidance: tyro.conf.Suppress[str] = DEFAULT_GUIDANCE
    """Guidance method: the subcommand (its own flags are listed by ``ids-edit-svg NAME -h``)."""
    style: Literal["iconography", "pixelart", "none"] = "iconography"
    """The official styles: iconography appends ". minimal flat 2d vector image. lineal color. trending on
    artstation" to both prompts; pixelart appends ". pixel art. trending on artstation" and edits colours only."""
    steps: int = 1000
    """Optimisation steps."""
    point_lr: float = 0.8
    """Adam learning rate of the control points, in pixels of the picture drawn 512 px on its short side (the
    official 0.8 on its 512-unit canvases), whatever the SVG's units and --size: the points move by the same share
    of the picture."""
    color_lr: float = 0.01
    """Adam learning rate of the RGBA fills (clamped to [0, 1] after each step)."""
    size: int | None = None
    """Short side of the render the guidance sees, in pixels (default 512; 64 with --model demo or tiny)."""
    samples: int = 2
    """Supersamples per pixel along each axis (official: 2)."""
    seed: int = 0
    """Seed of the timestep and noise draws."""
    output: Path | None = None
    """Output folder (default: outputs/edit-svg/<svg name>-<guidance>)."""
    model: str | None = None
    """Diffusion model: hub id or local diffusers folder (default: SD 1.5; InstructPix2Pix for csd); "demo" (the
    packaged prior learned on the demo world, offline, CPU) or "tiny" (random weights, smoke tests only)."""
    image_guidance_scale: float = 1.5
    """CFG scale of the source-image condition (csd with InstructPix2Pix only)."""
    device: str = "auto"
    """Device of the diffusion model, the rasterizer and the SVG's tensors ("auto": CUDA if available)."""
    eval: bool = False
    """Also measure the edit (LPIPS and PSNR to the source render, CLIP score and directional similarity, time,
    peak GPU memory) into <output>/metrics.json."""
    clip_model: str | None = None
    """CLIP model of --eval (default openai/clip-vit-large-patch14; with --model demo or tiny, the CLIP of that
    name)."""
    lpips_net: str | None = None
    """LPIPS network of --eval: alex, vgg or squeeze (default alex; tiny with --model tiny)."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """A local edit: --mask.source auto (the prior's relevance map) or a mask image (white: edit) of the render's
    size; the guidance gradient is multiplied by it, only the paths with at least half of their area inside it are
    edited, and mask.png is written."""


def validate(settings: SvgEditSettings, guidance_config: GuidanceConfig) -> None:
    """Check every input before any model is loaded or anything is written."""
    validate_shared(settings, guidance_config)
    check_number("--point-lr", settings.point_lr)
    check_number("--color-lr", settings.color_lr)
    if settings.samples < 1:
        raise UserError(f"--samples must be at least 1, got {settings.samples}")
    if not settings.svg.is_file():
        raise UserError(f"--svg: no SVG file {settings.svg}; pass an existing .svg file")


def edit_svg(settings: SvgEditSettings, guidance_config: GuidanceConfig) -> Path:
    """Run the edit; returns the output folder (holding edit.svg, edit.png and strip.png)."""
    validate(settings, guidance_config)
    with warnings.catch_warnings(record=True) as left_out:  # what is not drawn: one line, as the CLI's warnings
        warnings.simplefilter("always")
        scene = read_svg(settings.svg)  # a bad SVG fails here, before a model is loaded or a file written
    for warning in left_out:
        print(f"ids-edit-svg: warning: {warning.message}", file=sys.stderr)
    output = settings.output or Path("outputs", "edit-svg", f"{settings.svg.stem}-{settings.guidance}")
    check_writable(output)
    if has_random_weights(settings.model):
        print(f"WARNING: --model {settings.model} is a tiny RANDOM-WEIGHT model for smoke tests: the result is noise, "
              "not an edit.", file=sys.stderr)  # fmt: skip
    if settings.eval:  # load the metric networks first: a missing one fails before a long edit
        metrics = EditMetrics.for_prior(settings.model, settings.clip_model, settings.lpips_net)
    suffix = STYLE_SUFFIXES[settings.style]
    prompt_src, prompt_trg = settings.prompt_src + suffix, settings.prompt_trg + suffix
    prior = prior_config(settings).setup()
    for line in prior.prompt_warnings([prompt_src, prompt_trg]):  # loads the prior
        print(f"ids-edit-svg: warning: {line}", file=sys.stderr)
    scene = move_scene(scene, prior.device)
    short_side = settings.size or (PACKAGED_DEFAULT_SIZE if is_packaged(settings.model) else DEFAULT_SIZE)
    width, height = fit_size(scene.width, scene.height, short_side, prior.size_multiple)  # aspect ratio kept
    raster = RasterSettings(samples=settings.samples)
    with torch.no_grad():
        pixels = render(scene, height, width, raster)[None]
        z_src = prior.encode_images(pixels).float()
    guidance = guidance_config.setup(prior=prior)
    edit_masks = edit_mask(settings, prior, z_src, pixels.cpu(), (width, height))
    mask = None if edit_masks is None else edit_masks.latent
    editable = None if mask is None else paths_in_mask(scene, mask, (height, width), raster)
    started = time.perf_counter()
    progress = tqdm(total=settings.steps, desc=f"{settings.guidance} svg edit", unit="step", dynamic_ncols=True)

    def after_step(_step: int, out: GuidanceOutput) -> None:
        progress.update()
        progress.set_postfix(loss=f"{out.loss.item():.4g}", t=int(out.t[0]))

    with progress:
        optimise_scene(
            guidance, prior, scene, z_src, prompt_trg, prompt_src, size=(height, width), raster=raster,
            steps=settings.steps, point_lr=0.0 if settings.style == "pixelart" else point_lr_units(settings, scene),
            color_lr=settings.color_lr, generator=torch.Generator().manual_seed(settings.seed), mask=mask,
            editable=editable, after_step=after_step,
        )  # fmt: skip
    with torch.no_grad():
        edited = render(scene, height, width, raster)[None].float().cpu()
    seconds = time.perf_counter() - started
    source, edit = to_pil(pixels.float().cpu()), to_pil(edited)
    write_atomic(output / "edit.svg", lambda path: write_svg(scene, path))
    write_atomic(output / "edit.png", edit.save)
    pictures: list[Image.Image] = [source, edit]
    if mask is not None:
        pictures.append(mask_to_pil(mask, height, width))
        write_atomic(output / "mask.png", pictures[-1].save)
    write_atomic(output / "strip.png", side_by_side(pictures).save)
    if settings.eval:
        values = metrics(pixels.float().cpu(), edited, settings.prompt_src, settings.prompt_trg)[0]
        values.update(seconds=seconds, steps=settings.steps, guidance=settings.guidance)
        if prior.device.type == "cuda":
            values["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(prior.device) / 2**20
        write_atomic(output / "metrics.json", lambda p: p.write_text(json.dumps(values, indent=2)))
    return output


def point_lr_units(settings: SvgEditSettings, scene: VectorScene) -> float:
    """--point-lr (pixels of a 512 px picture) in the SVG's user units: Adam moves a point about its learning rate
    per step while its gradient keeps its sign, so the lr sets how far the points travel, in the picture's scale."""
    return settings.point_lr * min(scene.width, scene.height) / POINT_LR_SIDE


def paths_in_mask(
    scene: VectorScene, mask: Float[torch.Tensor, "1 1 h w"], size: tuple[int, int], raster: RasterSettings
) -> list[bool]:
    """Which paths a masked edit changes: those with at least half of their drawn area inside the mask.

    A path is one set of parameters however far it reaches: multiplying the guidance gradient by the mask (as the
    image editor does) still moves a background path that only touches the masked region, everywhere. The mask is
    enlarged bilinearly to the render's size, as ``paste_into_source`` does.
    """
    weight = F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    chosen = []
    with torch.no_grad():
        for path in scene.paths:
            black = path.subpaths[0].new_tensor([0.0, 0.0, 0.0, 1.0])
            alone = VectorScene(scene.width, scene.height, [dataclasses.replace(path, color=black, gradient=None)])
            coverage = 1 - render(alone, *size, raster)[0]
            chosen.append(bool((coverage * weight.to(coverage.device)).sum() >= 0.5 * coverage.sum().clamp_min(1e-6)))
    return chosen


def move_scene(scene: VectorScene, device: torch.device) -> VectorScene:
    """The scene's tensors on ``device`` (float32), as leaves the optimiser can own."""
    for path in scene.paths:
        path.subpaths = [points.to(device, torch.float32) for points in path.subpaths]
        if path.gradient is None:
            path.color = path.color.to(device, torch.float32)
        else:
            path.gradient = dataclasses.replace(path.gradient, **{
                key: getattr(path.gradient, key).to(device, torch.float32)
                for key in ("geometry", "transform", "offsets", "stops")
            })  # fmt: skip
    return scene


def optimise_scene(
    guidance: Guidance,
    prior: DiffusionPrior,
    scene: VectorScene,
    z_src: torch.Tensor,
    prompt_trg: str,
    prompt_src: str,
    *,
    size: tuple[int, int],
    raster: RasterSettings,
    steps: int,
    point_lr: float,
    color_lr: float,
    generator: torch.Generator,
    mask: Float[torch.Tensor, "1 1 h w"] | None = None,
    editable: list[bool] | None = None,
    after_step: Callable[[int, GuidanceOutput], None] | None = None,
) -> VectorScene:
    """Adam on the scene's points and colours (in place), through the rasterizer and the VAE encoder.

    A learning rate of 0 leaves that group out (pixelart: colours only); ``editable`` (one flag per path) leaves
    the other paths as they are. Colours are clamped to [0, 1] after every step, as the official
    ``clip_curve_shape``; a gradient's stop colours are its colour parameters.
    """
    chosen = [path for path, edit in zip(scene.paths, editable or [True] * len(scene.paths), strict=True) if edit]
    points = [tensor for path in chosen for tensor in path.subpaths]
    groups = [(points, point_lr), ([path.paint() for path in chosen], color_lr)]  # fills or gradient stops
    parameters = [tensor.requires_grad_(True) for tensors, lr in groups if lr > 0 for tensor in tensors]
    optimizer = torch.optim.Adam([{"params": tensors, "lr": lr} for tensors, lr in groups if lr > 0])
    for step in range(steps):
        image = render(scene, *size, raster)[None]
        z = prior.encode_images(image).float()
        out = guidance(z.detach(), z_src, prompt_trg, prompt_src, generator=generator, mask=mask)
        if not torch.isfinite(out.grad).all():
            raise UserError(f"the edit diverged: non-finite guidance gradient at step {step + 1}; lower --point-lr "
                            "or --color-lr")  # fmt: skip
        score_scale = 1.0 / z[0].numel()  # the official 0.5 * mse(reduction="mean") per sample
        optimizer.zero_grad(set_to_none=True)
        z.backward(out.scaled_grad(score_scale) / z.shape[0])
        optimizer.step()
        with torch.no_grad():
            for color in scene.color_tensors():
                color.clamp_(0, 1)
        if after_step is not None:
            after_step(step, out)
    for tensor in parameters:
        tensor.requires_grad_(False)
    return scene
