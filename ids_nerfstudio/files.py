"""Small image and file helpers shared by the command-line tools."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(temporary_path)`` then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def to_pil(images: torch.Tensor) -> Image.Image:
    """The first image of a (B, 3, H, W) batch in [0, 1] as a PIL image."""
    array = (images[0].detach().permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


def resize_images(images: Float[torch.Tensor, "B C H W"], height: int, width: int) -> Float[torch.Tensor, "B C h w"]:
    """The one resampling of source images (guidance, metrics, 2D editor): antialiased bilinear."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """Images in a row, top-aligned."""
    strip = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width
    return strip
