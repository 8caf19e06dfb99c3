"""Data managers: nerfstudio's training batches (reconstruction, regularizers) plus whole training views with their
source latents (the editing step).

``EditViewsMixin`` and ``EditViewsConfig`` add the editing step's view sampling and source-latent cache to any
nerfstudio data manager that has a ``train_dataset``; ``EditDataManager`` puts them on ``VanillaDataManager``
(nerfacto's ray batches), ``EditFullImageDataManager`` on ``FullImageDatamanager`` (splatfacto's whole images).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from torch import Tensor

from ids_nerfstudio.images import as_batch, resize_images


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
        with warnings.catch_warnings():
            # nerfstudio gives its image loaders world_size * 4 workers, yet they never start a worker process (its
            # CacheDataloader and eval loaders load in this process, on at most cores - 1 threads): torch's advice
            # on the number of worker processes does not apply.
            warnings.filterwarnings(
                "ignore", r"This DataLoader will create \d+ worker processes", UserWarning, r"torch\.utils\.data"
            )
            super().__init__(config, **kwargs)
        self.source_latents: dict[tuple[int, int, int], Tensor] = {}
        self._view_generator = torch.Generator().manual_seed(config.seed)
        self._current: list[int] = []

    @property
    def current_edit_views(self) -> list[int]:
        """Training indices of the views the editing step is on (empty before the first)."""
        return list(self._current)

    def reset_edit_views(self, seed: int | None = None) -> None:
        """Forget the current views; the next editing step draws anew (from ``seed`` when given)."""
        self._current = []
        if seed is not None:
            self._view_generator.manual_seed(seed)

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

    # ---------------------------------------------------------------------- dataset updates (editing/dataset_update.py)
    def train_image(self, index: int) -> Float[Tensor, "H W 3"]:
        """The image training view ``index`` is trained on now (an edit once a dataset update replaced it), RGB in
        [0, 1] on the CPU."""
        image = self._cached_image(index)
        return (image.float() / 255 if image.dtype == torch.uint8 else image.float())[..., :3].cpu()

    def replace_train_image(self, index: int, image: Float[Tensor, "H W 3"]) -> None:
        """Train view ``index`` on ``image`` (RGB in [0, 1], its training size) from the next batch on, in the data
        manager's cache only: the dataset's files, and ``source_image``, keep the original."""
        cached = self._cached_image(index)
        if tuple(image.shape) != (*cached.shape[:2], 3):
            raise ValueError(f"view {index}: an image of {tuple(cached.shape[:2])} + (3,) is needed, got {image.shape}")
        value = image.clamp(0, 1)
        if cached.dtype == torch.uint8:
            value = (value * 255).round()
        cached[..., :3] = value.to(cached)

    def _cached_image(self, index: int) -> Tensor:
        """The cached training image of view ``index`` (H, W, C), edited in place by ``replace_train_image``."""
        raise NotImplementedError


@dataclass
class EditDataManagerConfig(EditViewsConfig, VanillaDataManagerConfig):
    """Data manager for editing nerfacto: nerfstudio's ray batches plus whole views."""

    _target: type = field(default_factory=lambda: EditDataManager)


class EditDataManager(EditViewsMixin, VanillaDataManager):
    """``VanillaDataManager`` with the editing step's views."""

    config: EditDataManagerConfig

    def _cached_image(self, index: int) -> Tensor:
        """The row of the data loader's cached batch that holds view ``index`` (all images cached, as IN2N's data
        manager keeps one ``image_batch`` and edits it in place)."""
        batch = self.train_image_dataloader.cached_collated_batch
        if batch is None or not self.train_image_dataloader.cache_all_images:
            raise ValueError("dataset updates need every training image cached (train_num_images_to_sample_from -1)")
        (row,) = (batch["image_idx"] == index).nonzero()[:, 0].tolist()
        return batch["image"][row]


@dataclass
class EditFullImageDataManagerConfig(EditViewsConfig, FullImageDatamanagerConfig):
    """Data manager for editing splatfacto: nerfstudio's whole training images plus the editing step's views."""

    _target: type = field(default_factory=lambda: EditFullImageDataManager)


class EditFullImageDataManager(EditViewsMixin, FullImageDatamanager):
    """``FullImageDatamanager`` with the editing step's views."""

    config: EditFullImageDataManagerConfig

    def _cached_image(self, index: int) -> Tensor:
        """``cached_train[index]["image"]``, which ``next_train`` copies to the device every step."""
        return self.cached_train[index]["image"]
