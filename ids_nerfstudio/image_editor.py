"""The 2D editor (the library behind ``ids-edit-image``): edit one image with any guidance.

The target latent starts at the source latent and is optimised with SGD on the guidance gradient, as in the
official DDS/CDS/IDS image editors (lr 0.1, 200 steps, gradient scaled by ``grad_scale / (h * w)`` of the
latent). ``edit_image(settings, guidance_config)`` runs a whole edit from an image file to an output folder;
``optimise_latent`` is the loop itself.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import tyro
from jaxtyping import Float
from PIL import Image
from tqdm.auto import tqdm

from ids_nerfstudio.errors import UserError, check_number
from ids_nerfstudio.eval.edit_metrics import EditMetrics
from ids_nerfstudio.files import write_atomic
from ids_nerfstudio.guidance import GUIDANCE_METHODS, Guidance, GuidanceConfig, GuidanceOutput
from ids_nerfstudio.guidance.relevance import MaskConfig, given_mask, paste_into_source, paste_weight, view_mask
from ids_nerfstudio.images import fit_size, load_image, load_mask, mask_to_pil, resize_images, to_pil, to_tensor
from ids_nerfstudio.model_names import has_model_kind, has_random_weights, is_packaged
from ids_nerfstudio.panorama import (
    OFFICIAL_CSD_DECAY,
    OFFICIAL_CSD_LR,
    PACKAGED_CSD_LR,
    PanoramaConfig,
    decode_tiled,
    encode_tiled,
    optimise_panorama,
    patch_size,
)
from ids_nerfstudio.presets import Preset, apply_preset
from ids_nerfstudio.prior import InstructPix2PixPriorConfig, StableDiffusionPriorConfig
from ids_nerfstudio.prior.base import DiffusionPrior
from ids_nerfstudio.prompts import check_target_prompt, no_op_warning
from ids_nerfstudio.sheets import side_by_side

DEFAULT_GUIDANCE = "ids"
PACKAGED_DEFAULT_SIZE = 64
"""Default working size with a packaged model (the demo prior was trained on 64 px images)."""
DEFAULT_SIZE = 512
"""Default working size with Stable Diffusion."""
DEFAULT_GRAD_SCALE = 2000.0
"""The official editors' gradient scale, for SD's 64 x 64 latents of a 512 px image."""
PACKAGED_DEFAULT_GRAD_SCALE = DEFAULT_GRAD_SCALE * (PACKAGED_DEFAULT_SIZE // 4) ** 2 / (DEFAULT_SIZE // 8) ** 2
"""125 for the demo's 16 x 16 latents (its VAE downsamples 4x, SD's 8x): the same step per latent element as the
official editors take. 2000 there takes a 16x larger step, which overshoots (benchmarks/demo_prior.py: ids 33 %
success at 2000, 80-91 % at 125)."""


@dataclass
class ImageEditSettings:
    """Edit one image from a source prompt to a target prompt with score-distillation guidance."""

    image: Path
    """Source image to edit (any format Pillow reads)."""
    prompt_trg: str
    """Target prompt (for csd with InstructPix2Pix: the edit instruction)."""
    prompt_src: str = ""
    """Prompt describing the source image (unused by csd with InstructPix2Pix)."""
    guidance: tyro.conf.Suppress[str] = DEFAULT_GUIDANCE
    """Guidance method: the subcommand (its own flags, e.g. --fpr-iters, are listed by ``ids-edit-image NAME -h``)."""
    steps: int = 200
    """Optimisation steps."""
    lr: float = 0.1
    """SGD learning rate on the latent."""
    grad_scale: float | None = None
    """The guidance gradient is multiplied by grad_scale / (latent height * width), as in the official editors
    (default 2000; 125 with --model demo or tiny, the same step per latent element at their 64 px)."""
    seed: int = 0
    """Seed of the timestep and noise draws."""
    output: Path | None = None
    """Output folder (default: outputs/edit-image/<image name>-<guidance>)."""
    save_every: int = 0
    """Also save the edit every N steps into <output>/frames and a progress strip (0: only the final edit)."""
    model: str | None = None
    """Diffusion model: hub id or local diffusers folder (default: SD 1.5; InstructPix2Pix for csd); "demo" (the
    packaged prior learned on the demo world, offline, CPU) or "tiny" (random weights, smoke tests only)."""
    image_guidance_scale: float = 1.5
    """CFG scale of the source-image condition (csd with InstructPix2Pix only)."""
    size: int | None = None
    """Short side of the working image in pixels, aspect ratio kept (default 512; 64 with --model demo or tiny)."""
    max_side: int = 2048
    """Largest long side of the working image; a wider image is refused with a message (unless --panorama)."""
    device: str = "auto"
    """Device of the diffusion model and latents, e.g. cpu, cuda, cuda:1 ("auto": CUDA if available)."""
    eval: bool = False
    """Also measure the edit (LPIPS and PSNR to the source, background PSNR, CLIP score and directional
    similarity, time, peak GPU memory) into <output>/metrics.json."""
    clip_model: str | None = None
    """CLIP model of --eval: hub id or local folder (default openai/clip-vit-large-patch14; with --model demo or tiny,
    the CLIP of that name)."""
    lpips_net: str | None = None
    """LPIPS network of --eval: alex, vgg or squeeze (default alex; tiny with --model tiny)."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """A local edit: --mask.source auto (the prior's relevance map) or a mask image of the input's size (white:
    edit); the guidance gradient is multiplied by it, and mask.png is written."""
    paste_outside_mask: bool = True
    """With a mask: edit.png is the decoded edit pasted into the source image through the mask at the image's
    pixels (grown by --mask.view-dilation, feathered by --mask.view-feather), so what the mask leaves out keeps the
    source's pixels exactly (the VAE does not reconstruct them perfectly); False writes the decoder's whole
    output."""
    panorama: bool = False
    """Edit patch-wise (CSD's panorama editing; --patches.* set it up): the whole latent is optimised through
    patches of the prior's training size, so --max-side does not apply."""
    patches: PanoramaConfig = field(default_factory=PanoramaConfig)
    """Patches, their schedule and region-wise prompts of --panorama."""
    preset: Preset = "none"
    """paper: the IDS paper's setting (SD v1.4, 200 steps of SGD lr 0.1, 2000/(h w), 512 px; for ids also CFG 7.5,
    t in [50, 948], FPR N 3, lambda 1, L2, exact Jacobian); a flag given with it must agree with it."""


def check_working_size(image: Image.Image, short_side: int, max_side: int) -> None:
    """Refuse a working image whose long side exceeds ``max_side`` (a panorama at --size 512 is huge)."""
    long_side = round(short_side * max(image.size) / min(image.size))
    if long_side > max_side:
        raise UserError(
            f"--size {short_side}: the {image.width}x{image.height} image would be edited at a long side of "
            f"{long_side} px, over --max-side {max_side}; pass a smaller --size or a larger --max-side"
        )


def check_writable(folder: Path) -> None:
    """Probe the folder (or its nearest existing parent) with a temporary file; create nothing yet."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserError(
            f"--output: cannot write to {folder} ({error.strerror or error}); choose another folder"
        ) from error


class EditSettings(Protocol):
    """What the 2D editors (an image, an SVG) share: the settings ``prior_config``, ``validate_shared`` and
    ``edit_mask`` read."""

    prompt_trg: str
    prompt_src: str
    guidance: str
    steps: int
    model: str | None
    device: str
    size: int | None
    image_guidance_scale: float
    mask: MaskConfig


def prior_config(settings: EditSettings) -> StableDiffusionPriorConfig:
    """The guidance's prior (the registry's choice), with the model, device and image scale of the settings."""
    method = GUIDANCE_METHODS[settings.guidance]
    prior_type = method.prior
    if method.instruction_prior and not has_model_kind(settings.model, "instruct-pix2pix"):
        prior_type = StableDiffusionPriorConfig  # the demo prior is text-to-image: CSD mixes DDS deltas (as ns-train's)
    config = prior_type(device=settings.device)
    if settings.model is not None:
        config.model = settings.model
    if isinstance(config, InstructPix2PixPriorConfig):
        config.image_guidance_scale = settings.image_guidance_scale
    return config


def validate_shared(settings: EditSettings, guidance_config: GuidanceConfig) -> None:
    """Check the settings every 2D editor has (guidance, prompts, steps, size, prior, mask), before any model is
    loaded or anything is written."""
    guidance_config.validate("--")
    check_target_prompt(settings.prompt_trg)
    if settings.steps < 1:
        raise UserError(f"--steps must be at least 1, got {settings.steps}")
    check_number("--image-guidance-scale", settings.image_guidance_scale)
    if settings.size is not None and settings.size < 8:
        raise UserError(f"--size must be at least 8 pixels, got {settings.size}")
    prior_config(settings).validate("--")
    settings.mask.validate("--mask.")
    if settings.mask.enabled and not settings.mask.automatic and not Path(settings.mask.source).is_file():
        raise UserError(f"--mask.source: no mask image {settings.mask.source} (pass off, auto or an image file)")
    warning = no_op_warning(
        settings.prompt_src, settings.prompt_trg, instruction=GUIDANCE_METHODS[settings.guidance].instruction_prior
    )
    if warning is not None:
        warnings.warn(warning, stacklevel=3)


def validate(settings: ImageEditSettings, guidance_config: GuidanceConfig) -> None:
    """Check every input before any model is loaded or anything is written."""
    validate_shared(settings, guidance_config)
    settings.patches.validate("--patches.")
    if settings.patches.region_prompts and not settings.panorama:
        raise UserError("--patches.region-prompts: region-wise prompts need --panorama")
    check_number("--lr", settings.lr, positive=True)
    check_number("--grad-scale", settings.grad_scale, positive=True)
    if settings.save_every < 0:
        raise UserError(f"--save-every must be >= 0, got {settings.save_every}")
    if settings.max_side < 8:
        raise UserError(f"--max-side must be at least 8 pixels, got {settings.max_side}")


def effective_grad_scale(settings: ImageEditSettings) -> float:
    """--grad-scale, or its default for the model."""
    if settings.grad_scale is not None:
        return settings.grad_scale
    return PACKAGED_DEFAULT_GRAD_SCALE if is_packaged(settings.model) else DEFAULT_GRAD_SCALE


def edit_image(settings: ImageEditSettings, guidance_config: GuidanceConfig) -> Path:
    """Run the edit; returns the output folder (holding edit.png and strip.png)."""
    settings, guidance_config = apply_preset(settings.preset, settings.guidance, settings, guidance_config)
    validate(settings, guidance_config)
    source = load_image(settings.image)
    original_size = source.size
    short_side = settings.size or (PACKAGED_DEFAULT_SIZE if is_packaged(settings.model) else DEFAULT_SIZE)
    if not settings.panorama:
        check_working_size(source, short_side, settings.max_side)
    output = settings.output or Path("outputs", "edit-image", f"{settings.image.stem}-{settings.guidance}")
    check_writable(output)
    if has_random_weights(settings.model):
        print(
            f"WARNING: --model {settings.model} is a tiny RANDOM-WEIGHT model for smoke tests: the result is noise, "
            "not an edit.",
            file=sys.stderr,
        )

    if settings.eval:  # load the metric networks first: a missing one fails before a long edit
        metrics = EditMetrics.for_prior(settings.model, settings.clip_model, settings.lpips_net)
    prior = prior_config(settings).setup()
    for line in prior.prompt_warnings([settings.prompt_src, settings.prompt_trg]):  # loads the prior
        print(f"ids-edit-image: warning: {line}", file=sys.stderr)
    width, height = fit_size(source.width, source.height, short_side, prior.size_multiple)
    pixels = resize_images(to_tensor(source), height, width).clamp(0, 1)
    source = to_pil(pixels)

    guidance = guidance_config.setup(prior=prior)
    generator = torch.Generator().manual_seed(settings.seed)
    downsample = prior.latent_downsample
    patch = patch_size(prior, height // downsample, width // downsample, settings.patches.patch)
    stride = settings.patches.stride or max(1, patch[0] // 4)
    tiled = settings.panorama and settings.patches.tiled_vae
    with torch.no_grad():
        pixels_on_device = pixels.to(prior.device)
        z_src = encode_tiled(prior, pixels_on_device, patch, stride) if tiled else prior.encode_images(pixels_on_device)
        z_src = z_src.float()
    mask = edit_mask(settings, prior, z_src, pixels, original_size)
    frames: list[Image.Image] = []
    started = time.perf_counter()
    progress = tqdm(total=settings.steps, desc=f"{settings.guidance} edit", unit="step", dynamic_ncols=True)

    def after_step(step: int, out: GuidanceOutput, z: torch.Tensor) -> None:
        progress.update()
        progress.set_postfix(loss=f"{out.loss.item():.4g}", t=int(out.t[0]))
        if settings.save_every and (step + 1) % settings.save_every == 0:
            with torch.no_grad():
                frames.append(to_pil(prior.decode_latents(z.detach())))
            write_atomic(output / "frames" / f"step_{step + 1:05d}.png", frames[-1].save)

    with progress:  # closed before an error is printed
        if settings.panorama:
            z = optimise_panorama(guidance, z_src, settings.patches.region_prompts or [settings.prompt_trg],
                                  settings.prompt_src, steps=settings.steps, generator=generator, size=patch,
                                  stride=stride, mask=None if mask is None else mask.latent, after_step=after_step,
                                  **panorama_schedule(settings, patch))  # fmt: skip
        else:
            z = optimise_latent(
                guidance, z_src, settings.prompt_trg, settings.prompt_src, steps=settings.steps, lr=settings.lr,
                grad_scale=effective_grad_scale(settings), generator=generator, after_step=after_step,
                mask=None if mask is None else mask.latent,
            )  # fmt: skip
    with torch.no_grad():
        decoded = decode_tiled(prior, z.detach(), patch, stride) if tiled else prior.decode_latents(z.detach())
        decoded = decoded.float().cpu()
    if mask is not None and settings.paste_outside_mask:
        decoded = paste_into_source(decoded, pixels, mask.paste)
    edit = to_pil(decoded)
    seconds = time.perf_counter() - started
    write_atomic(output / "edit.png", edit.save)
    pictures = [source, edit]
    if mask is not None:
        pictures.append(mask_to_pil(mask.latent, height, width))
        write_atomic(output / "mask.png", pictures[-1].save)
    write_atomic(output / "strip.png", side_by_side(pictures).save)
    if frames:
        write_atomic(output / "progress.png", side_by_side([source, *frames]).save)
    if settings.eval:
        values = metrics(pixels, to_tensor(edit), settings.prompt_src, settings.prompt_trg)[0]
        values.update(seconds=seconds, steps=settings.steps, guidance=settings.guidance)
        if prior.device.type == "cuda":
            values["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(prior.device) / 2**20
        write_atomic(output / "metrics.json", lambda p: p.write_text(json.dumps(values, indent=2)))
    return output


def panorama_schedule(settings: ImageEditSettings, patch: tuple[int, int]) -> dict[str, float | int]:
    """Learning rate, its decay and the gradient scale of a patch-wise edit: the official CSD editor's (lr 2.0 on
    the unscaled gradient, x 0.9 every 20 steps) for csd, the 2D editor's (per patch) for the others."""
    options, csd = settings.patches, settings.guidance == "csd"
    grad_scale = settings.grad_scale or (patch[0] * patch[1] if csd else effective_grad_scale(settings))
    return {
        "lr": options.lr or (csd_lr(settings.model) if csd else settings.lr),
        "lr_decay": options.lr_decay or (OFFICIAL_CSD_DECAY if csd else 1.0),
        "decay_every": options.decay_every,
        "per_step": options.per_step,
        "grad_scale": grad_scale,
    }


def csd_lr(model: str | None) -> float:
    """CSD's learning rate on the unscaled gradient: the official 2.0, or the packaged priors' own."""
    return PACKAGED_CSD_LR if is_packaged(model) else OFFICIAL_CSD_LR


@dataclass
class EditMask:
    """A 2D edit's mask in its two forms."""

    latent: Float[torch.Tensor, "B 1 h w"]
    """At the latent's size, grown by ``dilation`` and feathered: what multiplies the guidance gradient."""
    paste: Float[torch.Tensor, "B 1 H W"]
    """At the image's pixels, grown by ``view_dilation`` and feathered by ``view_feather``: what the decoded edit is
    pasted into the source through (docs/relevance.md measures it against pasting through ``latent``)."""


def edit_mask(
    settings: EditSettings,
    prior: DiffusionPrior,
    z_src: Float[torch.Tensor, "B C h w"],
    pixels: Float[torch.Tensor, "B 3 H W"],
    original_size: tuple[int, int],
) -> EditMask | None:
    """The mask of --mask.source (None when off), from the view-pixel mask: the relevance thresholded at the edited
    image's pixels, or the given image."""
    config = settings.mask
    if not config.enabled:
        return None
    if config.automatic:
        view = view_mask(prior, z_src, settings.prompt_trg, settings.prompt_src, config, pixels.shape[-2:], pixels)
    else:
        given = load_mask(Path(config.source), original_size, "--mask.source")
        view = resize_images(given, *pixels.shape[-2:]).to(z_src.device)
    return EditMask(latent=given_mask(view, z_src, config), paste=paste_weight(view, config).cpu())


def optimise_latent(
    guidance: Guidance,
    z_src: Float[torch.Tensor, "B C H W"],
    prompt_trg: str,
    prompt_src: str,
    *,
    steps: int,
    lr: float,
    grad_scale: float,
    generator: torch.Generator,
    after_step: Callable[[int, GuidanceOutput, torch.Tensor], None] | None = None,
    mask: Float[torch.Tensor, "B 1 H W"] | None = None,
    start: Float[torch.Tensor, "B C H W"] | None = None,
) -> Float[torch.Tensor, "B C H W"]:
    """SGD on the target latent, started at the source latent (or at ``start``), as in the official 2D editors.

    The score is multiplied by ``grad_scale / (h * w)`` of the latent; a regularizer gradient (CDS's contrastive
    term) is added with its own weight only, as the official CDS editor does. A ``mask`` multiplies the gradient.
    """
    z = (z_src if start is None else start).detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([z], lr=lr)
    score_scale = grad_scale / (z.shape[-2] * z.shape[-1])
    for step in range(steps):
        out = guidance(z, z_src, prompt_trg, prompt_src, generator=generator, mask=mask)
        if not torch.isfinite(out.grad).all():
            raise UserError(
                f"the edit diverged: non-finite guidance gradient at step {step + 1} (t={out.t.tolist()}); "
                "lower --lr or --grad-scale"
            )
        optimizer.zero_grad(set_to_none=True)
        z.grad = out.scaled_grad(score_scale)
        optimizer.step()
        if after_step is not None:
            after_step(step, out, z)
    return z.detach()
