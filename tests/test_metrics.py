"""Metric oracles: each metric against an independent computation on small synthetic inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ids_nerfstudio.eval import (
    ClipEmbedder,
    LpipsDistance,
    MetricModelError,
    background_mask,
    background_psnr,
    clip_directional_similarity,
    clip_score,
    consecutive_similarity,
    depth_change,
    psnr,
)
from ids_nerfstudio.eval.metrics import windowed_std


def images(batch=2, height=40, width=56, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_psnr_of_identical_images_is_infinite():
    x = images()
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()


def test_psnr_of_a_known_shift():
    x = images() * 0.5
    assert_close(psnr(x, x + 0.1), torch.full((2,), 20.0))  # mse 0.01 -> 10 log10(1 / 0.01)
    assert_close(psnr(x, x + 0.01), torch.full((2,), 40.0))


def test_psnr_inside_a_mask_only_counts_masked_pixels():
    x = images(1)
    y = x.clone()
    y[..., :10, :] += 0.5  # changed rows outside the mask
    mask = torch.zeros(1, 40, 56, dtype=torch.bool)
    mask[:, 20:, :] = True
    assert torch.isinf(psnr(x, y, mask)).all()


def test_windowed_std_matches_a_direct_computation():
    x = torch.rand(1, 1, 12, 15, generator=torch.Generator().manual_seed(1))
    window = 4
    result = windowed_std(x, window)
    for i, j in [(0, 0), (5, 7), (11, 14), (6, 0)]:
        patch = x[0, 0, max(i - 2, 0) : i + 2, max(j - 2, 0) : j + 2]  # window 4 centred like the pooling
        assert_close(result[0, 0, i, j], patch.std(unbiased=False), rtol=1e-4, atol=1e-5)


def test_background_psnr_ignores_a_changed_square():
    source = images(1, 96, 96)
    noise = 0.01 * torch.randn(source.shape, generator=torch.Generator().manual_seed(2))
    edited = source + noise
    edited[..., 30:60, 30:60] = images(1, 30, 30, seed=3)  # the edit: a replaced square
    outside = torch.ones(1, 96, 96, dtype=torch.bool)
    outside[:, 15:75, 15:75] = False  # the square and a half-window border around it
    mask = background_mask(source, edited, window=30)
    assert not mask[:, 35:55, 35:55].any(), "the edited square is not background"
    assert mask[outside].float().mean() > 0.9, "the untouched area is background"
    whole, background = psnr(source, edited), background_psnr(source, edited, window=30)
    assert background > whole + 10
    assert_close(background, psnr(source, edited, outside), atol=0.5, rtol=0)


def test_directional_similarity_of_known_embeddings():
    img_src, img_trg = torch.tensor([[1.0, 0, 0], [1, 0, 0]]), torch.tensor([[1.0, 1, 0], [1, 0, 1]])
    txt_src, txt_trg = torch.tensor([[0.0, 0, 1], [0, 0, 1]]), torch.tensor([[0.0, 2, 1], [0, 2, 1]])
    # first: image change (0,1,0) along text change (0,2,0) -> 1; second: (0,0,1) vs (0,2,0) -> 0
    assert_close(clip_directional_similarity(img_src, img_trg, txt_src, txt_trg), torch.tensor([1.0, 0.0]))


def test_clip_score_and_consecutive_similarity_are_cosines():
    a, b = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[4.0, 3.0], [-1.0, 0.0]])
    assert_close(clip_score(a, b), torch.tensor([24 / 25, -1.0]))
    frames = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert_close(consecutive_similarity(frames), torch.full((2,), 1 / math.sqrt(2)))


def test_depth_change_inside_and_outside_the_edit():
    source = torch.zeros(1, 4, 4)
    edited = source.clone()
    edited[:, :2] = 1.0  # the edited region moved by 1, the rest by 0.1
    edited[:, 2:] = 0.1
    region = torch.zeros(1, 4, 4, dtype=torch.bool)
    region[:, :2] = True
    inside, outside = depth_change(source, edited, region)
    assert_close(inside, torch.tensor([1.0]))
    assert_close(outside, torch.tensor([0.1]))
    inside, _ = depth_change(source, edited, torch.zeros_like(region))
    assert torch.isnan(inside).all()


@pytest.fixture(scope="module")
def tiny_clip():
    return ClipEmbedder("tiny")


def test_clip_embedder_matches_the_model_by_hand(tiny_clip):
    x = images(2, 48, 64)
    embeddings = tiny_clip.images(x)
    model = tiny_clip._model
    size = model.config.vision_config.image_size
    resized = F.interpolate(x, size=(size, round(64 * size / 48)), mode="bicubic", antialias=True).clamp(0, 1)
    left = (resized.shape[-1] - size) // 2
    cropped = resized[..., :, left : left + size]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    expected = model.visual_projection(model.vision_model(pixel_values=(cropped - mean) / std).pooler_output)
    assert_close(embeddings, expected / expected.norm(dim=-1, keepdim=True), rtol=1e-4, atol=1e-5)
    texts = tiny_clip.texts(["a dog", "a photo of a cat"])
    assert texts.shape == (2, embeddings.shape[1])
    assert_close(texts.norm(dim=-1), torch.ones(2))


def test_lpips_is_zero_for_identical_images_and_positive_otherwise():
    lpips = LpipsDistance("tiny")
    x = images(2, 64, 64)
    assert_close(lpips(x, x), torch.zeros(2))
    assert (lpips(x, images(2, 64, 64, seed=9)) > 0).all()


def test_missing_metric_models_give_clear_errors(tmp_path):
    with pytest.raises(MetricModelError, match="does not exist"):
        ClipEmbedder(str(tmp_path / "no-clip")).texts(["x"])
    with pytest.raises(MetricModelError, match="could not load CLIP model"):
        ClipEmbedder(str(tmp_path)).texts(["x"])
    with pytest.raises(MetricModelError, match="choose alex"):
        LpipsDistance("resnet")(images(1), images(1))
