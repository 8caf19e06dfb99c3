"""Contrastive Denoising Score (Nam et al.): DDS plus a PatchNCE loss on UNet self-attention features.

As in the official code (HyelinNAM/ContrastiveDenoisingScore), the features are the TEXT-CONDITIONED ones: the
reference is the up-block ``attn1`` output of the source latent with the source prompt (the ``cond src`` rows of
the DDS UNet call, captured by forward hooks while that call runs, so it costs no extra UNet work); the target
is a second pass of the noisy target latent with the target prompt, with gradient through the UNet to the target
latent.

Differences from the official code: each layer is reshaped with its real (h, w) (the official code assumes
square latents), the loss is per sample (the official code uses the first sample only), only the current
step's reference features are kept, and the target pass runs only the conditional row whose features are used
(the official code also runs the unconditional row, whose output it discards; UNet rows are independent, so
the features are the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tyro.conf import Suppress

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance.base import REGULARIZER_GRAD, GuidanceInputs, flag
from ids_nerfstudio.guidance.dds import DDS, DDSConfig, delta_denoising_score
from ids_nerfstudio.guidance.formulas import Latents, add_noise, rng_device


def patch_nce_loss(
    reference: Float[Tensor, "B P C"], target: Float[Tensor, "B P C"], temperature: float
) -> Float[Tensor, " B"]:
    """PatchNCE (Park et al.): each target patch must match its own reference patch among the sample's patches.

    Features are expected L2-normalised. The diagonal of the negatives is masked (set to -10, as in CUT) since
    it is the positive pair again. Returns the mean over patches, per sample.
    """
    reference = reference.detach()
    positives = (reference * target).sum(-1, keepdim=True)  # (B, P, 1)
    negatives = reference @ target.transpose(1, 2)  # (B, P, P)
    eye = torch.eye(negatives.shape[-1], dtype=torch.bool, device=negatives.device)
    negatives = negatives.masked_fill(eye, -10.0)
    logits = torch.cat([positives, negatives], dim=-1) / temperature
    labels = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape).mean(1)


def contrastive_attention_loss(
    reference: dict[str, Tensor],
    target: dict[str, Tensor],
    sizes: dict[str, tuple[int, int]],
    *,
    n_patches: int,
    patch_sizes: tuple[int, ...],
    temperature: float,
    generator: torch.Generator | None = None,
) -> Float[Tensor, " B"]:
    """Sum over layers and patch sizes of the per-sample PatchNCE loss between (B, h*w, C) feature maps."""
    total = 0.0
    for name, ref in reference.items():
        h, w = sizes[name]
        maps = [f.transpose(1, 2).reshape(f.shape[0], f.shape[2], h, w).float() for f in (ref, target[name])]
        for patch_size in patch_sizes:
            pooled = [F.avg_pool2d(m, patch_size) if patch_size > 1 else m for m in maps]
            ref_patches, trg_patches = (F.normalize(m, dim=1).flatten(2).transpose(1, 2) for m in pooled)
            count = ref_patches.shape[1]
            ids = torch.randperm(count, generator=generator, device=rng_device(generator))[:n_patches]
            ids = ids.to(ref.device)
            total = total + patch_nce_loss(ref_patches[:, ids], trg_patches[:, ids], temperature)
    return total


class CDS(DDS):
    """DDS plus ``cut_weight`` x PatchNCE between source and target self-attention features."""

    config: CDSConfig

    def compute_grad(self, inputs: GuidanceInputs) -> tuple[Latents, dict[str, Tensor]]:
        batch_size = inputs.z_trg.shape[0]
        # rows of the DDS call: [uncond src, uncond trg, cond src, cond trg]; the reference is cond src
        with self.prior.capture_self_attention(rows=slice(2 * batch_size, 3 * batch_size)) as reference:
            delta = delta_denoising_score(self.prior, inputs, self.config.guidance_scale)
        reference_features = {name: f.detach() for name, f in reference.features.items()}

        with torch.enable_grad():
            z = inputs.z_trg.detach().requires_grad_(True)
            z_t = add_noise(z, inputs.noise, inputs.t, self.prior.alphas_cumprod)
            with self.prior.capture_self_attention() as current:  # one conditional pass: the target prompt's row
                self.prior.predict_noise(z_t, inputs.t, inputs.text.trg, None)
            cut_loss = contrastive_attention_loss(
                reference_features,
                current.features,
                reference.sizes,
                n_patches=self.config.n_patches,
                patch_sizes=self.config.patch_sizes,
                temperature=self.config.temperature,
                generator=inputs.generator,
            )
            (cut_grad,) = torch.autograd.grad(cut_loss.sum(), z)  # the sum keeps samples independent
        regularizer = self.config.cut_weight * cut_grad
        return self.config.dds_weight * delta + regularizer, {
            "cut_loss": cut_loss.detach(),
            REGULARIZER_GRAD: regularizer,
        }


@dataclass
class CDSConfig(DDSConfig):
    """Contrastive Denoising Score: DDS + PatchNCE on up-block self-attention features."""

    _target: Suppress[type] = field(default_factory=lambda: CDS)
    dds_weight: float = 1.0
    """Weight of the DDS term."""
    cut_weight: float = 3.0
    """Weight of the contrastive (PatchNCE) term (official w_cut); the 2D editor's 2000/(h w) does not scale it."""
    n_patches: int = 256
    """Patches sampled per layer and patch size."""
    patch_sizes: tuple[int, ...] = (1, 2)
    """Average-pooling sizes at which patches are compared."""
    temperature: float = 0.07
    """PatchNCE softmax temperature."""
    scales: ClassVar[tuple[str, ...]] = (*DDSConfig.scales, "dds_weight", "cut_weight")
    """The fields that must be finite numbers >= 0."""

    def validate(self, flag_prefix: str = "") -> None:
        super().validate(flag_prefix)
        if self.n_patches < 1 or not self.patch_sizes or min(self.patch_sizes) < 1 or not self.temperature > 0:
            raise UserError(
                f"{flag(flag_prefix, 'n_patches')}, {flag(flag_prefix, 'patch_sizes')}, "
                f"{flag(flag_prefix, 'temperature')}: need >= 1 patch, sizes >= 1 and a temperature > 0"
            )
