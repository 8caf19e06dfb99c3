"""Multi-step 2D edits by deterministic DDIM sampling from a noised latent: the dataset-update editors of PDS's
refinement stage (SDEdit) and of Instruct-NeRF2NeRF (an InstructPix2Pix edit of a noised render).

Both run DDIM (eta 0) down a grid of timesteps from its first point, after noising the start latent to it:

- SDEdit (PDS ``run_sdedit``): the model's own 20-step grid (leading spacing with its scheduler's steps_offset),
  entered ``skip`` steps before its end: t in {151, 101, 51} for skip 16..18 with Stable Diffusion; text CFG 15,
  target prompt against "";
- IN2N (``ip2p.edit_image``): a 20-step grid over [0, T] for a T drawn in [0.02, 0.98] of the schedule, i.e.
  stride T // 20, conditioned on the source image by InstructPix2Pix's three-way CFG (text 7.5, image 1.5).

Either may correct its noised start with FPR (IDS's fixed-point regularization), an addition of this plugin.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ids_nerfstudio.guidance.formulas import add_noise, ddim_grid, ddim_step, random_normal_like
from ids_nerfstudio.guidance.fpr import fixed_point_regularization
from ids_nerfstudio.prior.base import DiffusionPrior


def sdedit_grid(prior: DiffusionPrior, num_steps: int, skip: int) -> Int[Tensor, " S"]:
    """The timesteps an SDEdit visits: the last ``num_steps - skip`` points of the prior's ``num_steps`` grid."""
    if not 0 <= skip < num_steps:
        raise ValueError(f"skip must be in [0, {num_steps}), got {skip}")
    grid = ddim_grid(num_steps, len(prior.alphas_cumprod), getattr(prior, "steps_offset", 0))
    return grid[skip:]


def in2n_grid(prior: DiffusionPrior, num_steps: int, t_start: int) -> Int[Tensor, " S"]:
    """IN2N's grid: ``num_steps`` points of stride ``t_start // num_steps`` (its scheduler's training length set to
    the drawn T), with the prior's steps_offset."""
    return ddim_grid(num_steps, t_start, getattr(prior, "steps_offset", 0))


@torch.no_grad()
def ddim_edit(
    prior: DiffusionPrior,
    z_0: Float[Tensor, "B C h w"],
    grid: Int[Tensor, " S"],
    text_emb: Float[Tensor, "B L D"],
    guidance_scale: float,
    *,
    noise: Float[Tensor, "B C h w"] | None = None,
    generator: torch.Generator | None = None,
    image_cond: Float[Tensor, "B C h w"] | None = None,
    final_alpha_cumprod: float | None = None,
    fpr_iters: int = 0,
    fpr_scale: float = 1.0,
) -> Float[Tensor, "B C h w"]:
    """Noise ``z_0`` to ``grid[0]`` and run DDIM (eta 0) down ``grid`` with the prior's CFG; each step goes to the
    grid's next point, the last one by the grid's stride (below 0: ``final_alpha_cumprod``, see ``ddim_step``).

    With ``fpr_iters`` the noised latent is first corrected by IDS's fixed-point regularization with the edit's own
    score (same text and CFG), so that its Tweedie estimate moves toward ``z_0``: the SDEdit then keeps more of its
    start image."""
    alphas_cumprod = prior.alphas_cumprod
    noise = random_normal_like(z_0, generator) if noise is None else noise
    batch = z_0.shape[0]
    stride = int(grid[-2] - grid[-1]) if len(grid) > 1 else len(alphas_cumprod) // 20
    t_start = grid[:1].to(z_0.device).expand(batch)
    z = add_noise(z_0, noise, t_start, alphas_cumprod)
    if fpr_iters > 0:
        z, _ = fixed_point_regularization(
            lambda z_t: prior.predict_noise(z_t, t_start, text_emb, guidance_scale, image_cond=image_cond),
            z, z_0, t_start, alphas_cumprod, iters=fpr_iters, scale=fpr_scale,
        )  # fmt: skip
    for k, t in enumerate(grid.tolist()):
        t_prev = grid[k + 1].item() if k + 1 < len(grid) else t - stride
        tt = torch.full((batch,), t, device=z.device, dtype=torch.long)
        eps = prior.predict_noise(z, tt, text_emb, guidance_scale, image_cond=image_cond)
        z = ddim_step(z, eps, tt, torch.full_like(tt, t_prev), alphas_cumprod, final_alpha_cumprod)
    return z
