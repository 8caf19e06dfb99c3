"""The masks of a local edit, with one owner: ``EditMasks`` computes each training view's mask (the auto relevance mask
of its source latent, or a given file), keeps a bounded cache of them, and hands them out at latent size (to weight
the guidance gradient) or at the view's training resolution (to weight the colour loss that keeps the rest)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.data.datasets.base_dataset import InputDataset
from torch import Tensor

from ids_nerfstudio.data.datamanagers import EditViewsMixin
from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance.relevance import MaskConfig, auto_mask, given_mask
from ids_nerfstudio.images import load_mask
from ids_nerfstudio.prior.base import DiffusionPrior

DATASET_MASKS = "dataset"
"""``--pipeline.mask.source`` of the dataset's own per-frame masks (``mask_path`` in transforms.json)."""


class EditMasks:
    """Each training view's latent mask, computed once per (view, latent size, prompts) and kept on the CPU.

    The cache holds at most ``capacity`` masks and drops the least recently used first, so a viewer session that
    tries many prompts (each pair is a new key) keeps a bounded memory.
    """

    def __init__(self, config: MaskConfig, prior: DiffusionPrior, datamanager: EditViewsMixin, capacity: int) -> None:
        self.config = config
        self.prior = prior
        self.datamanager = datamanager
        self.capacity = capacity
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every cached mask (e.g. after the mask settings changed)."""
        self._cache.clear()

    def latent_masks(
        self, indices: list[int], z_src: Float[Tensor, "B C h w"], prompt_trg: str, prompt_src: str
    ) -> Float[Tensor, "B 1 h w"]:
        """The mask of each view ``indices[k]`` at the size of its source latent ``z_src[k]``."""
        height, width = z_src.shape[-2:]
        masks = []
        for k, index in enumerate(indices):
            key = (index, height, width, prompt_trg, prompt_src)
            if key not in self._cache:
                dataset = self.datamanager.train_dataset
                with torch.no_grad():
                    self._cache[key] = self.view_mask(dataset, index, z_src[k : k + 1], prompt_trg, prompt_src)[0].cpu()
                if len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            masks.append(self._cache[key])
        return torch.stack(masks).to(z_src.device)

    def training_mask(
        self, index: int, guidance_size: tuple[int, int], prompt_trg: str, prompt_src: str
    ) -> Float[Tensor, "H W"]:
        """A view's latent mask at the view's training resolution (nearest: each pixel takes the latent pixel it
        falls in); ``guidance_size`` is the (width, height) the view is edited at."""
        width, height = guidance_size
        z_src = self.datamanager.source_latent(index, width, height, self.prior.encode_images)
        mask = self.latent_masks([index], z_src[None].to(self.prior.device).float(), prompt_trg, prompt_src).cpu()
        camera = self.datamanager.train_dataset.cameras[index]
        return F.interpolate(mask, size=(int(camera.height), int(camera.width)), mode="nearest")[0, 0]

    def view_mask(
        self, dataset: InputDataset, index: int, z_src: Float[Tensor, "1 C h w"], prompt_trg: str, prompt_src: str
    ) -> Float[Tensor, "1 1 h w"]:
        """The mask of view ``index`` of ``dataset`` (training or evaluation) at latent size, not cached: the auto
        mask of its source latent, or its given mask."""
        if self.config.automatic:
            return auto_mask(self.prior, z_src, prompt_trg, prompt_src, self.config)
        camera = dataset.cameras[index]
        size = (int(camera.width), int(camera.height))
        given = load_mask(self.mask_file(dataset, index), size, "--pipeline.mask.source")
        return given_mask(given, z_src, self.config)

    def mask_file(self, dataset: InputDataset, index: int) -> Path:
        """The given mask of a view: its frame's ``mask_path`` (``--pipeline.mask.source dataset``), or the file of
        the mask folder whose name (any extension) is the image's."""
        source = self.config.source
        if source == DATASET_MASKS:
            if dataset is self.datamanager.train_dataset:
                masks = self.datamanager.train_dataparser_outputs.mask_filenames
            else:  # nerfstudio keeps an evaluation dataset's masks only in its private dataparser outputs
                masks = dataset._dataparser_outputs.mask_filenames
            if masks is None:
                raise UserError("--pipeline.mask.source dataset: the dataset's frames have no mask_path")
            return Path(masks[index])
        stem = Path(dataset.image_filenames[index]).stem
        found = sorted(Path(source).glob(f"{stem}.*"))
        if not found:
            raise UserError(f"--pipeline.mask.source {source}: no mask for {stem} (want {source}/{stem}.png)")
        return found[0]
