"""The video editor (the library behind ``ids-edit-video``): the frames of a video are the particles (CSD §4.2).

As the official ``csdedit_video.py`` (subin-kim-cv/CSD): every frame's latent starts at its source latent; each step
draws one t, one noise per frame, and runs the guidance on all frames (or ``frames_per_step`` random ones) in one
batched call, each frame conditioned on its own source frame (InstructPix2Pix's image condition, DDS's source
branch). CSD couples the frames by SVGD; the other guidances edit them independently. SGD with the official
schedule (lr 2.0 on the unscaled gradient for csd, x 0.9 every 20 steps, 200 steps); the others take the 2D
editor's step. Writes ``edit.mp4``, ``frames/``, ``grid.png`` (source over edit) and ``metrics.json`` (the paper's
video metrics: CLIP directional similarity, consecutive-frame CLIP similarity and LPIPS).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import tyro
from jaxtyping import Float
from PIL import Image
from tqdm.auto import tqdm

from ids_nerfstudio.errors import UserError, check_number
from ids_nerfstudio.eval.edit_metrics import EditMetrics
from ids_nerfstudio.eval.metrics import consecutive_similarity
from ids_nerfstudio.files import write_atomic
from ids_nerfstudio.guidance import Guidance, GuidanceConfig, GuidanceOutput
from ids_nerfstudio.guidance.relevance import MaskConfig, paste_into_source
from ids_nerfstudio.image_editor import (
    DEFAULT_SIZE,
    PACKAGED_DEFAULT_SIZE,
    check_writable,
    csd_lr,
    edit_mask,
    effective_grad_scale,
    prior_config,
)
from ids_nerfstudio.images import fit_size, load_image, mask_to_pil, resize_images, to_pil, to_tensor
from ids_nerfstudio.model_names import has_random_weights, is_packaged
from ids_nerfstudio.panorama import OFFICIAL_CSD_DECAY, check_finite, decaying_sgd, draw_subset
from ids_nerfstudio.prompts import check_target_prompt
from ids_nerfstudio.sheets import labelled_grid

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""Image files that --frames reads (sorted by name)."""


@dataclass
class VideoEditSettings:
    """Edit a video (a folder of frames or a video file) with score-distillation guidance; frames are particles."""

    prompt_trg: str
    """Target prompt (for csd with InstructPix2Pix: the edit instruction)."""
    frames: Path | None = None
    """Folder of the video's frames (image files, in name order, all of one size)."""
    video: Path | None = None
    """Video file to edit instead of --frames (any format ffmpeg reads)."""
    prompt_src: str = ""
    """Prompt describing the source frames (unused by csd with InstructPix2Pix)."""
    guidance: tyro.conf.Suppress[str] = "csd"
    """Guidance method: the subcommand."""
    steps: int = 200
    """Optimisation steps (the official CSD video editor: 200; its README example 100)."""
    lr: float | None = None
    """SGD learning rate (default: csd 2.0 on the unscaled gradient, as the official code, 0.5 with --model demo;
    the others 0.1 with --grad-scale, as the 2D editor)."""
    lr_decay: float | None = None
    """Multiply the learning rate by this every --decay-every steps (default: 0.9 with csd, 1.0 otherwise)."""
    decay_every: int = 20
    """Steps between learning-rate decays."""
    grad_scale: float | None = None
    """The score is multiplied by grad_scale / (latent height * width) (default: csd unscaled; the others 2000, or
    125 with --model demo or tiny, as the 2D editor)."""
    frames_per_step: int = 0
    """Random frames (particles) per step; 0: every frame every step (the official editor)."""
    seed: int = 0
    """Seed of the timestep, noise and frame draws."""
    output: Path | None = None
    """Output folder (default: outputs/edit-video/<name>-<guidance>)."""
    model: str | None = None
    """Diffusion model: hub id or local diffusers folder (default: SD 1.5; InstructPix2Pix for csd); "demo" or
    "tiny" (see ids-edit-image)."""
    image_guidance_scale: float = 1.5
    """CFG scale of the source-image condition (csd with InstructPix2Pix; the paper and README's video run: 1.5)."""
    size: int | None = None
    """Short side of the working frames in pixels (default 512; 64 with --model demo or tiny)."""
    fps: float = 10.0
    """Frame rate of edit.mp4 (the official editor writes 10)."""
    device: str = "auto"
    """Device of the diffusion model and latents ("auto": CUDA if available)."""
    eval: bool = True
    """Measure the edit into metrics.json: per-frame CLIP directional similarity, consecutive-frame CLIP similarity
    and LPIPS of the edit and of the source."""
    clip_model: str | None = None
    """CLIP model of the metrics (default as ids-edit-image --eval)."""
    lpips_net: str | None = None
    """LPIPS network of the metrics: alex, vgg, squeeze or tiny (default as ids-edit-image --eval)."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """A local edit: --mask.source auto (each frame's relevance map) or one mask image for every frame."""
    paste_outside_mask: bool = True
    """With a mask: each edited frame is pasted into its source frame through the mask at the frame's pixels (grown
    by --mask.view-dilation, feathered by --mask.view-feather)."""


# ------------------------------------------------------------------------------------------------- input


def read_frames(settings: VideoEditSettings) -> tuple[list[Image.Image], str]:
    """The source frames and the video's name; a ``UserError`` naming the flag for no, both, empty or bad input."""
    if (settings.frames is None) == (settings.video is None):
        raise UserError("give the video as --frames DIR or as --video FILE (one of them)")
    if settings.frames is not None:
        folder = settings.frames
        if not folder.is_dir():
            raise UserError(f"--frames: {folder} is not a folder of frames")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not paths:
            raise UserError(f"--frames: no image files ({', '.join(FRAME_SUFFIXES)}) in {folder}")
        frames = [load_image(path, "--frames") for path in paths]
        names = [path.name for path in paths]
        name = folder.name
    else:
        path = settings.video
        if not path.is_file():
            raise UserError(f"--video: file not found: {path}")
        try:
            frames = [Image.fromarray(np.asarray(frame)[..., :3]).convert("RGB") for frame in imageio.mimread(path,
                      memtest=False)]  # fmt: skip
        except Exception as error:  # noqa: BLE001 - imageio's plugins raise many types
            raise UserError(f"--video: cannot read {path} as a video ({str(error).splitlines()[0][:150]})") from error
        if not frames:
            raise UserError(f"--video: {path} has no frames")
        names = [f"frame {i}" for i in range(len(frames))]
        name = path.stem
    for frame, frame_name in zip(frames, names, strict=True):
        if frame.size != frames[0].size:
            flag = "--frames" if settings.frames is not None else "--video"
            raise UserError(f"{flag}: {frame_name} is {frame.width}x{frame.height} but {names[0]} is "
                            f"{frames[0].width}x{frames[0].height}; all frames must have one size")  # fmt: skip
    return frames, name


def validate(settings: VideoEditSettings, guidance_config: GuidanceConfig) -> None:
    """Check the flags before any model is loaded or anything is written."""
    guidance_config.validate("--")
    check_target_prompt(settings.prompt_trg)
    if settings.steps < 1:
        raise UserError(f"--steps must be at least 1, got {settings.steps}")
    if settings.decay_every < 1:
        raise UserError(f"--decay-every must be at least 1, got {settings.decay_every}")
    if settings.frames_per_step < 0:
        raise UserError(f"--frames-per-step must be >= 0 (0: all frames), got {settings.frames_per_step}")
    if settings.size is not None and settings.size < 8:
        raise UserError(f"--size must be at least 8 pixels, got {settings.size}")
    for flag, value, positive in (("--lr", settings.lr, True), ("--lr-decay", settings.lr_decay, True),
                                  ("--grad-scale", settings.grad_scale, True), ("--fps", settings.fps, True),
                                  ("--image-guidance-scale", settings.image_guidance_scale, False)):  # fmt: skip
        check_number(flag, value, positive=positive)
    prior_config(settings).validate("--")
    settings.mask.validate("--mask.")
    if settings.mask.enabled and not settings.mask.automatic and not Path(settings.mask.source).is_file():
        raise UserError(f"--mask.source: no mask image {settings.mask.source} (pass off, auto or an image file)")


# ------------------------------------------------------------------------------------------------- edit


def optimise_frames(
    guidance: Guidance,
    z_src: Float[torch.Tensor, "F C h w"],
    prompt_trg: str,
    prompt_src: str,
    *,
    steps: int,
    lr: float,
    grad_scale: float,
    generator: torch.Generator,
    frames_per_step: int = 0,
    lr_decay: float = 1.0,
    decay_every: int = 20,
    mask: Float[torch.Tensor, "F 1 h w"] | None = None,
    after_step: Callable[[int, GuidanceOutput, torch.Tensor], None] | None = None,
    start: Float[torch.Tensor, "F C h w"] | None = None,
) -> Float[torch.Tensor, "F C h w"]:
    """SGD on every frame's latent, started at its source latent (or at ``start``): each step one t and the
    guidance on all (or ``frames_per_step`` random) frames at once, each against its own source frame; the score
    scaled by ``grad_scale / (h * w)``."""
    z = (z_src if start is None else start).detach().clone().requires_grad_(True)
    optimizer, schedule = decaying_sgd(z, lr, lr_decay, decay_every)
    score_scale = grad_scale / (z.shape[-2] * z.shape[-1])
    for step in range(steps):
        t = guidance.sample_timesteps(1, z.device, generator)
        chosen = draw_subset(z.shape[0], frames_per_step, generator)
        out = guidance(z.detach()[chosen], z_src[chosen], prompt_trg, prompt_src, t=t, generator=generator,
                       mask=None if mask is None else mask[chosen])  # fmt: skip
        grad = torch.zeros_like(z).index_copy_(0, chosen.to(z.device), out.scaled_grad(score_scale))
        check_finite(grad, step, t, "--lr")
        optimizer.zero_grad(set_to_none=True)
        z.grad = grad
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step(step, out, z)
    return z.detach()


def video_metrics(
    metrics: EditMetrics,
    source: Float[torch.Tensor, "F 3 H W"],
    edited: Float[torch.Tensor, "F 3 H W"],
    prompt_src: str,
    prompt_trg: str,
) -> dict:
    """The CSD paper's video metrics (means) and the per-frame edit metrics, of the edit and of the source."""
    rows = metrics(source, edited, prompt_src, prompt_trg)
    summary: dict[str, float | int] = {"frames": len(rows)}
    summary["clip_directional_similarity"] = float(np.mean([row["clip_directional_similarity"] for row in rows]))
    for name, frames in (("edit", edited), ("source", source)):
        if len(frames) > 1:
            summary[f"{name}_consecutive_clip"] = float(consecutive_similarity(metrics.clip.images(frames)).mean())
            summary[f"{name}_consecutive_lpips"] = float(metrics.lpips(frames[:-1], frames[1:]).mean())
    return {"summary": summary, "frames": rows}


def edit_video(settings: VideoEditSettings, guidance_config: GuidanceConfig) -> Path:
    """Run the edit; returns the output folder (edit.mp4, frames/, grid.png, metrics.json)."""
    validate(settings, guidance_config)
    sources, name = read_frames(settings)
    original_size = sources[0].size
    output = settings.output or Path("outputs", "edit-video", f"{name}-{settings.guidance}")
    check_writable(output)
    if has_random_weights(settings.model):
        print(f"WARNING: --model {settings.model} is a tiny RANDOM-WEIGHT model for smoke tests: the result is "
              "noise, not an edit.", file=sys.stderr)  # fmt: skip
    if settings.eval:  # the metric networks first: a missing one fails before a long edit
        metrics = EditMetrics.for_prior(settings.model, settings.clip_model, settings.lpips_net)
    prior = prior_config(settings).setup()
    for line in prior.prompt_warnings([settings.prompt_src, settings.prompt_trg]):
        print(f"ids-edit-video: warning: {line}", file=sys.stderr)
    short_side = settings.size or (PACKAGED_DEFAULT_SIZE if is_packaged(settings.model) else DEFAULT_SIZE)
    width, height = fit_size(*original_size, short_side, prior.size_multiple)
    pixels = resize_images(torch.cat([to_tensor(frame) for frame in sources]), height, width).clamp(0, 1)

    csd = settings.guidance == "csd"
    guidance = guidance_config.setup(prior=prior)
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        z_src = torch.cat([prior.encode_images(frame[None].to(prior.device)) for frame in pixels]).float()
    edit_masks = edit_mask(settings, prior, z_src, pixels, original_size)
    mask = None if edit_masks is None else edit_masks.latent.expand(len(z_src), -1, -1, -1)
    grad_scale = settings.grad_scale or (z_src.shape[-2] * z_src.shape[-1] if csd else effective_grad_scale(settings))
    started = time.perf_counter()
    progress = tqdm(total=settings.steps, desc=f"{settings.guidance} video edit", unit="step", dynamic_ncols=True)

    def after_step(step: int, out: GuidanceOutput, z: torch.Tensor) -> None:
        progress.update()
        progress.set_postfix(loss=f"{out.loss.item():.4g}", t=int(out.t[0]))

    with progress:
        z = optimise_frames(
            guidance, z_src, settings.prompt_trg, settings.prompt_src, steps=settings.steps,
            lr=settings.lr or (csd_lr(settings.model) if csd else 0.1), grad_scale=grad_scale, generator=generator,
            frames_per_step=settings.frames_per_step, decay_every=settings.decay_every, mask=mask,
            lr_decay=settings.lr_decay or (OFFICIAL_CSD_DECAY if csd else 1.0), after_step=after_step,
        )  # fmt: skip
    with torch.no_grad():
        edited = torch.cat([prior.decode_latents(latent[None]).float().cpu() for latent in z])
    if edit_masks is not None and settings.paste_outside_mask:
        edited = paste_into_source(edited, pixels, edit_masks.paste.expand(len(z_src), -1, -1, -1))
    seconds = time.perf_counter() - started
    write_outputs(output, pixels, edited, settings.fps, mask)
    if settings.eval:
        values = video_metrics(metrics, pixels, edited, settings.prompt_src, settings.prompt_trg)
        values["summary"].update(seconds=seconds, steps=settings.steps, guidance=settings.guidance)
        write_atomic(output / "metrics.json", lambda p: p.write_text(json.dumps(values, indent=2)))
    return output


def write_outputs(
    output: Path, source: torch.Tensor, edited: torch.Tensor, fps: float, mask: torch.Tensor | None
) -> None:
    """edit.mp4 (imageio's ffmpeg plugin runs imageio-ffmpeg's binary), frames/NNNNN.png, grid.png (source row
    over edit row, and the masks)."""
    pictures = [to_pil(frame[None]) for frame in edited]
    for i, picture in enumerate(pictures):
        write_atomic(output / "frames" / f"{i:05d}.png", picture.save)
    arrays = [np.asarray(picture) for picture in pictures]
    write_atomic(output / "edit.mp4", lambda p: imageio.mimwrite(p, arrays, fps=fps, macro_block_size=1))
    rows = [[to_pil(frame[None]) for frame in source], pictures]
    titles = ["source", "edit"]
    if mask is not None:
        rows.append([mask_to_pil(m[None], *source.shape[-2:]) for m in mask.cpu()])
        titles.append("mask")
    grid = labelled_grid(rows, [str(i) for i in range(len(pictures))], titles, min_tile=64)
    write_atomic(output / "grid.png", grid.save)
