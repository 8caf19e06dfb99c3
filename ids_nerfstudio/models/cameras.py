"""Camera helpers shared by the representations."""

from __future__ import annotations

from nerfstudio.cameras.cameras import Cameras


def resize_camera(camera: Cameras, width: int, height: int) -> Cameras:
    """The same camera with its intrinsics rescaled to a ``width`` x ``height`` image."""
    sx, sy = width / camera.width, height / camera.height
    return Cameras(
        camera_to_worlds=camera.camera_to_worlds, fx=camera.fx * sx, fy=camera.fy * sy, cx=camera.cx * sx,
        cy=camera.cy * sy, width=width, height=height, distortion_params=camera.distortion_params,
        camera_type=camera.camera_type, metadata=camera.metadata,
    )  # fmt: skip
