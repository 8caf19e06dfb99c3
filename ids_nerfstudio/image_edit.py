"""``ids-edit-image``: edit one image with any guidance (the 2D counterpart of ``ns-train ids-edit``).

The target latent starts at the source latent and is optimised with SGD on the guidance gradient, as in the
official DDS/CDS/IDS image editors (lr 0.1, 200 steps, gradient scaled by ``grad_scale / (h * w)`` of the
latent). The guidance is a subcommand, as the method of ``ns-train`` (default ``ids``); its own flags follow it::

    ids-edit-image ids --image cat.png --prompt-src "a photo of a cat" --prompt-trg "a photo of a pig"
    ids-edit-image pds --image cat.png --prompt-src "..." --prompt-trg "..." --posterior exact

The older spelling ``--guidance NAME`` still works.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro
from jaxtyping import Float
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from ids_nerfstudio.errors import UserError, check_number, exit_on_user_error
from ids_nerfstudio.eval.edit_metrics import OFFLINE_MODELS, EditMetrics
from ids_nerfstudio.files import resize_images, side_by_side, to_pil, to_tensor, write_atomic
from ids_nerfstudio.guidance import GUIDANCE_METHODS, Guidance, GuidanceConfig, GuidanceOutput
from ids_nerfstudio.prior.base import fit_size
from ids_nerfstudio.prior.instruct_pix2pix import DEFAULT_IP2P_MODEL, InstructPix2PixPriorConfig
from ids_nerfstudio.prior.stable_diffusion import DEFAULT_SD_MODEL, StableDiffusionPrior, StableDiffusionPriorConfig

DEFAULT_GUIDANCE = "ids"
OFFLINE_DEFAULT_SIZE = 64
"""Default working size with an offline model (the demo prior was trained on 64 px images)."""
DEFAULT_GRAD_SCALE = 2000.0
"""The official editors' gradient scale, for SD's 64 x 64 latents of a 512 px image."""
OFFLINE_DEFAULT_GRAD_SCALE = DEFAULT_GRAD_SCALE * (OFFLINE_DEFAULT_SIZE // 4) ** 2 / (512 // 8) ** 2
"""125 for the demo's 16 x 16 latents (its VAE downsamples 4x, SD's 8x): the same step per latent element as the
official editors take. 2000 there takes a 16x larger step, which overshoots (benchmarks/demo_prior.py: ids 33 %
success at 2000, 80-91 % at 125)."""

__all__ = ["ImageEditArgs", "UserError", "main", "optimise_latent", "run"]


@dataclass
class ImageEditArgs:
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
    """Largest long side of the working image; a wider image (e.g. a panorama) is refused with a message."""
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


@dataclass
class ImageEditCommand(ImageEditArgs):
    """The flags of one guidance subcommand: the common ones and the guidance's own, unprefixed."""

    guidance_options: Annotated[GuidanceConfig, tyro.conf.OmitArgPrefixes] = dataclasses.field(
        default_factory=GUIDANCE_METHODS[DEFAULT_GUIDANCE].config
    )
    """Options of the chosen guidance."""


def subcommands() -> dict[str, ImageEditCommand]:
    """One subcommand per registered guidance, with that guidance's defaults."""
    return {
        name: ImageEditCommand(
            image=tyro.MISSING, prompt_trg=tyro.MISSING, guidance=name, guidance_options=method.config()
        )
        for name, method in GUIDANCE_METHODS.items()
    }


def _guidance_flag_as_subcommand(argv: list[str]) -> list[str]:
    """The older ``--guidance NAME`` spelling: NAME becomes the subcommand (which goes first)."""
    for i, arg in enumerate(argv):
        if arg == "--guidance" or arg.startswith("--guidance="):
            name = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            if name not in GUIDANCE_METHODS:
                raise UserError(f"--guidance: unknown guidance {name!r}; choose one of {', '.join(GUIDANCE_METHODS)}")
            return [name, *argv[:i], *argv[i + (1 if "=" in arg else 2) :]]
    return argv


def load_image(path: Path) -> Image.Image:
    """An RGB image as a photo viewer shows it.

    EXIF orientation is applied; 16-bit and 32-bit integer images are scaled from their full range (a 16-bit
    PNG is not clipped at 255); float images are read as [0, 1]; transparent pixels are composited over white,
    with a note on stderr.
    """
    if path.is_dir():
        raise UserError(f"--image: {path} is a folder; pass one image file")
    if not path.is_file():
        raise UserError(f"--image: file not found: {path}")
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise UserError(f"--image: cannot read {path} as an image ({error})") from error
    if image.mode.startswith("I"):  # I;16, I;16B, I (16-bit PNGs open as I): scale the full range to 8 bits
        values = np.asarray(image, dtype=np.float64)
        full_scale = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray((values / full_scale * 255).clip(0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((values.clip(0, 1) * 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            print(f"note: --image {path} has transparent pixels: composited over white", file=sys.stderr)
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def check_working_size(image: Image.Image, short_side: int, max_side: int) -> None:
    """Refuse a working image whose long side exceeds ``max_side`` (a panorama at --size 512 is huge)."""
    long_side = round(short_side * max(image.size) / min(image.size))
    if long_side > max_side:
        raise UserError(
            f"--size {short_side}: the {image.width}x{image.height} image would be edited at a long side of "
            f"{long_side} px, over --max-side {max_side}; pass a smaller --size or a larger --max-side"
        )


def _check_writable(folder: Path) -> None:
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


def _build_prior(args: ImageEditArgs) -> StableDiffusionPrior:
    if GUIDANCE_METHODS[args.guidance].instruction_prior:
        model = args.model or DEFAULT_IP2P_MODEL
        if model == "demo":
            raise UserError(
                f"--model demo has no InstructPix2Pix model for {args.guidance}: use --model tiny or a real one"
            )
        config = InstructPix2PixPriorConfig(
            model=model, device=args.device, image_guidance_scale=args.image_guidance_scale
        )
    else:
        config = StableDiffusionPriorConfig(model=args.model or DEFAULT_SD_MODEL, device=args.device)
    return config.setup()


def validate(args: ImageEditArgs, guidance_config: GuidanceConfig) -> None:
    """Check every input before any model is loaded or anything is written."""
    guidance_config.validate("--")
    if not args.prompt_trg.strip():
        raise UserError("--prompt-trg is empty: describe the edited image (or the edit, for csd)")
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    check_number("--lr", args.lr, positive=True)
    check_number("--grad-scale", args.grad_scale, positive=True)
    check_number("--image-guidance-scale", args.image_guidance_scale)
    if args.save_every < 0:
        raise UserError(f"--save-every must be >= 0, got {args.save_every}")
    if args.size is not None and args.size < 8:
        raise UserError(f"--size must be at least 8 pixels, got {args.size}")
    if args.max_side < 8:
        raise UserError(f"--max-side must be at least 8 pixels, got {args.max_side}")
    StableDiffusionPriorConfig(model=args.model or DEFAULT_SD_MODEL, device=args.device).validate("--")
    if args.prompt_src.strip() == args.prompt_trg.strip() and not GUIDANCE_METHODS[args.guidance].instruction_prior:
        warnings.warn("--prompt-src equals --prompt-trg: the edit is (nearly) a no-op", stacklevel=2)


def effective_grad_scale(args: ImageEditArgs) -> float:
    """--grad-scale, or its default for the model."""
    if args.grad_scale is not None:
        return args.grad_scale
    return OFFLINE_DEFAULT_GRAD_SCALE if args.model in OFFLINE_MODELS else DEFAULT_GRAD_SCALE


def run(args: ImageEditArgs, guidance_config: GuidanceConfig) -> Path:
    """Run the edit; returns the output folder (holding edit.png and strip.png)."""
    validate(args, guidance_config)
    source = load_image(args.image)
    short_side = args.size or (OFFLINE_DEFAULT_SIZE if args.model in OFFLINE_MODELS else 512)
    check_working_size(source, short_side, args.max_side)
    output = args.output or Path("outputs", "edit-image", f"{args.image.stem}-{args.guidance}")
    _check_writable(output)
    if args.model == "tiny":
        print(
            "WARNING: --model tiny is a tiny RANDOM-WEIGHT model for smoke tests: the result is noise, not an edit.",
            file=sys.stderr,
        )

    if args.eval:  # load the metric networks first: a missing one fails before a long edit
        metrics = EditMetrics.for_prior(args.model, args.clip_model, args.lpips_net)
    prior = _build_prior(args)
    width, height = fit_size(source.width, source.height, short_side, prior.size_multiple)
    pixels = resize_images(to_tensor(source), height, width).clamp(0, 1)
    source = to_pil(pixels)

    guidance = guidance_config.setup(prior=prior)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        z_src = prior.encode_images(pixels.to(prior.device)).float()
    frames: list[Image.Image] = []
    started = time.perf_counter()
    progress = tqdm(total=args.steps, desc=f"{args.guidance} edit", unit="step", dynamic_ncols=True)

    def after_step(step: int, out: GuidanceOutput, z: torch.Tensor) -> None:
        progress.update()
        progress.set_postfix(loss=f"{out.loss.item():.4g}", t=int(out.t[0]))
        if args.save_every and (step + 1) % args.save_every == 0:
            with torch.no_grad():
                frames.append(to_pil(prior.decode_latents(z.detach())))
            write_atomic(output / "frames" / f"step_{step + 1:05d}.png", frames[-1].save)

    with progress:  # closed before an error is printed
        z = optimise_latent(
            guidance, z_src, args.prompt_trg, args.prompt_src, steps=args.steps, lr=args.lr,
            grad_scale=effective_grad_scale(args), generator=generator, after_step=after_step,
        )  # fmt: skip
    with torch.no_grad():
        edit = to_pil(prior.decode_latents(z.detach()))
    seconds = time.perf_counter() - started
    write_atomic(output / "edit.png", edit.save)
    write_atomic(output / "strip.png", side_by_side([source, edit]).save)
    if frames:
        write_atomic(output / "progress.png", side_by_side([source, *frames]).save)
    if args.eval:
        values = metrics(pixels, to_tensor(edit), args.prompt_src, args.prompt_trg)[0]
        values.update(seconds=seconds, steps=args.steps, guidance=args.guidance)
        if prior.device.type == "cuda":
            values["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(prior.device) / 2**20
        write_atomic(output / "metrics.json", lambda p: p.write_text(json.dumps(values, indent=2)))
    return output


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
) -> Float[torch.Tensor, "B C H W"]:
    """SGD on the target latent, started at the source latent, as in the official 2D editors.

    The score is multiplied by ``grad_scale / (h * w)`` of the latent; a regularizer gradient (CDS's contrastive
    term) is added with its own weight only, as the official CDS editor does.
    """
    z = z_src.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([z], lr=lr)
    score_scale = grad_scale / (z.shape[-2] * z.shape[-1])
    for step in range(steps):
        out = guidance(z, z_src, prompt_trg, prompt_src, generator=generator)
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


def main(argv: list[str] | None = None) -> Path:
    """Parse the command line and run the edit (raises UserError on bad input)."""
    argv = _guidance_flag_as_subcommand(sys.argv[1:] if argv is None else list(argv))
    choices = subcommands()
    descriptions = {name: method.summary for name, method in GUIDANCE_METHODS.items()}
    command = tyro.cli(
        tyro.extras.subcommand_type_from_defaults(choices, descriptions),
        args=argv, default=choices[DEFAULT_GUIDANCE], prog="ids-edit-image", description=ImageEditArgs.__doc__,
        config=(tyro.conf.CascadeSubcommandArgs,),  # the default subcommand (ids) takes its flags without its name
    )  # fmt: skip
    args = ImageEditArgs(**{f.name: getattr(command, f.name) for f in dataclasses.fields(ImageEditArgs)})
    return run(args, command.guidance_options)


def entrypoint() -> None:
    """Console script: one-line errors instead of tracebacks."""
    with exit_on_user_error("ids-edit-image"):
        output = main()
    print(f"wrote {output / 'edit.png'} and {output / 'strip.png'}")


if __name__ == "__main__":
    entrypoint()
