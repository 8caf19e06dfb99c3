"""The metrics of one edit (source image -> edited image), shared by ``ids-edit-image --eval`` and ``ids-eval``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ids_nerfstudio.eval.metrics import background_psnr, clip_directional_similarity, clip_score, psnr
from ids_nerfstudio.eval.models import ClipEmbedder, LpipsDistance
from ids_nerfstudio.model_names import metric_models


@dataclass
class EditMetrics:
    """CLIP score and direction, LPIPS, PSNR and background PSNR of edits (the IDS paper's Table 1 and more)."""

    clip: ClipEmbedder
    lpips: LpipsDistance

    @classmethod
    def for_prior(cls, prior_model: str | None, clip_model: str | None, lpips_net: str | None) -> EditMetrics:
        """The metric networks for edits made with ``prior_model``, loaded now (a missing one fails early).

        Defaults: CLIP ViT-L/14 and LPIPS alex; with an offline prior its CLIP (``demo``, ``tiny``) and, with
        ``tiny``, the random LPIPS (all offline).
        """
        clip_name, lpips_name = metric_models(prior_model, clip_model, lpips_net)
        metrics = cls(ClipEmbedder(clip_name), LpipsDistance(lpips_name))
        metrics.clip.texts([""])  # raises MetricModelError with a one-line message
        metrics.lpips(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
        return metrics

    def __call__(
        self, source: Float[Tensor, "B 3 H W"], edited: Float[Tensor, "B 3 H W"], prompt_src: str, prompt_trg: str
    ) -> list[dict[str, float]]:
        """One row of metrics per image pair; images in [0, 1]."""
        batch = source.shape[0]
        images = self.clip.images(torch.cat([source, edited]))
        image_src, image_trg = images[:batch], images[batch:]
        texts = self.clip.texts([prompt_src, prompt_trg])
        text_src, text_trg = texts[:1].expand(batch, -1), texts[1:].expand(batch, -1)
        columns = {
            "clip_score": clip_score(image_trg, text_trg),
            "clip_directional_similarity": clip_directional_similarity(image_src, image_trg, text_src, text_trg),
            "lpips_to_source": self.lpips(source, edited),
            "psnr_to_source": psnr(source, edited),
            "background_psnr": background_psnr(source, edited),
        }
        return [{name: float(values[i]) for name, values in columns.items()} for i in range(batch)]
