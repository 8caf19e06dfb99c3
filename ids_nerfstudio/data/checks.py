"""Checks of a nerfstudio dataset before a run writes anything: each fault is a ``UserError`` naming the file/flag."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ids_nerfstudio.errors import UserError, first_line


def check_nerfstudio_dataset(data: Path, downscale_factor: int | None = None) -> None:
    """A nerfstudio dataset whose images (and masks) nerfstudio's loader will read: transforms.json (or the given
    .json) with frames whose image files exist and open, in ``images_N/`` for an explicit ``downscale_factor`` N > 1
    (as nerfstudio's dataparser reads them), and per-frame ``mask_path`` masks of their image's size."""
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    if not transforms.is_file():
        raise UserError(f"--data {data}: no transforms.json there; pass a nerfstudio dataset (ns-process-data output)")
    try:
        frames = json.loads(transforms.read_text())["frames"]
        paths = [transforms.parent / frame["file_path"] for frame in frames]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{transforms}: not a nerfstudio transforms file ({type(error).__name__}: {error})") from error
    if not paths:
        raise UserError(f"{transforms}: no frames")
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{transforms}: {len(missing)} of {len(paths)} images are missing, e.g. {missing[0]}")
    if downscale_factor is not None and downscale_factor > 1:
        folder = transforms.parent / f"images_{downscale_factor}"
        paths = [folder / path.name for path in paths]
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise UserError(
                f"--downscale-factor {downscale_factor}: {len(missing)} of {len(paths)} images are missing from "
                f"{folder} (e.g. {missing[0].name}); write them with ns-process-data, or leave the factor out"
            )
    sizes = [image_size(path, transforms) for path in paths]
    for frame, size in zip(frames, sizes, strict=True):
        if "mask_path" not in frame:
            continue
        mask = transforms.parent / frame["mask_path"]
        if downscale_factor is not None and downscale_factor > 1:
            mask = transforms.parent / f"masks_{downscale_factor}" / mask.name
        if not mask.is_file():
            raise UserError(f"{transforms}: the mask of {frame['file_path']} is missing: {mask}")
        if image_size(mask, transforms) != size:
            raise UserError(
                f"{transforms}: the mask {mask} is {image_size(mask, transforms)} (width, height), its image {size}"
            )


def dataset_has_masks(data: Path) -> bool:
    """Whether every frame of a nerfstudio dataset names a ``mask_path``."""
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    return all("mask_path" in frame for frame in json.loads(transforms.read_text())["frames"])


def check_mask_folder(data: Path, folder: Path) -> None:
    """``--pipeline.mask.source FOLDER``: a folder with one mask per frame, named like its image, of its size."""
    transforms = data if data.suffix == ".json" else data / "transforms.json"
    if not folder.is_dir():
        raise UserError(f"--pipeline.mask.source {folder}: not a folder (pass off, auto, dataset or a mask folder)")
    for frame in json.loads(transforms.read_text())["frames"]:
        image = transforms.parent / frame["file_path"]
        found = sorted(folder.glob(f"{image.stem}.*"))
        if not found:
            raise UserError(f"--pipeline.mask.source {folder}: no mask for {image.name} (want {image.stem}.png there)")
        if image_size(found[0], transforms) != image_size(image, transforms):
            raise UserError(
                f"--pipeline.mask.source: the mask {found[0]} is {image_size(found[0], transforms)} (width, height), "
                f"its image {image_size(image, transforms)}"
            )


def image_size(path: Path, transforms: Path) -> tuple[int, int]:
    """(width, height) of an image file of the dataset, which must open and verify (UserError otherwise)."""
    try:
        with Image.open(path) as image:
            image.verify()  # the header and the data's integrity, without decoding the pixels
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise UserError(f"{transforms}: cannot read {path} as an image ({first_line(error)})") from error
