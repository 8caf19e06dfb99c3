"""Images: reading a file as a viewer shows it, PIL <-> (B, 3, H, W) tensors in [0, 1], and the one resampling."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image, ImageOps, UnidentifiedImageError

from ids_nerfstudio.errors import UserError

MIN_IMAGE_SIDE = 8
"""Smallest side of an image worth editing (as the smallest --size): below it an upscale invents the picture."""


def to_pil(images: Float[torch.Tensor, "B 3 H W"]) -> Image.Image:
    """The first image of a (B, 3, H, W) batch in [0, 1] as a PIL image."""
    array = (images[0].detach().permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array)


def as_batch(image: Float[torch.Tensor, "H W C"]) -> Float[torch.Tensor, "1 3 H W"]:
    """An (H, W, C) image (nerfstudio's layout, C >= 3) as a batch of one RGB image (the first three channels)."""
    return image[..., :3].permute(2, 0, 1)[None].float()


def to_tensor(image: Image.Image) -> Float[torch.Tensor, "1 3 H W"]:
    """A PIL RGB image as (1, 3, H, W) in [0, 1]."""
    return as_batch(torch.from_numpy(np.array(image))) / 255


def resize_images(images: Float[torch.Tensor, "B C H W"], height: int, width: int) -> Float[torch.Tensor, "B C h w"]:
    """The one resampling of source images (guidance, metrics, 2D editor): antialiased bilinear."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def fit_size(width: int, height: int, short_side: int, multiple: int) -> tuple[int, int]:
    """Image size for a prior: short side ``short_side``, aspect ratio kept, both sides multiples of ``multiple``."""
    scale = short_side / min(width, height)
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))


def load_image(path: Path, flag: str = "--image") -> Image.Image:
    """An RGB image as a photo viewer shows it.

    EXIF orientation is applied; 16-bit and 32-bit integer images are scaled from their full range (a 16-bit
    PNG is not clipped at 255); float images are read as [0, 1]; transparent pixels are composited over white,
    and an animated image gives its first frame, each with a note on stderr. A missing, unreadable or too small
    (under ``MIN_IMAGE_SIDE`` pixels) file is a ``UserError`` naming ``flag``.
    """
    if path.is_dir():
        raise UserError(f"{flag}: {path} is a folder; pass one image file")
    if not path.is_file():
        raise UserError(f"{flag}: file not found: {path}")
    try:
        with Image.open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            image = ImageOps.exif_transpose(opened)  # of the first frame
            image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise UserError(f"{flag}: cannot read {path} as an image ({error})") from error
    if min(image.size) < MIN_IMAGE_SIDE:
        size = f"{image.width}x{image.height}"
        raise UserError(f"{flag}: {path} is {size} pixels; an edit needs at least {MIN_IMAGE_SIDE} on each side")
    if frames > 1:
        print(f"note: {flag} {path} is animated ({frames} frames): its first frame is edited", file=sys.stderr)
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
            print(f"note: {flag} {path} has transparent pixels: composited over white", file=sys.stderr)
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def load_mask(path: Path, size: tuple[int, int], flag: str) -> Float[torch.Tensor, "1 1 H W"]:
    """A mask image (white: edit, black: keep; grey is partial) of exactly ``size`` (width, height), in [0, 1].

    Read as ``load_image`` reads images (so a transparent or 16-bit mask reads as a viewer shows it); a missing,
    unreadable or mis-sized file is a ``UserError`` naming ``flag``.
    """
    image = load_image(path, flag)
    if image.size != tuple(size):
        raise UserError(
            f"{flag}: the mask {path} is {image.width}x{image.height} pixels, its image {size[0]}x{size[1]}; "
            "make it the image's size"
        )
    return to_tensor(image.convert("L").convert("RGB"))[:, :1]


def mask_to_pil(mask: Float[torch.Tensor, "B 1 h w"], height: int, width: int) -> Image.Image:
    """The first mask of a batch as a grey image of ``width`` x ``height`` (nearest: latent pixels stay visible)."""
    enlarged = F.interpolate(mask[:1].float().cpu(), size=(height, width), mode="nearest")
    return to_pil(enlarged.expand(-1, 3, -1, -1))
