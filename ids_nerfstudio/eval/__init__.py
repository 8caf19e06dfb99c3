"""Evaluation of edits: the metrics of the IDS, PDS and CSD papers, and the networks they use."""

from ids_nerfstudio.eval.metrics import (
    background_mask,
    background_psnr,
    clip_directional_similarity,
    clip_score,
    consecutive_similarity,
    depth_change,
    psnr,
)
from ids_nerfstudio.eval.models import ClipEmbedder, LpipsDistance, MetricModelError

__all__ = [
    "ClipEmbedder",
    "LpipsDistance",
    "MetricModelError",
    "background_mask",
    "background_psnr",
    "clip_directional_similarity",
    "clip_score",
    "consecutive_similarity",
    "depth_change",
    "psnr",
]
