"""``ids-demo-scene``: a procedural scene in nerfstudio's format, for a first edit without any download.

A few coloured spheres on a floor, seen by cameras on a ring around them, ray-traced with numpy and written
as ``transforms.json`` + ``images/``::

    ids-demo-scene demo --size 128 --views 48
    ns-train ids-edit --data demo --prompt-src "a photo of colourful balls" --prompt-trg "a photo of oranges"
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from PIL import Image

SPHERES = [  # centre (x, y, z), radius, RGB
    ((0.0, 0.0, 0.35), 0.35, (0.85, 0.2, 0.15)),
    ((0.6, 0.3, 0.25), 0.25, (0.2, 0.6, 0.9)),
    ((-0.5, 0.45, 0.2), 0.2, (0.95, 0.8, 0.2)),
    ((-0.3, -0.55, 0.3), 0.3, (0.3, 0.75, 0.35)),
]
BACKGROUND = np.array([0.92, 0.92, 0.95])
LIGHT = np.array([0.4, -0.3, 0.85]) / np.linalg.norm([0.4, -0.3, 0.85])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world matrix in nerfstudio's (OpenGL) convention: the camera looks down its -z axis, z is up."""
    up = np.array([0.0, 0.0, 1.0])
    backward = (eye - target) / np.linalg.norm(eye - target)
    right = np.cross(up, backward)
    right /= np.linalg.norm(right)
    camera_up = np.cross(backward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, camera_up, backward], axis=1)
    pose[:3, 3] = eye
    return pose


def render_view(pose: np.ndarray, width: int, height: int, focal: float) -> np.ndarray:
    """Ray-trace the spheres and a checkered floor (z = 0) with Lambertian shading; returns HxWx3 in [0, 1]."""
    j, i = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    directions = np.stack([(i - width / 2) / focal, -(j - height / 2) / focal, -np.ones_like(i)], axis=-1)
    directions = directions @ pose[:3, :3].T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origin = pose[:3, 3]
    image = np.broadcast_to(BACKGROUND, directions.shape).copy()
    depth = np.full(directions.shape[:2], np.inf)

    with np.errstate(divide="ignore", invalid="ignore"):
        floor_t = -origin[2] / directions[..., 2]
    floor_hit = (floor_t > 0) & (floor_t < depth)
    points = origin + floor_t[..., None] * directions
    checker = (np.floor(points[..., 0] * 2) + np.floor(points[..., 1] * 2)) % 2
    floor_colour = np.where(checker[..., None] > 0, 0.75, 0.55) * np.ones(3)
    fade = np.exp(-0.15 * np.linalg.norm(points[..., :2], axis=-1))[..., None]
    image = np.where(floor_hit[..., None], fade * floor_colour + (1 - fade) * BACKGROUND, image)
    depth = np.where(floor_hit, floor_t, depth)

    for centre, radius, colour in SPHERES:
        offset = origin - np.array(centre)
        b = directions @ offset
        disc = b**2 - (offset @ offset - radius**2)
        t = -b - np.sqrt(np.maximum(disc, 0))
        hit = (disc > 0) & (t > 0) & (t < depth)
        normals = (origin + t[..., None] * directions - np.array(centre)) / radius
        shade = 0.25 + 0.75 * np.clip(normals @ LIGHT, 0, 1)
        image = np.where(hit[..., None], shade[..., None] * np.array(colour), image)
        depth = np.where(hit, t, depth)
    return np.clip(image, 0, 1)


def write_demo_scene(output: Path, size: int = 128, views: int = 48, radius: float = 3.0) -> Path:
    """Write ``views`` images of ``size`` x ``size`` pixels and their transforms.json into ``output``."""
    if size < 8 or views < 2:
        raise ValueError("need --size >= 8 and --views >= 2")
    focal = 1.2 * size
    frames = []
    with tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None) as staging:
        staging = Path(staging)
        (staging / "images").mkdir()
        for k in range(views):
            angle = 2 * np.pi * k / views
            height = 1.0 + 0.4 * np.sin(3 * angle)  # vary the elevation so the views are not coplanar
            eye = np.array([radius * np.cos(angle), radius * np.sin(angle), height])
            pose = look_at(eye, np.array([0.0, 0.0, 0.25]))
            name = f"images/frame_{k:05d}.png"
            Image.fromarray((render_view(pose, size, size, focal) * 255).round().astype(np.uint8)).save(staging / name)
            frames.append({"file_path": name, "transform_matrix": pose.tolist()})
        transforms = {
            "camera_model": "OPENCV", "fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2,
            "w": size, "h": size, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames,
        }  # fmt: skip
        (staging / "transforms.json").write_text(json.dumps(transforms, indent=2))
        output.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            shutil.move(str(item), output / item.name)
    return output


@dataclass
class DemoSceneArgs:
    """Write a procedural demo scene (spheres on a floor, cameras on a ring) in nerfstudio's format."""

    output: tyro.conf.Positional[Path]
    """Folder to write transforms.json and images/ into (must be empty or new)."""
    size: int = 128
    """Image width and height in pixels."""
    views: int = 48
    """Number of camera views on the ring."""


def entrypoint() -> None:
    """Console script ``ids-demo-scene``."""
    args = tyro.cli(DemoSceneArgs, prog="ids-demo-scene")
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        print(f"ids-demo-scene: error: {args.output} exists and is not an empty folder", file=sys.stderr)
        sys.exit(2)
    try:
        write_demo_scene(args.output, args.size, args.views)
    except (ValueError, OSError) as error:
        print(f"ids-demo-scene: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.views} views of {args.size}x{args.size} to {args.output}")


if __name__ == "__main__":
    entrypoint()
