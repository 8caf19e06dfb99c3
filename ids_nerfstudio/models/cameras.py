"""Camera helpers shared by the representations."""

from __future__ import annotations

from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor


def resize_camera(camera: Cameras, width: int, height: int) -> Cameras:
    """The same camera with its intrinsics rescaled to a ``width`` x ``height`` image."""
    sx, sy = width / camera.width, height / camera.height
    return Cameras(
        camera_to_worlds=camera.camera_to_worlds, fx=camera.fx * sx, fy=camera.fy * sy, cx=camera.cx * sx,
        cy=camera.cy * sy, width=width, height=height, distortion_params=camera.distortion_params,
        camera_type=camera.camera_type, metadata=camera.metadata,
    )  # fmt: skip


def pixel_points(camera: Cameras, depth: Float[Tensor, "H W"], along_axis: bool = False) -> Float[Tensor, "H W 3"]:
    """The point at ``depth`` on each pixel's ray of one camera: the distance along the (unit) ray, or with
    ``along_axis`` the depth along the camera's viewing axis (a rasterizer's), converted by the ray's length per
    unit of axis depth."""
    rays = camera.generate_rays(camera_indices=0, keep_shape=True).to(depth.device)
    distance = depth * rays.metadata["directions_norm"][..., 0] if along_axis else depth
    return rays.origins + rays.directions * distance[..., None]
