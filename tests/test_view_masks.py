"""Masks sized to the object at the view's pixels (issue 32): the auto mask of the README's demo scene views,
thresholded at the view's pixels, fits the ray-traced ball; the mask as it was (thresholded at latent pixels, grown
by one and feathered, enlarged to the view: what the colour loss kept outside of) covers a band of floor as large as
the ball."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ids_nerfstudio.demo.scene import ring_poses
from ids_nerfstudio.demo.world import render_with_masks
from ids_nerfstudio.guidance.relevance import MaskConfig, binary_mask, relevance, soften
from ids_nerfstudio.prior import StableDiffusionPriorConfig

PROMPT_SRC, PROMPT_TRG = "a photo of a red ball on a grey floor", "a photo of a blue ball on a grey floor"


@pytest.fixture(scope="module")
def scene_views():
    """6 of the 24 views of the README's demo scene (64 px) and their ray-traced ball masks."""
    rendered = [render_with_masks(pose, 64, 64, 1.2 * 64) for pose in ring_poses(24)[::4]]
    images = torch.stack([torch.from_numpy(image).permute(2, 0, 1).float() for image, _ in rendered])
    return images, np.stack([masks[0] for _, masks in rendered])


def view_and_latent_masks(model: str, scene_views) -> tuple[np.ndarray, np.ndarray]:
    """The auto mask at the view's pixels, and the mask as the colour loss used it before: the latent-pixel mask,
    grown and feathered, enlarged to the view (nearest) and taken where it is above one half."""
    prior = StableDiffusionPriorConfig(model=model, device="cpu").setup()
    images, _ = scene_views
    config = MaskConfig(source="auto")
    with torch.no_grad():
        relevant = relevance(prior, prior.encode_images(images), PROMPT_TRG, PROMPT_SRC, config)
    view = binary_mask(relevant, config, images.shape[-2:])[:, 0].numpy() > 0.5
    latent = soften(binary_mask(relevant, config), config)
    return view, F.interpolate(latent, size=images.shape[-2:], mode="nearest")[:, 0].numpy() > 0.5


def fit(found: np.ndarray, ball: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per view: IoU with the ball, and the mask's pixels outside the ball (the floor it lets the edit change)."""
    iou = (found & ball).sum((1, 2)) / np.maximum((found | ball).sum((1, 2)), 1)
    return iou, (found & ~ball).sum((1, 2))


def test_the_auto_mask_at_the_views_pixels_fits_the_ball_where_the_latent_pixel_mask_overreaches(
    scene_views, random_unet_demo
):
    """View-pixel mask: IoU >= 0.7 in every view and at most 60 floor pixels (the ball covers 212-240); the
    latent-pixel mask: IoU < 0.6 on average with more floor than that (measured on the 24 views: 0.79, min 0.73,
    band 3 px at threshold 0.4, vs 0.47 and 260 px); a random UNet's view-pixel mask does not fit (IoU < 0.5)."""
    _, balls = scene_views
    view, latent = view_and_latent_masks("demo", scene_views)
    iou, band = fit(view, balls)
    assert (iou >= 0.7).all() and (band <= 60).all(), (iou.round(2), band)
    iou, band = fit(latent, balls)
    assert iou.mean() < 0.6 and band.mean() > 60, (iou.round(2), band)
    iou, _ = fit(view_and_latent_masks(str(random_unet_demo), scene_views)[0], balls)
    assert iou.mean() < 0.5, iou.round(2)
