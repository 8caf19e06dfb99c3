"""The masks of a local edit, with one owner: ``EditMasks`` computes each training view's mask (the auto relevance mask
of its source latent, or a given file), keeps a bounded cache of them, and hands them out at latent size (to weight
the guidance gradient) or at the view's training resolution (to weight the colour loss that keeps the rest)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datasets.base_dataset import InputDataset
from torch import Tensor

from ids_nerfstudio.data.datamanagers import EditViewsMixin
from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance.relevance import MaskConfig, given_mask, paste_weight, view_mask
from ids_nerfstudio.images import as_batch, load_mask, resize_images
from ids_nerfstudio.prior.base import DiffusionPrior

SURFACE_TOLERANCE = 0.05
"""A point is seen by a view when it lies at most this fraction beyond that view's rendered surface on its ray."""
DATASET_MASKS = "dataset"
"""``--pipeline.mask.source`` of the dataset's own per-frame masks (``mask_path`` in transforms.json)."""


def project_points(points: Float[Tensor, "N 3"], camera: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """The pixel (row, column) of one pinhole camera (OpenGL convention, as nerfstudio's) that each point falls in,
    and whether it does (in front of the camera and inside the image)."""
    camera_to_world = camera.camera_to_worlds.reshape(3, 4).to(points)
    local = (points - camera_to_world[:, 3]) @ camera_to_world[:, :3]  # the camera looks down -z
    depth = -local[:, 2]
    safe = depth.clamp(min=1e-6)
    column = torch.floor(camera.cx.reshape(()).to(points) + camera.fx.reshape(()).to(points) * local[:, 0] / safe)
    row = torch.floor(camera.cy.reshape(()).to(points) - camera.fy.reshape(()).to(points) * local[:, 1] / safe)
    width, height = int(camera.width.reshape(())), int(camera.height.reshape(()))
    inside = (depth > 1e-6) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
    return row.clamp(0, height - 1).long(), column.clamp(0, width - 1).long(), inside


def fuse_view_masks(
    masks: Sequence[Float[Tensor, "H W"]], points: Sequence[Float[Tensor, "H W 3"]], cameras: Cameras
) -> list[Float[Tensor, "H W"]]:
    """Each view's 0/1 mask where the views that see a pixel's scene point agree: the point (``points``: from the
    representation's rendered depth) is projected into every view (itself included), counted as seen where it lies
    in the image and not beyond that view's own surface on its ray (``SURFACE_TOLERANCE``), and the pixel is in the
    fused mask where at least half of the views that see it mark it (as Watch Your Steps lifts relevance into the
    scene, here by a vote instead of a field)."""
    masks, points = [m.float().cpu() for m in masks], [p.float().cpu() for p in points]
    cameras = cameras.to("cpu")
    origins = cameras.camera_to_worlds[:, :3, 3]
    fused = []
    for mask, view_points in zip(masks, points, strict=True):
        flat = view_points.reshape(-1, 3)
        votes, seen = torch.zeros(len(flat)), torch.zeros(len(flat))
        for j, (other, other_points) in enumerate(zip(masks, points, strict=True)):
            row, column, inside = project_points(flat, cameras[j : j + 1])
            surface = (other_points[row, column] - origins[j]).norm(dim=-1)
            visible = inside & ((flat - origins[j]).norm(dim=-1) <= surface * (1 + SURFACE_TOLERANCE))
            votes += visible * other[row, column]
            seen += visible
        agreed = torch.where(seen > 0, votes >= 0.5 * seen, mask.flatten() > 0.5)  # seen by none: as it was
        fused.append(agreed.float().view(mask.shape))
    return fused


class EditMasks:
    """Each training view's mask, computed once per (view, latent size, prompts) and kept on the CPU: at the view's
    training resolution (the relevance thresholded at the view's pixels, or the given file), and at the latent's
    size as the guidance uses it (``given_mask``: the view mask's area share, rounded, grown and feathered).

    The cache holds at most ``capacity`` views and drops the least recently used first, so a viewer session that
    tries many prompts (each pair is a new key) keeps a bounded memory.
    """

    def __init__(
        self, config: MaskConfig, prior: DiffusionPrior, datamanager: EditViewsMixin, capacity: int,
        view_points: Callable[[Cameras], Tensor] | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.prior = prior
        self.datamanager = datamanager
        self.capacity = capacity
        self.view_points = view_points
        """The representation's ``view_points`` (editing/contract.py), for ``fuse``."""
        self._cache: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()
        self._points: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every cached mask (e.g. after the mask settings changed)."""
        self._cache.clear()
        self._points = None

    def _masks(
        self, index: int, z_src: Float[Tensor, "1 C h w"], prompt_trg: str, prompt_src: str
    ) -> tuple[Float[Tensor, "1 1 H W"], Float[Tensor, "1 1 h w"]]:
        """View ``index``'s (view-resolution, latent) masks, cached."""
        key = (index, *z_src.shape[-2:], prompt_trg, prompt_src)
        if key not in self._cache:
            fusing = self.config.fuse and self.config.automatic and self.view_points is not None
            with torch.no_grad():
                views = self._fused_views(z_src, prompt_trg, prompt_src) if fusing else {index: self.view_mask(
                    self.datamanager.train_dataset, index, z_src, prompt_trg, prompt_src)}  # fmt: skip
                for view_index, view in views.items():
                    self._cache[(view_index, *key[1:])] = (view.cpu(), given_mask(view, z_src, self.config)[0].cpu())
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def _fused_views(
        self, like: Float[Tensor, "1 C h w"], prompt_trg: str, prompt_src: str
    ) -> dict[int, Float[Tensor, "1 1 H W"]]:
        """Every training view's auto mask at the latent size of ``like``, fused across the views
        (``fuse_view_masks``) with the points the representation renders (once per run: the geometry an edit starts
        from)."""
        dataset = self.datamanager.train_dataset
        width, height = (side * self.prior.latent_downsample for side in like.shape[-2:][::-1])
        views = []
        for index in range(len(dataset)):
            z_src = self.datamanager.source_latent(index, width, height, self.prior.encode_images)[None]
            views.append(self.view_mask(dataset, index, z_src.to(like), prompt_trg, prompt_src)[0, 0])
        if self._points is None:
            self._points = [self.view_points(dataset.cameras[i : i + 1]).cpu() for i in range(len(dataset))]
        fused = fuse_view_masks(views, self._points, dataset.cameras)
        return {index: mask[None, None].to(like.device) for index, mask in enumerate(fused)}

    def latent_masks(
        self, indices: list[int], z_src: Float[Tensor, "B C h w"], prompt_trg: str, prompt_src: str
    ) -> Float[Tensor, "B 1 h w"]:
        """The mask of each view ``indices[k]`` at the size of its source latent ``z_src[k]``."""
        masks = [self._masks(index, z_src[k : k + 1], prompt_trg, prompt_src)[1] for k, index in enumerate(indices)]
        return torch.stack(masks).to(z_src.device)

    def training_mask(
        self, index: int, guidance_size: tuple[int, int], prompt_trg: str, prompt_src: str
    ) -> Float[Tensor, "H W"]:
        """A view's mask at the view's training resolution, grown by ``view_dilation`` and feathered by
        ``view_feather`` pixels (what the colour loss that keeps the rest weighs each pixel by one minus);
        ``guidance_size`` is the (width, height) the view is edited at."""
        width, height = guidance_size
        z_src = self.datamanager.source_latent(index, width, height, self.prior.encode_images)
        view = self._masks(index, z_src[None].to(self.prior.device).float(), prompt_trg, prompt_src)[0]
        return paste_weight(view, self.config)[0, 0]

    def view_mask(
        self, dataset: InputDataset, index: int, z_src: Float[Tensor, "1 C h w"], prompt_trg: str, prompt_src: str
    ) -> Float[Tensor, "1 1 H W"]:
        """The mask of view ``index`` of ``dataset`` (training or evaluation) at the view's resolution, not cached:
        its relevance thresholded at the view's pixels (computed at the guidance's size, whose pixels are the
        latent's times the VAE's downsampling), or its given mask."""
        camera = dataset.cameras[index]
        size = (int(camera.height), int(camera.width))
        if not self.config.automatic:
            return load_mask(self.mask_file(dataset, index), size[::-1], "--pipeline.mask.source").to(z_src.device)
        guidance_size = tuple(side * self.prior.latent_downsample for side in z_src.shape[-2:])
        image = resize_images(as_batch(dataset[index]["image"]), *guidance_size).to(z_src.device)
        mask = view_mask(self.prior, z_src, prompt_trg, prompt_src, self.config, guidance_size, image)
        if guidance_size != size:  # a view trained at another size than it is edited at
            mask = (F.interpolate(mask, size=size, mode="bilinear", align_corners=False) >= 0.5).to(mask.dtype)
        return mask

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
