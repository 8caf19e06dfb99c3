"""Small image and file helpers shared by the command-line tools."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image, ImageDraw, ImageFont


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


LABEL_HEIGHT = 22
"""Height in pixels of a title band of a contact sheet."""


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=14)


def labelled_grid(
    rows: list[list[Image.Image]], column_titles: list[str], row_titles: list[str], min_tile: int = 192
) -> Image.Image:
    """Tiles in a grid with a title over each column and one left of each row.

    Small tiles are enlarged by a whole factor (nearest neighbour, so pixels stay crisp) until their short side
    is at least ``min_tile`` pixels.
    """
    tile_w = max(tile.width for row in rows for tile in row)
    tile_h = max(tile.height for row in rows for tile in row)
    factor = max(1, -(-min_tile // min(tile_w, tile_h)))
    tile_w, tile_h = tile_w * factor, tile_h * factor
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = 8 + max(int(draw_probe.textlength(title, font=_font())) for title in row_titles)
    sheet = Image.new("RGB", (margin + tile_w * len(column_titles), LABEL_HEIGHT + tile_h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, title in enumerate(column_titles):
        draw.text((margin + k * tile_w + 4, 3), title, fill="black", font=_font())
    for r, (title, row) in enumerate(zip(row_titles, rows, strict=True)):
        top = LABEL_HEIGHT + r * tile_h
        draw.text((4, top + tile_h // 2 - 7), title, fill="black", font=_font())
        for k, tile in enumerate(row):
            enlarged = tile.resize((tile.width * factor, tile.height * factor), Image.NEAREST)
            sheet.paste(enlarged, (margin + k * tile_w, top))
    return sheet


def stacked_with_titles(images: list[Image.Image], titles: list[str]) -> Image.Image:
    """Images one above the other, each under a title band (e.g. one contact sheet per method)."""
    width = max(image.width for image in images)
    sheet = Image.new("RGB", (width, sum(LABEL_HEIGHT + image.height for image in images)), "white")
    draw, top = ImageDraw.Draw(sheet), 0
    for title, image in zip(titles, images, strict=True):
        draw.rectangle((0, top, width, top + LABEL_HEIGHT - 1), fill=(225, 225, 235))
        draw.text((4, top + 3), title, fill="black", font=_font())
        sheet.paste(image, (0, top + LABEL_HEIGHT))
        top += LABEL_HEIGHT + image.height
    return sheet
