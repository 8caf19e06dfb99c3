"""Editing metrics of the papers as pure tensor functions: PSNR, background PSNR, CLIP scores, consistency, depth.

Images are (B, 3, H, W) in [0, 1]; every metric is returned per sample, shape (B,).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

Images = Float[Tensor, "B 3 H W"]
PerSample = Float[Tensor, " B"]


def psnr(a: Images, b: Images, mask: Bool[Tensor, "B H W"] | None = None, data_range: float = 1.0) -> PerSample:
    """Peak signal-to-noise ratio in dB, over the pixels of ``mask`` when given; identical inputs give +inf."""
    squared = (a - b).pow(2).mean(1)  # (B, H, W): mean over channels
    if mask is None:
        mse = squared.flatten(1).mean(1)
    else:
        weights = mask.to(squared.dtype)
        mse = (squared * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp(min=1)
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 gives +inf, as it should


def windowed_std(x: Float[Tensor, "B 1 H W"], window: int) -> Float[Tensor, "B 1 H W"]:
    """Standard deviation over a ``window`` x ``window`` neighbourhood of every pixel (borders: the part inside)."""
    pad = window // 2

    def local_mean(values: Tensor) -> Tensor:
        mean = F.avg_pool2d(values, window, stride=1, padding=pad, count_include_pad=False)
        return mean[..., : x.shape[-2], : x.shape[-1]]  # an even window gives one extra row and column

    return (local_mean(x * x) - local_mean(x).pow(2)).clamp(min=0).sqrt()


def background_mask(
    source: Images, edited: Images, window: int = 30, threshold: Literal["mean", "median"] = "mean"
) -> Bool[Tensor, "B H W"]:
    """IDS supplementary D: pixels whose residual varies little around them (windowed std below its mean)."""
    residual = (source - edited).abs().mean(1, keepdim=True)
    sigma = windowed_std(residual, window).flatten(1)
    level = sigma.mean(1, keepdim=True) if threshold == "mean" else sigma.median(1, keepdim=True).values
    return (sigma <= level).view(source.shape[0], *source.shape[-2:])


def background_psnr(
    source: Images, edited: Images, window: int = 30, threshold: Literal["mean", "median"] = "mean"
) -> PerSample:
    """PSNR inside the background mask of ``background_mask`` (how well the unedited part is preserved)."""
    return psnr(source, edited, background_mask(source, edited, window, threshold))


def cosine(a: Float[Tensor, "B D"], b: Float[Tensor, "B D"]) -> PerSample:
    """Cosine similarity per row."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def clip_score(image_embeddings: Float[Tensor, "B D"], text_embeddings: Float[Tensor, "B D"]) -> PerSample:
    """CLIP score: cosine between an image and its prompt (the papers report it unscaled)."""
    return cosine(image_embeddings, text_embeddings)


def clip_directional_similarity(
    source_images: Float[Tensor, "B D"],
    edited_images: Float[Tensor, "B D"],
    source_texts: Float[Tensor, "B D"],
    target_texts: Float[Tensor, "B D"],
) -> PerSample:
    """Cosine between the image change and the text change in CLIP space (Gal et al., StyleGAN-NADA)."""
    return cosine(edited_images - source_images, target_texts - source_texts)


def consecutive_similarity(embeddings: Float[Tensor, "N D"]) -> Float[Tensor, " N-1"]:
    """Cosine between consecutive frames' CLIP image embeddings (multi-view consistency along a camera path)."""
    return cosine(embeddings[:-1], embeddings[1:])


def depth_change(
    source_depth: Float[Tensor, "B H W"], edited_depth: Float[Tensor, "B H W"], edited_region: Bool[Tensor, "B H W"]
) -> tuple[PerSample, PerSample]:
    """Mean absolute change of expected depth inside and outside the edited region (NaN where a region is empty)."""
    change = (edited_depth - source_depth).abs()

    def region_mean(region: Tensor) -> Tensor:
        weights = region.to(change.dtype)
        count = weights.flatten(1).sum(1)
        return torch.where(count > 0, (change * weights).flatten(1).sum(1) / count.clamp(min=1), torch.nan)

    return region_mean(edited_region), region_mean(~edited_region)
