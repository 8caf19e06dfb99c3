"""Serves ray batches (reconstruction, regularizers) and whole training views with their source latents (editing).

``EditViewsMixin`` and ``EditViewsConfig`` add the editing step's view sampling and source-latent cache to any
nerfstudio data manager that has a ``train_dataset``; ``EditDataManager`` puts them on ``VanillaDataManager``
(nerfacto's), ``EditFullImageDataManager`` on ``FullImageDatamanager`` (splatfacto's).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from torch import Tensor

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.images import as_batch, resize_images

DATASET_MASKS = "dataset"
"""``--pipeline.mask.source`` of the dataset's own per-frame masks (``mask_path`` in transforms.json)."""


@dataclass
class EditViews:
    """A batch of training views for one editing step (CSD's particles when there are several)."""

    indices: list[int]
    """Training-image indices of the views."""
    cameras: list[Cameras]
    """One camera per view, at the training resolution."""


@dataclass
class EditViewsConfig:
    """The editing step's view options, added to a nerfstudio data manager config."""

    change_view_every: int = 1
    """Editing steps spent on one view (or batch of views) before drawing new ones."""
    views_per_step: int = 1
    """Views rendered per editing step (CSD uses them as particles)."""
    seed: int = 0
    """Seed of the view draws."""


class EditViewsMixin:
    """View sampling and a CPU cache of source latents (encoded once per view and size) for a data manager."""

    config: EditViewsConfig

    def __init__(self, config: EditViewsConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.source_latents: dict[tuple[int, int, int], Tensor] = {}
        self.edit_masks: dict[Hashable, Tensor] = {}
        self._view_generator = torch.Generator().manual_seed(config.seed)
        self._current: list[int] = []

    def next_edit_views(self, edit_step: int) -> EditViews:
        """The views of this editing step: redrawn every ``change_view_every`` steps, without replacement."""
        count = len(self.train_dataset)
        if not self._current or edit_step % self.config.change_view_every == 0:
            take = min(self.config.views_per_step, count)
            self._current = torch.randperm(count, generator=self._view_generator)[:take].tolist()
        cameras = [self.train_dataset.cameras[i : i + 1] for i in self._current]
        return EditViews(indices=list(self._current), cameras=cameras)

    def source_image(self, index: int, width: int, height: int) -> Float[Tensor, "3 H W"]:
        """The training image of a view, RGB in [0, 1], resized (antialiased) to ``width`` x ``height``."""
        return resize_images(as_batch(self.train_dataset[index]["image"]), height, width)[0]

    def source_latent(
        self, index: int, width: int, height: int, encode: Callable[[Tensor], Tensor]
    ) -> Float[Tensor, "C h w"]:
        """The encoded source image of a view, computed once per view and size and kept on the CPU."""
        key = (index, width, height)
        if key not in self.source_latents:
            with torch.no_grad():
                self.source_latents[key] = encode(self.source_image(index, width, height)[None])[0].cpu()
        return self.source_latents[key]

    def edit_mask(self, key: Hashable, compute: Callable[[], Tensor]) -> Float[Tensor, "1 h w"]:
        """A view's latent mask, computed once per ``key`` (view, size, prompts) and kept on the CPU."""
        if key not in self.edit_masks:
            with torch.no_grad():
                self.edit_masks[key] = compute().cpu()
        return self.edit_masks[key]


def mask_file(dataset: InputDataset, index: int, source: str) -> Path:
    """The given mask of a dataset's view: its frame's ``mask_path`` (``source="dataset"``), or the file of a mask
    folder whose name (any extension) is the image's."""
    if source == DATASET_MASKS:
        masks = dataset._dataparser_outputs.mask_filenames  # nerfstudio keeps them only there
        if masks is None:
            raise UserError("--pipeline.mask.source dataset: the dataset's frames have no mask_path")
        return Path(masks[index])
    stem = Path(dataset.image_filenames[index]).stem
    found = sorted(Path(source).glob(f"{stem}.*"))
    if not found:
        raise UserError(f"--pipeline.mask.source {source}: no mask for {stem} (want {source}/{stem}.png)")
    return found[0]


@dataclass
class EditDataManagerConfig(EditViewsConfig, VanillaDataManagerConfig):
    """Data manager for editing nerfacto: nerfstudio's ray batches plus whole views."""

    _target: type = field(default_factory=lambda: EditDataManager)


class EditDataManager(EditViewsMixin, VanillaDataManager):
    """``VanillaDataManager`` with the editing step's views."""

    config: EditDataManagerConfig


@dataclass
class EditFullImageDataManagerConfig(EditViewsConfig, FullImageDatamanagerConfig):
    """Data manager for editing splatfacto: nerfstudio's whole training images plus the editing step's views."""

    _target: type = field(default_factory=lambda: EditFullImageDataManager)


class EditFullImageDataManager(EditViewsMixin, FullImageDatamanager):
    """``FullImageDatamanager`` with the editing step's views."""

    config: EditFullImageDataManagerConfig
