"""``ids-demo-scene``: a procedural scene in nerfstudio's format, for a first edit without any download.

The demo world: balls and cubes of six named colours on a grey checkered floor (``render_with_masks`` also
returns each object's mask). The demo scene is a red ball of that world, seen by cameras on a
ring around them, ray-traced with numpy and written as ``transforms.json`` + ``images/``::

    ids-demo-scene demo --size 64 --views 24
    ns-train ids-edit-demo --data demo --prompt-src "a photo of a red ball on a grey floor" \
        --prompt-trg "a photo of a blue ball on a grey floor"
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from PIL import Image
from tqdm.auto import tqdm

from ids_nerfstudio.errors import UserError, exit_on_user_error

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.2, 0.68, 0.25),
    "blue": (0.15, 0.3, 0.9),
    "yellow": (0.95, 0.85, 0.15),
    "orange": (0.98, 0.5, 0.08),
    "purple": (0.55, 0.2, 0.75),
}
"""The named colours of the demo world (linear RGB in [0, 1] before shading)."""
SHAPES = ("ball", "cube")
"""The shapes of the demo world: a ball is a sphere resting on the floor, a cube an upright box."""
BACKGROUND = np.array([0.92, 0.92, 0.95])
LIGHT = np.array([0.4, -0.3, 0.85]) / np.linalg.norm([0.4, -0.3, 0.85])


@dataclass(frozen=True)
class SceneObject:
    """One object of the demo world, resting on the floor (z = 0)."""

    shape: str
    """``ball`` or ``cube``."""
    colour: str
    """A name in ``COLOURS``."""
    x: float
    y: float
    size: float
    """Radius of a ball, half the side of a cube."""
    angle: float = 0.0
    """Rotation of a cube about the vertical axis, in radians."""

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in COLOURS:
            raise ValueError(f"unknown object {self.colour} {self.shape}: shapes {SHAPES}, colours {list(COLOURS)}")


DEMO_OBJECTS = (SceneObject("ball", "red", 0.0, 0.0, 0.34),)
"""The demo scene: "a photo of a red ball on a grey floor" (one object: the demo prior binds colours to objects
poorly in two-object views)."""


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


def _hit_ball(origin: np.ndarray, directions: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """Ray distance (inf where missed) and unit normals of a sphere resting on the floor."""
    centre = np.array([obj.x, obj.y, obj.size])
    offset = origin - centre
    b = directions @ offset
    disc = b**2 - (offset @ offset - obj.size**2)
    t = -b - np.sqrt(np.maximum(disc, 0))
    t = np.where((disc > 0) & (t > 0), t, np.inf)
    normals = (origin + np.where(np.isfinite(t), t, 0)[..., None] * directions - centre) / obj.size
    return t, normals


def _hit_cube(origin: np.ndarray, directions: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """Ray distance (inf where missed) and unit normals of an upright box, by the slab method in its own frame."""
    c, s = np.cos(obj.angle), np.sin(obj.angle)
    to_local = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # rotation by -angle about z
    o = to_local @ (origin - np.array([obj.x, obj.y, obj.size]))
    d = directions @ to_local.T
    with np.errstate(divide="ignore", invalid="ignore"):
        near = (-obj.size * np.sign(d) - o) / d  # entry distance of each slab
        far = (obj.size * np.sign(d) - o) / d
    near = np.where(d == 0, np.where(np.abs(o) <= obj.size, -np.inf, np.inf), near)
    far = np.where(d == 0, np.where(np.abs(o) <= obj.size, np.inf, -np.inf), far)
    t_near, t_far = near.max(-1), far.min(-1)
    t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
    axis = near.argmax(-1)
    local_normals = -np.sign(np.take_along_axis(d, axis[..., None], -1)) * np.eye(3)[axis]
    return t, local_normals @ to_local  # back to world: the inverse rotation is the transpose


def render_view(
    pose: np.ndarray, width: int, height: int, focal: float, objects: tuple[SceneObject, ...] = DEMO_OBJECTS
) -> np.ndarray:
    """Ray-trace the objects and a checkered floor (z = 0) with Lambertian shading; returns HxWx3 in [0, 1]."""
    return render_with_masks(pose, width, height, focal, objects)[0]


def render_with_masks(
    pose: np.ndarray, width: int, height: int, focal: float, objects: tuple[SceneObject, ...] = DEMO_OBJECTS
) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) in [0, 1] and per-object visibility masks (N, H, W) of the objects, in their order."""
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

    owner = np.full(depth.shape, -1)
    for k, obj in enumerate(objects):
        t, normals = (_hit_ball if obj.shape == "ball" else _hit_cube)(origin, directions, obj)
        hit = t < depth
        shade = 0.25 + 0.75 * np.clip(normals @ LIGHT, 0, 1)
        image = np.where(hit[..., None], shade[..., None] * np.array(COLOURS[obj.colour]), image)
        depth = np.where(hit, t, depth)
        owner = np.where(hit, k, owner)
    masks = owner[None] == np.arange(len(objects))[:, None, None]
    return np.clip(image, 0, 1), masks


MIN_SIZE, MAX_SIZE = 8, 4096
MIN_VIEWS, MAX_VIEWS = 2, 10_000


def write_demo_scene(output: Path, size: int = 128, views: int = 48, radius: float = 3.0) -> Path:
    """Write ``views`` images of ``size`` x ``size`` pixels and their transforms.json into ``output``.

    The files are made in a staging folder and moved in at the end: a failure leaves ``output`` as it was.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if not MIN_VIEWS <= views <= MAX_VIEWS:
        raise UserError(f"--views must be between {MIN_VIEWS} and {MAX_VIEWS}, got {views}")
    focal = 1.2 * size
    frames = []
    with tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None) as staging:
        staging = Path(staging)
        (staging / "images").mkdir()
        for k in tqdm(range(views), desc="rendering views", unit="view", leave=False, disable=views < 50):
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
    with exit_on_user_error("ids-demo-scene"):
        if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
            raise UserError(f"{args.output} exists and is not an empty folder")
        try:
            write_demo_scene(args.output, args.size, args.views)
        except OSError as error:
            reason = error.strerror or error
            raise UserError(f"cannot write to {args.output} ({reason}); choose another folder") from error
    print(f"wrote {args.views} views of {args.size}x{args.size} to {args.output}")


if __name__ == "__main__":
    entrypoint()
