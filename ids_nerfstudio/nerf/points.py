"""The initial point cloud of a splat scene: PLY files read and written with numpy, and a dataparser that uses them.

nerfstudio's dataparser reads ``ply_file_path`` (``sparse_pc.ply``, written by ns-process-data) with open3d, whose
import needs the system library libusb; ``EditNerfstudioDataParser`` reads the same file with ``read_ply_points``
and is otherwise nerfstudio's, so splat scenes load on machines without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, UInt8
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from torch import Tensor

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.files import write_atomic

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}  # fmt: skip
"""PLY scalar types and their numpy codes."""


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N, 3) float32 and colours (N, 3) uint8 of a PLY file's vertices (ascii or binary; colours from
    ``red green blue``, grey when absent). Raises UserError naming the file when it is not such a PLY."""
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise UserError(f"{path}: not a PLY file")
    body_start = data.index(b"\n", end) + 1
    lines = data[:end].decode("ascii", "replace").splitlines()
    encoding = next((line.split()[1] for line in lines if line.startswith("format")), "")
    count, properties, in_vertex = 0, [], False
    for words in (line.split() for line in lines):
        if words[:1] == ["element"]:
            in_vertex = words[1] == "vertex"
            count = int(words[2]) if in_vertex else count
        elif words[:1] == ["property"] and in_vertex:
            if words[1] == "list" or words[1] not in PLY_TYPES:
                raise UserError(f"{path}: vertex property {' '.join(words[1:])} is not supported")
            properties.append((words[2], PLY_TYPES[words[1]]))
    names = [name for name, _ in properties]
    if not {"x", "y", "z"} <= set(names):
        raise UserError(f"{path}: the vertices have no x, y, z")
    if encoding == "ascii":
        table = np.loadtxt(data[body_start:].decode().splitlines()[:count], ndmin=2)
        vertices = {name: table[:, k] for k, name in enumerate(names)}
    elif encoding in ("binary_little_endian", "binary_big_endian"):
        order = "<" if encoding == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + code) for name, code in properties])
        if len(data) - body_start < count * dtype.itemsize:
            raise UserError(f"{path}: truncated ({count} vertices announced)")
        vertices = np.frombuffer(data, dtype=dtype, count=count, offset=body_start)
    else:
        raise UserError(f"{path}: unknown PLY format {encoding!r}")
    xyz = np.stack([vertices[axis] for axis in "xyz"], -1).astype(np.float32)
    if {"red", "green", "blue"} <= set(names):
        rgb = np.stack([vertices[channel] for channel in ("red", "green", "blue")], -1)
        float_colours = dict(properties)["red"].startswith("f")
        rgb = (np.clip(rgb, 0, 1) * 255).round() if float_colours else rgb  # open3d keeps colours in [0, 1]
    else:
        rgb = np.full_like(xyz, 128)
    return xyz, rgb.astype(np.uint8)


def write_ply_points(path: Path, xyz: Float[np.ndarray, "N 3"], rgb: UInt8[np.ndarray, "N 3"]) -> None:
    """A binary PLY of coloured points, as ns-process-data writes ``sparse_pc.ply`` (double x y z, uchar colours)."""
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\nproperty double x\n"
              "property double y\nproperty double z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nend_header\n")  # fmt: skip
    dtype = np.dtype([("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertices = np.empty(len(xyz), dtype=dtype)
    for k, axis in enumerate("xyz"):
        vertices[axis] = xyz[:, k]
    for k, channel in enumerate(("red", "green", "blue")):
        vertices[channel] = rgb[:, k]
    write_atomic(path, lambda partial: partial.write_bytes(header.encode() + vertices.tobytes()))


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
