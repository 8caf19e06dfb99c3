"""Where a diffusion model comes from: a model name (see ``model_names``) to its components.

A random-weight name builds the seeded test model in code, a packaged one loads its folder, and anything else is a
local diffusers folder or a hub id (local cache first, then the hub).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ids_nerfstudio.errors import UserError, first_line
from ids_nerfstudio.model_names import ModelKind, ModelSource, resolve_model
from ids_nerfstudio.prior.base import DiffusionComponents, PriorLoadError
from ids_nerfstudio.prior.tiny import tiny_components

logger = logging.getLogger(__name__)

UNET_IN_CHANNELS: dict[ModelKind, int] = {"diffusion": 4, "instruct-pix2pix": 8}
"""Input channels of each kind's UNet (InstructPix2Pix also sees the source image latent)."""


def model_source(model: str, kind: ModelKind, flag: str = "model path") -> ModelSource:
    """``resolve_model`` with its errors as ``PriorLoadError`` naming ``flag``."""
    try:
        return resolve_model(model, kind)
    except (FileNotFoundError, LookupError) as error:
        raise PriorLoadError(f"{flag} {model!r}: {error}") from error


def components_factory(
    model: str, dtype: torch.dtype | None, *, kind: ModelKind = "diffusion", seed: int = 0
) -> Callable[[], DiffusionComponents]:
    """A function that loads the components of ``model`` (called on first use: nothing is loaded here).

    ``seed`` only matters for a random-weight model.
    """
    source = model_source(model, kind)
    if source.random_weights:
        return lambda: tiny_components(seed, UNET_IN_CHANNELS[kind])
    return lambda: load_diffusers_components(source.location, dtype)


def check_model_name(model: str, kind: ModelKind, flag: str = "model path") -> None:
    """Fail now (``PriorLoadError``) for a path-like name that does not exist, or a packaged name without a model
    of this kind; a hub id is checked when loaded."""
    if model_source(model, kind, flag).packaged:
        return
    if not Path(model).expanduser().exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise PriorLoadError(f"{flag} {model!r} does not exist: pass a diffusers model folder or a hub id")


def check_device(device: str, flag: str = "device") -> None:
    """Fail now (``UserError``) for a device string torch does not parse, or CUDA on a machine without it."""
    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise UserError(f"{flag} {device!r} is not a device: use auto, cpu, cuda or cuda:N") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{flag} {device!r}: this machine has no CUDA device; use cpu (or auto)")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` or ``"auto"`` means fp16 on CUDA and fp32 elsewhere (CPU fp16 convolutions are slow or missing)."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use one of auto, {', '.join(names)}")
    return names[dtype]


def load_diffusers_components(model: str, dtype: torch.dtype = torch.float32) -> DiffusionComponents:
    """Load the UNet, VAE, text encoder, tokenizer and schedule of a diffusers model folder or hub id.

    Only the pieces a guidance needs are loaded (no safety checker, no pipeline object).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    check_model_name(model, "diffusion")
    local = Path(model).expanduser()
    source = str(local) if local.exists() else model

    def load(local_files_only: bool) -> DiffusionComponents:
        options = {"local_files_only": local_files_only}
        scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **options)
        return DiffusionComponents(
            unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **options),
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **options),
            text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype, **options),
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options),
            alphas_cumprod=scheduler.alphas_cumprod,
            steps_offset=int(scheduler.config.get("steps_offset", 0)),
        )

    try:
        try:  # the local cache first: no network round trip when the model is already there
            components = load(local_files_only=True)
        except (OSError, ValueError):
            if local.exists():
                raise
            logger.info("%s is not in the local cache: downloading it from the hub", model)
            components = load(local_files_only=False)
    except (OSError, ValueError) as error:  # hub and network errors subclass OSError
        raise PriorLoadError(
            f"could not load diffusion model {model!r} ({first_line(error)}). Is the network reachable? Fetch it "
            f"once on a machine with network (`huggingface-cli download {model}`) or pass a local diffusers folder "
            "as the model path."
        ) from error
    return components
