"""The demo world and its learned prior: coloured balls and cubes on a grey floor, with captions and masks.

``sample_scene`` draws a random layout and camera like the demo scene's, ``caption`` names it ("a photo of a red
ball and a blue cube on a grey floor"), and ``render_sample`` returns the image with one mask per object. The
world itself (the ray tracer) is ``world.py``, the demo scene in nerfstudio's format ``scene.py``. The demo prior
(a small CLIP, VAE and UNet trained on this world by ``python -m ids_nerfstudio.demo.train``) ships in
``weights/``, which ``model_names`` resolves the name ``demo`` to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ids_nerfstudio.demo.world import COLOURS, SHAPES, SceneObject, look_at, render_with_masks
from ids_nerfstudio.tokenizers import clip_tokenizer

DEMO_IMAGE_SIZE = 64
"""Side of the images the demo prior was trained on."""
FLOOR = "grey floor"
WORDS = ("a", "photo", "of", "and", "on", "grey", "floor", *COLOURS, *SHAPES)
"""The demo vocabulary: every word of every caption is one token."""


@dataclass(frozen=True)
class DemoSample:
    """One random view of the demo world."""

    objects: tuple[SceneObject, ...]
    pose: np.ndarray
    """Camera-to-world matrix (OpenGL convention, as nerfstudio)."""

    @property
    def caption(self) -> str:
        """The caption naming the objects in their order."""
        return caption(self.objects)


def caption(objects: tuple[SceneObject, ...] | list[SceneObject]) -> str:
    """``a photo of a red ball and a blue cube on a grey floor``."""
    names = " and ".join(f"a {obj.colour} {obj.shape}" for obj in objects)
    return f"a photo of {names} on a {FLOOR}"


def sample_objects(rng: np.random.Generator, count: int) -> tuple[SceneObject, ...]:
    """``count`` non-overlapping objects of random shape, colour and size near the origin."""
    objects: list[SceneObject] = []
    while len(objects) < count:
        if len(objects) and rng.random() < 0.05:  # a crowded start can leave no room: start over now and then
            objects.clear()
        size = rng.uniform(0.2, 0.36)
        radius, angle = rng.uniform(0.0, 0.75) * (count > 1), rng.uniform(0, 2 * np.pi)
        x, y = radius * np.cos(angle), radius * np.sin(angle)
        # a cube's footprint reaches sqrt(2) * size; keep 0.1 between footprints
        if all(np.hypot(x - o.x, y - o.y) > 1.42 * (size + o.size) + 0.1 for o in objects):
            objects.append(
                SceneObject(
                    shape=SHAPES[rng.integers(len(SHAPES))],
                    colour=list(COLOURS)[rng.integers(len(COLOURS))],
                    x=float(x),
                    y=float(y),
                    size=float(size),
                    angle=float(rng.uniform(0, np.pi / 2)),
                )
            )
    return tuple(objects)


def sample_camera(rng: np.random.Generator) -> np.ndarray:
    """A camera on a ring around the origin, like the demo scene's (distance 2.5-3.4, height 0.6-1.5)."""
    azimuth, distance, height = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 3.4), rng.uniform(0.6, 1.5)
    eye = np.array([distance * np.cos(azimuth), distance * np.sin(azimuth), height])
    return look_at(eye, np.array([*rng.uniform(-0.15, 0.15, 2), 0.25]))


def sample_scene(rng: np.random.Generator, max_objects: int = 2) -> DemoSample:
    """A random layout of 1..max_objects objects seen from a random camera."""
    return DemoSample(sample_objects(rng, int(rng.integers(1, max_objects + 1))), sample_camera(rng))


def render_sample(sample: DemoSample, size: int = DEMO_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Image (size, size, 3) in [0, 1] and the objects' masks (N, size, size), with the demo scene's focal."""
    return render_with_masks(sample.pose, size, size, 1.2 * size, sample.objects)


def demo_tokenizer(max_length: int = 24):
    """The demo CLIP tokenizer: every demo word is one token, any other text still tokenizes byte by byte."""
    return clip_tokenizer(WORDS, max_length)
