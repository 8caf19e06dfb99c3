"""The demo world, ray-traced with numpy: balls and cubes of six named colours on a grey checkered floor.

``render_with_masks`` also returns each object's mask (the true masks of a local edit). The demo scene
(``demo.scene.write_demo_scene``) is one red ball of this world seen by cameras on a ring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    return trace_view(pose, width, height, focal, objects)[:2]


def trace_view(
    pose: np.ndarray, width: int, height: int, focal: float, objects: tuple[SceneObject, ...] = DEMO_OBJECTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``render_with_masks``'s image and masks, and the point (H, W, 3) each pixel sees (inf where nothing)."""
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
    return np.clip(image, 0, 1), masks, origin + depth[..., None] * directions


def world_points(
    objects: tuple[SceneObject, ...] = DEMO_OBJECTS,
    count: int = 6000,
    seed: int = 0,
    floor_radius: float = 6.0,
    sky_radius: float = 12.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Coloured points of the world's surfaces, as a structure-from-motion point cloud would give (splatfacto's
    initial Gaussians): the floor out to ``floor_radius`` (denser near the objects), the objects' surfaces, and a
    dome of sky at ``sky_radius``. Returns positions (N, 3) and colours (N, 3) uint8, shaded as ``render_view``."""
    rng = np.random.default_rng(seed)
    per_object = count // (4 * max(len(objects), 1))
    floor_count, sky_count = count // 2, count - count // 2 - per_object * len(objects)
    radius = floor_radius * rng.random(floor_count) ** 1.5  # denser near the middle, where the cameras look
    angle = 2 * np.pi * rng.random(floor_count)
    floor = np.stack([radius * np.cos(angle), radius * np.sin(angle), np.zeros(floor_count)], -1)
    checker = (np.floor(floor[:, 0] * 2) + np.floor(floor[:, 1] * 2)) % 2
    fade = np.exp(-0.15 * radius)[:, None]
    floor_colours = fade * np.where(checker[:, None] > 0, 0.75, 0.55) + (1 - fade) * BACKGROUND
    points, colours = [floor], [floor_colours]
    for obj in objects:
        normals = rng.normal(size=(per_object, 3))
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        if obj.shape == "cube":  # project the sphere's directions onto the box
            normals = normals / np.abs(normals).max(-1, keepdims=True)
        c, s = np.cos(obj.angle), np.sin(obj.angle)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        offsets = obj.size * normals @ rotation.T
        points.append(np.array([obj.x, obj.y, obj.size]) + offsets)
        unit = offsets / np.linalg.norm(offsets, axis=-1, keepdims=True)
        colours.append((0.25 + 0.75 * np.clip(unit @ LIGHT, 0, 1))[:, None] * np.array(COLOURS[obj.colour]))
    sky = rng.normal(size=(sky_count, 3))
    sky[:, 2] = np.abs(sky[:, 2])  # the upper half: the floor hides the rest
    points.append(sky_radius * sky / np.linalg.norm(sky, axis=-1, keepdims=True))
    colours.append(np.broadcast_to(BACKGROUND, (sky_count, 3)))
    rgb = (np.clip(np.concatenate(colours), 0, 1) * 255).round().astype(np.uint8)
    return np.concatenate(points).astype(np.float32), rgb
