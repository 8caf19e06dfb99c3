"""Measuring the demo prior on its own world: which named colour an object has, sampling, masked edit metrics.

Colours are told apart by chromaticity (rgb / (r + g + b)): Lambertian shading scales a colour but keeps its
chromaticity, so the mean colour inside an object's mask names the object's colour whatever its lighting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ids_nerfstudio.demo import DemoSample, caption, render_sample, sample_scene
from ids_nerfstudio.demo.world import COLOURS, SceneObject
from ids_nerfstudio.guidance import Guidance
from ids_nerfstudio.guidance.formulas import add_noise, predict_x0
from ids_nerfstudio.guidance.relevance import (
    MaskConfig,
    binary_mask,
    given_mask,
    paste_into_source,
    paste_weight,
    relevance,
    view_mask,
)
from ids_nerfstudio.image_editor import optimise_latent
from ids_nerfstudio.prior.stable_diffusion import StableDiffusionPrior

GREY = "grey"
"""What a colour close to neutral is called (the floor, or an object that lost its colour)."""


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
    return rgb / np.clip(rgb.sum(-1, keepdims=True), 1e-6, None)


REFERENCE = {name: _chromaticity(np.array(rgb)) for name, rgb in {**COLOURS, GREY: (1.0, 1.0, 1.0)}.items()}


def colour_name(rgb: Sequence[float] | np.ndarray) -> str:
    """The named colour (or ``grey``) nearest to an RGB value in chromaticity."""
    c = _chromaticity(np.asarray(rgb, dtype=np.float64))
    return min(REFERENCE, key=lambda name: float(np.linalg.norm(c - REFERENCE[name])))


def mean_colour(image: Float[np.ndarray, "H W 3"], mask: np.ndarray) -> np.ndarray:
    """Mean RGB of the image inside a boolean mask (H, W)."""
    return image[mask].mean(0) if mask.any() else np.full(3, np.nan)


def saturated(image: Float[np.ndarray, "H W 3"], mask: np.ndarray | None = None, min_saturation: float = 0.15):
    """The coloured pixels (max - min channel above ``min_saturation``), within ``mask`` if given."""
    coloured = image.max(-1) - image.min(-1) > min_saturation
    return coloured if mask is None else coloured & mask


def object_colour(image: Float[np.ndarray, "H W 3"], mask: np.ndarray | None = None) -> str:
    """The colour of the saturated pixels of an image, or of its ``mask`` (the floor and sky are grey), or grey
    when fewer than 4 pixels are coloured."""
    coloured = saturated(image, mask)
    return colour_name(mean_colour(image, coloured)) if coloured.sum() >= 4 else GREY


def masked_psnr(a: Float[np.ndarray, "H W 3"], b: Float[np.ndarray, "H W 3"], mask: np.ndarray) -> float:
    """PSNR (dB, images in [0, 1]) over the pixels where ``mask`` is true."""
    mse = float(((a - b) ** 2)[mask].mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


@dataclass
class ColourEdit:
    """How an edit changed one object's colour and kept the rest."""

    before: str
    """Colour of the coloured pixels inside the object's mask in the source."""
    after: str
    """The same in the edit."""
    background_psnr: float
    """PSNR between source and edit outside the (dilated) object mask."""
    mean_before: np.ndarray
    """Mean RGB of the coloured pixels inside the mask, source."""
    mean_after: np.ndarray
    """The same in the edit."""
    coloured_fraction: float
    """Fraction of the mask's pixels still coloured in the edit (an object that shrank or faded has less)."""


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean mask by ``pixels`` in every direction (a square structuring element)."""
    grown = mask.copy()
    for _ in range(pixels):
        padded = np.pad(grown, 1)
        grown = grown | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return grown


def measure_colour_edit(
    source: Float[np.ndarray, "H W 3"], edit: Float[np.ndarray, "H W 3"], mask: np.ndarray, margin: int = 2
) -> ColourEdit:
    """Colour of the object inside ``mask`` before and after, and the background PSNR outside the mask grown by
    ``margin`` pixels (a recoloured object's edge blends into its neighbours over a pixel or two)."""
    return ColourEdit(
        before=object_colour(source, mask),
        after=object_colour(edit, mask),
        background_psnr=masked_psnr(source, edit, ~dilate(mask, margin)),
        mean_before=mean_colour(source, saturated(source, mask)),
        mean_after=mean_colour(edit, saturated(edit, mask)),
        coloured_fraction=float(saturated(edit, mask).sum() / max(mask.sum(), 1)),
    )


def centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) of a boolean mask's pixels (NaN when empty)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.full(2, np.nan)


@dataclass
class StructureEdit:
    """How a shape edit (ball <-> cube) moved, resized and reshaped an object, and what it kept of the rest; the
    object in the edit is its coloured pixels (the demo world's floor and sky are grey)."""

    centroid_shift: float
    """Distance (px) between the centroids of the edit's coloured pixels and the source object's mask."""
    area_ratio: float
    """The coloured pixels' count over the ideal edit's (the same object with the other shape) mask's."""
    iou_ideal: float
    """IoU of the coloured pixels with the ideal edit's mask."""
    iou_source: float
    """IoU of the coloured pixels with the source object's mask."""
    floor_psnr: float
    """PSNR between the reference and the edit outside the union of both masks grown by ``margin``."""


def measure_structure_edit(
    reference: Float[np.ndarray, "H W 3"],
    edit: Float[np.ndarray, "H W 3"],
    source_mask: np.ndarray,
    ideal_mask: np.ndarray,
    margin: int = 2,
) -> StructureEdit:
    """Measure one view of a shape edit against the source object's and the ideal edit's masks; ``reference`` is
    what the floor should stay (the source image in 2D, the reconstruction's render of the view in a scene)."""
    found = saturated(edit)
    union = source_mask | ideal_mask
    return StructureEdit(
        centroid_shift=float(np.linalg.norm(centroid(found) - centroid(source_mask))),
        area_ratio=float(found.sum() / max(ideal_mask.sum(), 1)),
        iou_ideal=float((found & ideal_mask).sum() / max((found | ideal_mask).sum(), 1)),
        iou_source=float((found & source_mask).sum() / max((found | source_mask).sum(), 1)),
        floor_psnr=masked_psnr(reference, edit, ~dilate(union, margin)),
    )


@dataclass(frozen=True)
class RecolourCase:
    """A 2D edit of the demo world: one object of a rendered view takes another colour."""

    sample: DemoSample
    """The view."""
    index: int
    """Which of its objects is recoloured."""
    colour: str
    """Its new colour."""

    @property
    def target_caption(self) -> str:
        """The view's caption with the object's new colour."""
        objects = list(self.sample.objects)
        objects[self.index] = SceneObject(**{**objects[self.index].__dict__, "colour": self.colour})
        return caption(objects)


def recolour_cases(count: int, seed: int) -> list[RecolourCase]:
    """Random views of one or two objects, each with the object to recolour and a new colour (seeded)."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        sample = sample_scene(rng)
        index = int(rng.integers(len(sample.objects)))
        others = [c for c in COLOURS if c != sample.objects[index].colour]
        cases.append(RecolourCase(sample, index, others[int(rng.integers(len(others)))]))
    return cases


TRUE_MASK = "true"
"""``MaskConfig.source`` of the demo world's ray-traced object masks (benchmarks only: a mask no user has)."""


def object_masks(cases: Sequence[RecolourCase]) -> Float[Tensor, "B 1 H W"]:
    """The ray-traced mask of each case's recoloured object, at image resolution."""
    masks = [torch.from_numpy(render_sample(case.sample)[1][case.index]).float() for case in cases]
    return torch.stack(masks)[:, None]


def case_masks(
    prior: StableDiffusionPrior, cases: Sequence[RecolourCase], z_src: Float[Tensor, "B C h w"], config: MaskConfig
) -> Float[Tensor, "B 1 H W"]:
    """The view-pixel masks of ``cases``: the auto mask thresholded at the images' pixels, or with ``source="true"``
    the true object masks."""
    if config.source == TRUE_MASK:
        return object_masks(cases).to(z_src.device)
    targets, sources = [case.target_caption for case in cases], [case.sample.caption for case in cases]
    size = tuple(side * prior.latent_downsample for side in z_src.shape[-2:])  # the images' pixels
    return view_mask(prior, z_src, targets, sources, config, size)


def relevance_overlaps(
    prior: StableDiffusionPrior,
    images: Float[Tensor, "B 3 H W"],
    named: Float[Tensor, "B 1 H W"],
    other: Float[Tensor, "B 1 H W"],
    prompts_trg: Sequence[str],
    prompts_src: Sequence[str],
    config: MaskConfig,
) -> tuple[Float[np.ndarray, " B"], Float[np.ndarray, " B"]]:
    """How each image's thresholded relevance (``config.source``: auto, noise, words or combined; thresholded at the
    image's pixels, before dilation and feather) covers its objects at the image's pixels: the IoU with the
    ``named`` object's mask, and the share of the ``other`` object's pixels in the mask (nan for an all-zero
    ``other``: no other object)."""
    device = prior.alphas_cumprod.device
    with torch.no_grad():
        z_src = prior.encode_images(images.to(device))
    maps = relevance(prior, z_src, prompts_trg, prompts_src, config)
    found = binary_mask(maps, config, images.shape[-2:], images.to(device)).cpu()
    found, named, other = found > 0.5, named > 0.5, other > 0.5
    iou = (found & named).flatten(1).sum(1) / (found | named).flatten(1).sum(1).clamp(min=1)
    return iou.numpy(), ((found & other).flatten(1).sum(1) / other.flatten(1).sum(1)).numpy()


def auto_mask_iou(
    prior: StableDiffusionPrior, cases: Sequence[RecolourCase], config: MaskConfig
) -> Float[np.ndarray, " B"]:
    """IoU, at the image's pixels, of each case's thresholded relevance with the true mask of its recoloured object
    (``relevance_overlaps``)."""
    rendered = [torch.from_numpy(render_sample(case.sample)[0]).permute(2, 0, 1).float() for case in cases]
    targets, sources = [case.target_caption for case in cases], [case.sample.caption for case in cases]
    named = object_masks(cases)
    return relevance_overlaps(prior, torch.stack(rendered), named, torch.zeros_like(named), targets, sources, config)[0]


def recolour(
    prior: StableDiffusionPrior, guidance: Guidance, cases: Sequence[RecolourCase], *, steps: int,
    grad_scale: float, seed: int, mask: MaskConfig | None = None, paste_outside_mask: bool = True,
) -> tuple[list[ColourEdit], Float[Tensor, "B 3 H W"], Float[Tensor, "B 3 H W"]]:  # fmt: skip
    """The 2D edits of ``cases`` in one batch (independent samples, each with its own prompts, t and noise), as
    ``ids-edit-image`` runs them: their measurements (in the recoloured object's mask), the sources and the edits.
    With ``mask`` (auto, or ``TRUE_MASK``) the guidance gradient is masked and, unless ``paste_outside_mask`` is
    False, the decoded edit is pasted into the source through the view-pixel mask, grown and feathered."""
    rendered = [render_sample(case.sample) for case in cases]
    pixels = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image, _ in rendered])
    device = prior.alphas_cumprod.device
    with torch.no_grad():
        z_src = prior.encode_images(pixels.to(device))
    targets, sources = [case.target_caption for case in cases], [case.sample.caption for case in cases]
    view = None if mask is None or not mask.enabled else case_masks(prior, cases, z_src, mask)
    latent = None if view is None else given_mask(view, z_src, mask)
    z = optimise_latent(guidance, z_src, targets, sources, steps=steps, lr=0.1, grad_scale=grad_scale,
                        generator=torch.Generator().manual_seed(seed), mask=latent)  # fmt: skip
    with torch.no_grad():
        edited = prior.decode_latents(z).float().cpu()
    if view is not None and paste_outside_mask:
        edited = paste_into_source(edited, pixels, paste_weight(view, mask).cpu())
    results = [
        measure_colour_edit(image, edit.permute(1, 2, 0).numpy(), masks[case.index])
        for (image, masks), case, edit in zip(rendered, cases, edited, strict=True)
    ]
    return results, pixels, edited


@torch.no_grad()
def sample_images(
    prior: StableDiffusionPrior,
    prompts: Sequence[str],
    latent_size: tuple[int, int],
    *,
    steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "B 3 H W"]:
    """Text-to-image samples by deterministic DDIM (eta 0) on evenly spaced timesteps, with CFG."""
    alphas_cumprod = prior.alphas_cumprod
    device = alphas_cumprod.device
    text = prior.encode_text(list(prompts))
    channels = prior.unet.config.out_channels  # the latent channels the UNet denoises
    z = torch.randn(len(prompts), channels, *latent_size, generator=generator).to(device)
    timesteps = torch.linspace(len(alphas_cumprod) - 1, 0, steps).round().long().to(device)
    for k, t in enumerate(timesteps):
        t_batch = t.expand(len(prompts))
        eps = prior.predict_noise(z, t_batch, text, guidance_scale)
        x0 = predict_x0(z, eps, t_batch, alphas_cumprod)
        if k + 1 < len(timesteps):  # DDIM: re-noise the estimate to the next timestep with the predicted noise
            z = add_noise(x0, eps, timesteps[k + 1].expand(len(prompts)), alphas_cumprod)
        else:
            z = x0
    return prior.decode_latents(z)
