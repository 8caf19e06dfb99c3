"""The demo world as a flat vector drawing (SVG): what the SVG editor's behaviour test and README picture edit.

The demo camera's perspective is kept so that the demo prior recognises the picture: a sky rectangle, the floor
below the horizon in the dark checker grey with the light checker squares near the ball as projected quads, and the
ball as a disc with concentric-ish shading rings (darker outside, a highlight offset toward the light), the colours
of ``world.py``'s Lambertian shading. No shadows, as in the ray-traced world.
"""

from __future__ import annotations

import numpy as np

from ids_nerfstudio.demo.world import BACKGROUND, COLOURS, look_at

BALL_SHADES = (0.4, 0.65, 0.85, 1.0)
"""Lambertian shade of each ball ring, outermost first (the world's 0.25 + 0.75 cos)."""


def hex_colour(rgb: np.ndarray) -> str:
    r, g, b = (int(round(float(c) * 255)) for c in np.clip(rgb, 0, 1))
    return f"#{r:02x}{g:02x}{b:02x}"


def demo_world_svg(
    colour: str = "red", size: int = 64, azimuth: float = 0.6, distance: float = 3.0, height: float = 1.0
) -> str:
    """A ``colour`` ball on the checkered floor, seen as the demo scene's cameras see it (focal 1.2 x size)."""
    pose = look_at(np.array([distance * np.cos(azimuth), distance * np.sin(azimuth), height]), np.array([0, 0, 0.25]))
    rotation, origin, focal = pose[:3, :3], pose[:3, 3], 1.2 * size

    def project(points: np.ndarray) -> np.ndarray:
        camera = (points - origin) @ rotation  # world to camera (OpenGL: looking down -z)
        return np.stack(
            [size / 2 + focal * camera[:, 0] / -camera[:, 2], size / 2 - focal * camera[:, 1] / -camera[:, 2]], -1
        )

    forward = -rotation[:, 2]
    horizon = project(origin + 1e4 * np.array([[forward[0], forward[1], 0.0]]))[0, 1]
    shapes = [f'<rect id="sky" width="{size}" height="{size}" fill="{hex_colour(BACKGROUND)}"/>']
    near_fade = np.exp(-0.15 * 2.0)
    shapes.append(f'<rect id="floor" y="{horizon:.3f}" width="{size}" height="{size - horizon:.3f}" '
                  f'fill="{hex_colour(near_fade * 0.55 + (1 - near_fade) * BACKGROUND)}"/>')  # fmt: skip
    for i in range(-12, 12):
        for j in range(-12, 12):
            if (i + j) % 2 == 0:
                continue  # the dark squares are the floor rectangle
            corners = np.array([[i, j, 0], [i + 1, j, 0], [i + 1, j + 1, 0], [i, j + 1, 0]], dtype=float) / 2
            if ((corners - origin) @ rotation)[:, 2].max() > -0.3:
                continue  # behind or beside the camera
            fade = np.exp(-0.15 * np.linalg.norm(corners.mean(0)[:2]))
            xy = project(corners)
            x, y = xy[:, 0], xy[:, 1]
            area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
            if x.max() < 0 or x.min() > size or y.min() > size or area < 0.5 * (size / 64) ** 2:
                continue  # off the picture or under half a pixel
            points = " ".join(f"{x:.3f},{y:.3f}" for x, y in xy)
            shapes.append(f'<polygon id="tile{i}_{j}" points="{points}" '
                          f'fill="{hex_colour(fade * 0.75 + (1 - fade) * BACKGROUND)}"/>')  # fmt: skip
    shapes.append(f'<rect id="haze" y="{horizon:.3f}" width="{size}" height="{0.12 * size:.3f}" '
                  f'fill="{hex_colour(BACKGROUND)}" fill-opacity="0.6"/>')  # fmt: skip
    centre = np.array([0.0, 0.0, 0.34])
    cx, cy = project(centre[None])[0]
    radius = focal * 0.34 / np.linalg.norm(centre - origin)
    light = project(centre[None] + 0.34 * np.array([[0.4, -0.3, 0.85]]))[0] - (cx, cy)
    for k, shade in enumerate(BALL_SHADES):
        scale = 1 - k / len(BALL_SHADES)
        x, y = np.array([cx, cy]) + (1 - scale) * 0.8 * light
        shapes.append(f'<circle id="ball{k}" cx="{x:.3f}" cy="{y:.3f}" r="{radius * scale:.3f}" '
                      f'fill="{hex_colour(shade * np.array(COLOURS[colour]))}"/>')  # fmt: skip
    body = "\n".join(f"  {shape}" for shape in shapes)
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}">\n{body}\n</svg>\n'
