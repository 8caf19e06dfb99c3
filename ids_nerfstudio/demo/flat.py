"""Two-object images drawn with PIL, another renderer than the demo world's ray tracer: discs (balls) and squares
(cubes), flat or shaded, on a grey checkered floor seen from above, with each object's true mask.

They test whether a relevance mask follows the word that changed ("the red ball" of a red ball and a blue cube)
on images the demo prior never saw rendered this way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float
from PIL import Image, ImageDraw

from ids_nerfstudio.demo import DEMO_IMAGE_SIZE, FLOOR
from ids_nerfstudio.demo.world import COLOURS

LAYOUTS = (((0.3, 0.5), (0.7, 0.5)), ((0.5, 0.3), (0.5, 0.7)), ((0.3, 0.3), (0.7, 0.7)), ((0.7, 0.3), (0.3, 0.7)))
"""Object centres (x, y as fractions of the side): side by side, one above the other, two diagonals."""


@dataclass(frozen=True)
class FlatObject:
    """One drawn object."""

    shape: str
    """ball (a disc) or cube (a square)."""
    colour: str
    """A name of ``COLOURS``."""
    centre: tuple[float, float]
    """(x, y) as fractions of the image side."""
    radius: float
    """Half the disc's diameter or the square's side, as a fraction of the image side."""


@dataclass(frozen=True)
class FlatCase:
    """A drawn image of two objects, one of which the edit recolours."""

    objects: tuple[FlatObject, FlatObject]
    shaded: bool
    """Discs with a radial and squares with a linear light gradient (else flat colours)."""
    index: int
    """Which object is recoloured."""
    colour: str
    """Its new colour."""

    def caption(self, recoloured: bool = False) -> str:
        """The demo prior's caption of the image ("a photo of a red ball and a blue cube on a grey floor"), with
        the recoloured object's new colour if ``recoloured``."""
        names = [f"a {self.colour if recoloured and i == self.index else o.colour} {o.shape}"
                 for i, o in enumerate(self.objects)]  # fmt: skip
        return f"a photo of {' and '.join(names)} on a {FLOOR}"


def flat_cases(count: int = 24, seed: int = 0) -> list[FlatCase]:
    """``count`` cases cycling through layouts, sizes, flat/shaded and shape pairs; colours and the edit seeded."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    shapes = (("ball", "cube"), ("cube", "ball"), ("ball", "ball"), ("cube", "cube"))
    grid = itertools.cycle(itertools.product((0.13, 0.18), (False, True), LAYOUTS))
    cases = []
    for k, (radius, shaded, layout) in zip(range(count), grid, strict=False):
        pair = shapes[k % len(shapes)]
        first, second = rng.choice(len(names), size=2, replace=False)
        objects = tuple(FlatObject(s, names[c], centre, radius * rng.uniform(0.85, 1.15))
                        for s, c, centre in zip(pair, (first, second), layout, strict=True))  # fmt: skip
        index = int(rng.integers(2))
        others = [n for n in names if n not in (objects[0].colour, objects[1].colour)]
        cases.append(FlatCase(objects, shaded, index, others[int(rng.integers(len(others)))]))  # type: ignore[arg-type]
    return cases


def draw(case: FlatCase, size: int = DEMO_IMAGE_SIZE) -> tuple[Float[np.ndarray, "H W 3"], Bool[np.ndarray, "2 H W"]]:
    """The image (H, W, 3 in [0, 1]) and each object's mask, drawn at 4x and downsampled (anti-aliased edges)."""
    scale = 4
    big = size * scale
    cells = (np.indices((big, big)) // (big // 8)).sum(0) % 2
    image = np.where(cells[..., None] == 1, 0.62, 0.5) * np.ones(3)
    yy, xx = (np.indices((big, big)) + 0.5) / big
    masks = []
    for obj in case.objects:
        layer = Image.new("L", (big, big))
        (cx, cy), r = obj.centre, obj.radius
        box = [(cx - r) * big, (cy - r) * big, (cx + r) * big, (cy + r) * big]
        (ImageDraw.Draw(layer).ellipse if obj.shape == "ball" else ImageDraw.Draw(layer).rectangle)(box, fill=255)
        inside = np.asarray(layer) > 127
        colour = np.array(COLOURS[obj.colour])
        if case.shaded:  # light from the top left: brighter there, darker toward the far side
            if obj.shape == "ball":
                light = 1.15 - 0.9 * np.hypot(xx - (cx - 0.4 * r), yy - (cy - 0.4 * r)) / (2 * r)
            else:
                light = 1.1 - 0.5 * ((xx - cx + r) + (yy - cy + r)) / (4 * r)
            shade = colour * np.clip(light, 0.35, 1.2)[..., None]
        else:
            shade = np.broadcast_to(colour, image.shape)
        image = np.where(inside[..., None], np.clip(shade, 0, 1), image)
        masks.append(inside)
    small = image.reshape(size, scale, size, scale, 3).mean((1, 3))
    small_masks = np.stack([m.reshape(size, scale, size, scale).mean((1, 3)) > 0.5 for m in masks])
    return small, small_masks
