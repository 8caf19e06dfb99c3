"""Pictures made of pictures: strips, labelled contact sheets, and sheets stacked under titles."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


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
