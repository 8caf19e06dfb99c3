"""The demo scene in nerfstudio's format: one red ball (or cube) of the demo world seen by cameras on a ring.

``write_demo_scene`` writes ``transforms.json``, ``images/`` and the point cloud ``sparse_pc.ply`` (the world's
surfaces, for splatfacto) as ``ns-process-data`` would, for a first edit without any download (the CLI is
``ids-demo-scene``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ids_nerfstudio.data.ply import write_ply_points
from ids_nerfstudio.demo.world import DEMO_OBJECTS, SHAPES, SceneObject, look_at, render_view, world_points
from ids_nerfstudio.errors import UserError

MIN_SIZE, MAX_SIZE = 8, 4096
MIN_VIEWS, MAX_VIEWS = 2, 10_000
POINT_CLOUD = "sparse_pc.ply"
"""The initial point cloud's file, named as ns-process-data names it."""


def demo_objects(shape: str = "ball") -> tuple[SceneObject, ...]:
    """The demo scene's object with the given shape (a cube: the ball's bounding box, same place and colour)."""
    if shape not in SHAPES:
        raise UserError(f"--object must be one of {', '.join(SHAPES)}, got {shape!r}")
    return tuple(dataclasses.replace(obj, shape=shape) for obj in DEMO_OBJECTS)


def ring_poses(views: int, radius: float = 3.0) -> list[np.ndarray]:
    """The demo scene's camera-to-world matrices: ``views`` cameras on a ring around the ball, looking at it."""
    poses = []
    for k in range(views):
        angle = 2 * np.pi * k / views
        height = 1.0 + 0.4 * np.sin(3 * angle)  # vary the elevation so the views are not coplanar
        eye = np.array([radius * np.cos(angle), radius * np.sin(angle), height])
        poses.append(look_at(eye, np.array([0.0, 0.0, 0.25])))
    return poses


def write_demo_scene(output: Path, size: int = 128, views: int = 48, radius: float = 3.0, shape: str = "ball") -> Path:
    """Write ``views`` images of ``size`` x ``size`` pixels and their transforms.json into ``output``.

    ``shape`` is the object's (``demo_objects``): "a red cube" is the structure edit's other end.

    The files are made in a staging folder and moved in at the end: a failure leaves ``output`` as it was.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if not MIN_VIEWS <= views <= MAX_VIEWS:
        raise UserError(f"--views must be between {MIN_VIEWS} and {MAX_VIEWS}, got {views}")
    objects = demo_objects(shape)
    focal = 1.2 * size
    frames = []
    with tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None) as staging:
        staging = Path(staging)
        (staging / "images").mkdir()
        poses = ring_poses(views, radius)
        for k, pose in enumerate(tqdm(poses, desc="rendering views", unit="view", leave=False, disable=views < 50)):
            name = f"images/frame_{k:05d}.png"
            image = render_view(pose, size, size, focal, objects)
            Image.fromarray((image * 255).round().astype(np.uint8)).save(staging / name)
            frames.append({"file_path": name, "transform_matrix": pose.tolist()})
        transforms = {
            "camera_model": "OPENCV", "fl_x": focal, "fl_y": focal, "cx": size / 2, "cy": size / 2,
            "w": size, "h": size, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames,
            "ply_file_path": POINT_CLOUD,
        }  # fmt: skip
        write_ply_points(staging / POINT_CLOUD, *world_points(objects))
        (staging / "transforms.json").write_text(json.dumps(transforms, indent=2))
        output.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            shutil.move(str(item), output / item.name)
    return output
