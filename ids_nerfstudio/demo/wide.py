"""Wide views of the demo world (panoramas) and orbit frames (videos), for the patch-wise and video editors' tests.

A panorama is three balls along the floor seen by a camera of the demo scene's focal (1.2 x 64 px) on an image
three training images wide, one ball in each third, so that each 64 px patch looks like a training view (the demo
prior's views always show an object near their centre: a patch of empty floor is pulled toward having one).
"""

from __future__ import annotations

import numpy as np

from ids_nerfstudio.demo import DEMO_IMAGE_SIZE, caption
from ids_nerfstudio.demo.world import SceneObject, look_at, render_with_masks

PANORAMA_BALLS = ((-2.6, 0.6), (0.0, 0.0), (2.6, 0.6))
"""(x, y) of the panorama's three balls on the floor."""


def panorama_objects(colour: str = "red") -> tuple[SceneObject, ...]:
    """The panorama's three balls of one colour."""
    return tuple(SceneObject("ball", colour, x, y, 0.32) for x, y in PANORAMA_BALLS)


def render_panorama(width: int = 3 * DEMO_IMAGE_SIZE, height: int = DEMO_IMAGE_SIZE, colour: str = "red"):
    """(image H W 3 in [0, 1], ball masks (3, H, W), the caption of one ball) of the three balls, seen wide."""
    pose = look_at(np.array([0.0, -3.0, 1.1]), np.array([0.0, 0.0, 0.25]))
    objects = panorama_objects(colour)
    image, masks = render_with_masks(pose, width, height, 1.2 * DEMO_IMAGE_SIZE, objects)
    return image, masks, caption(objects[:1])


def render_orbit(frames: int = 8, size: int = DEMO_IMAGE_SIZE, colour: str = "red", arc: float = np.pi / 3):
    """(frames (F, H, W, 3) in [0, 1], ball masks (F, H, W), caption): a camera moving along ``arc`` radians of a
    ring around one ball (distance 3, height 1.1), the demo scene's focal."""
    ball = (SceneObject("ball", colour, 0.0, 0.0, 0.34),)
    images, masks = [], []
    for angle in np.linspace(0, arc, frames):
        pose = look_at(np.array([3 * np.cos(angle), 3 * np.sin(angle), 1.1]), np.array([0.0, 0.0, 0.25]))
        image, mask = render_with_masks(pose, size, size, 1.2 * size, ball)
        images.append(image)
        masks.append(mask[0])
    return np.stack(images), np.stack(masks), caption(ball)
