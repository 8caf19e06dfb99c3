"""nerfstudio's dataparser, reading a splat scene's initial point cloud without open3d.

nerfstudio's dataparser reads ``ply_file_path`` (``sparse_pc.ply``, written by ns-process-data) with open3d, whose
import needs the system library libusb; ``EditNerfstudioDataParser`` reads the same file with ``read_ply_points``
and is otherwise nerfstudio's, so splat scenes load on machines without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from torch import Tensor

from ids_nerfstudio.data.ply import read_ply_points


@dataclass
class EditNerfstudioDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio's dataparser, reading the point cloud without open3d (splat scenes load the points)."""

    _target: type = field(default_factory=lambda: EditNerfstudioDataParser)
    load_3D_points: bool = True  # noqa: N815 - nerfstudio's field
    """Whether to load the initial point cloud (``ply_file_path`` in transforms.json) for splatfacto."""


class EditNerfstudioDataParser(Nerfstudio):
    """``Nerfstudio`` whose ``_load_3D_points`` (nerfstudio 1.1.5's signature and transform) reads with numpy."""

    def _load_3D_points(  # noqa: N802 - overrides nerfstudio's method
        self, ply_file_path: Path, transform_matrix: Float[Tensor, "3 4"], scale_factor: float
    ) -> dict[str, Tensor] | None:
        xyz, rgb = read_ply_points(ply_file_path)
        if len(xyz) == 0:
            return None
        points = torch.from_numpy(xyz)
        points = torch.cat([points, torch.ones_like(points[:, :1])], -1) @ transform_matrix.T * scale_factor
        return {"points3D_xyz": points, "points3D_rgb": torch.from_numpy(rgb)}

