"""Relevance masks (a local edit): the map against its formula written out, the threshold / dilation / feather
rules by hand, the mask's effect on every guidance, and the 2D editor's given and automatic masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import cfg_eps, make_latents
from PIL import Image

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance import GUIDANCE_METHODS
from ids_nerfstudio.guidance.formulas import add_noise
from ids_nerfstudio.guidance.relevance import (
    EDGE_PASSES,
    EDGE_RADIUS,
    EDGE_SPATIAL_SIGMA,
    MaskConfig,
    binary_mask,
    edge_aware_smooth,
    paste_into_source,
    relevance_map,
    soften,
)
from ids_nerfstudio.image_editor import optimise_latent
from ids_nerfstudio.scripts.edit_image import main


def test_the_relevance_map_is_the_mean_prediction_difference_of_the_two_prompts(sd_prior):
    """Written out: for each (timestep, draw), noise the source with the draw, run the UNet with each prompt
    separately, and average the channel mean of |eps_trg - eps_src| (the generator's draws in the same order)."""
    z_src, _, _ = make_latents(2, seed=3)
    config = MaskConfig(source="auto", timesteps=(0.2, 0.6), samples=2)
    prompts_trg, prompts_src = ["a photo of a blue ball", "a green cube"], ["a photo of a red ball", "a red cube"]
    got = relevance_map(sd_prior, z_src, prompts_trg, prompts_src, config, torch.Generator().manual_seed(5))

    generator, total = torch.Generator().manual_seed(5), torch.zeros(2, 1, *z_src.shape[-2:])
    text_trg, text_src = sd_prior.encode_text(prompts_trg), sd_prior.encode_text(prompts_src)
    for fraction in config.timesteps:
        t = torch.full((2,), round(fraction * 1000))
        for _ in range(config.samples):
            z_t = add_noise(z_src, torch.randn(z_src.shape, generator=generator), t, sd_prior.alphas_cumprod)
            with torch.no_grad():
                diff = cfg_eps(sd_prior, z_t, t, text_trg, 1.0) - cfg_eps(sd_prior, z_t, t, text_src, 1.0)
            total += diff.abs().mean(1, keepdim=True)
    expected = total / 4
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert expected.std() > 0  # the two prompts disagree somewhere more than elsewhere


def test_identical_prompts_give_a_zero_map(sd_prior):
    z_src, _, _ = make_latents(1)
    config = MaskConfig(source="auto")
    relevance = relevance_map(sd_prior, z_src, "a red ball", "a red ball", config, torch.Generator().manual_seed(0))
    assert relevance.abs().max() < 1e-5


def test_threshold_dilation_and_feather_follow_their_rules():
    relevance = torch.zeros(2, 1, 9, 9)
    relevance[0, 0, 4, 4] = 1.0  # one peak
    relevance[0, 0, 1, 1] = 0.2  # below 0.4 of the peak even after smoothing
    relevance[1, 0, 2:4, 2:4] = 5.0  # another scale: the rule is relative to each view's own peak
    config = MaskConfig(source="auto", threshold=0.4, dilation=1, feather=0.0)
    mask = binary_mask(relevance, config)
    assert mask[0, 0, 4, 4] == 1 and mask[0, 0, 1, 1] == 0 and mask[0].sum() == 1
    assert mask[1, 0, 2:4, 2:4].eq(1).all()
    grown = soften(mask, config)
    expected = F.max_pool2d(mask, 3, stride=1, padding=1)  # a 3 x 3 square around every marked pixel
    assert torch.equal(grown, expected) and grown[0].sum() == 9
    feathered = soften(mask, MaskConfig(source="auto", dilation=0, feather=1.0))
    assert 0 < feathered[0, 0, 4, 5] < feathered[0, 0, 4, 4] <= 1 and feathered[0, 0, 0, 8] < 1e-3


def test_edge_aware_smoothing_is_the_joint_bilateral_filter_written_out_per_pixel():
    """Each pass: every pixel's new value is the mean of its window's (edges replicated), weighted by
    exp(-d^2 / 2 sigma_s^2) exp(-|I_p - I_q|^2 / 2 sigma_c^2) with the guide's colours I; two views, random maps."""
    generator = torch.Generator().manual_seed(0)
    relevance, guide = torch.rand(2, 1, 7, 9, generator=generator), torch.rand(2, 3, 7, 9, generator=generator)
    sigma = 0.3
    expected = relevance.clone()
    for _ in range(EDGE_PASSES):
        previous, expected = expected, torch.empty_like(expected)
        for b, y, x in np.ndindex(2, 7, 9):
            total = weight_sum = 0.0
            for dy in range(-EDGE_RADIUS, EDGE_RADIUS + 1):
                for dx in range(-EDGE_RADIUS, EDGE_RADIUS + 1):
                    qy, qx = min(max(y + dy, 0), 6), min(max(x + dx, 0), 8)  # replicated edges
                    colour = (guide[b, :, y, x] - guide[b, :, qy, qx]).square().sum()
                    weight = torch.exp(-(dy * dy + dx * dx) / (2 * EDGE_SPATIAL_SIGMA**2) - colour / (2 * sigma**2))
                    total, weight_sum = total + weight * previous[b, 0, qy, qx], weight_sum + weight
            expected[b, 0, y, x] = total / weight_sum
    torch.testing.assert_close(edge_aware_smooth(relevance, guide, sigma), expected, rtol=1e-5, atol=1e-6)


def test_with_the_view_as_guide_the_mask_stops_at_the_objects_edge():
    """A blurred relevance blob, offset from a red square on grey: thresholded alone it spills onto the floor and
    misses the square's far corner; smoothed along the view's colours it is the square (IoU 1), and with edge-sigma
    0 the guide is ignored."""
    view = torch.full((1, 3, 32, 32), 0.5)
    view[:, :, 8:20, 8:20] = torch.tensor([0.8, 0.1, 0.1]).view(1, 3, 1, 1)
    square = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    square[..., 8:20, 8:20] = True
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = torch.exp(-((yy - 6.0) ** 2 + (xx - 6.0) ** 2) / (2 * 3.0**2))[None, None]  # a 16 x 16 map
    config = MaskConfig(source="noise", threshold=0.6, edge_sigma=0.1)

    def iou(mask):
        mask = mask > 0.5
        return float((mask & square).sum() / (mask | square).sum())

    snapped = binary_mask(blob, config, (32, 32), view)
    plain = binary_mask(blob, MaskConfig(source="noise", threshold=0.6, edge_sigma=0.0), (32, 32), view)
    assert iou(snapped) == 1.0
    assert iou(plain) < 0.75 and (plain.bool() & ~square).any()  # measured 0.69
    assert torch.equal(plain, binary_mask(blob, MaskConfig(source="noise", threshold=0.6, edge_sigma=0.0), (32, 32)))


@pytest.mark.parametrize("name", list(GUIDANCE_METHODS))
def test_a_mask_multiplies_every_guidance_gradient(sd_prior, name):
    z_src, z_trg, noise = make_latents(2, seed=1)
    mask = torch.rand(2, 1, *z_src.shape[-2:], generator=torch.Generator().manual_seed(2))
    guidance = GUIDANCE_METHODS[name].config().setup(prior=sd_prior)
    t = torch.tensor([300, 600]) if not guidance.shares_timestep else torch.tensor([400, 400])
    calls = {}
    for key, given in (("whole", None), ("masked", mask)):
        calls[key] = guidance(z_trg, z_src, "a blue ball", "a red ball", t=t, noise=noise, mask=given,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(calls["masked"].grad, calls["whole"].grad * mask, rtol=1e-5, atol=1e-6)
    if calls["whole"].regularizer_grad is not None:  # CDS: the contrastive part is masked too
        torch.testing.assert_close(calls["masked"].regularizer_grad, calls["whole"].regularizer_grad * mask)


def test_a_mask_of_the_wrong_size_is_refused(sd_prior):
    z_src, z_trg, _ = make_latents(1)
    guidance = GUIDANCE_METHODS["dds"].config().setup(prior=sd_prior)
    with pytest.raises(ValueError, match="mask must be B 1 H W"):
        guidance(z_trg, z_src, "a", "b", mask=torch.ones(1, 1, 4, 4))


def test_mask_settings_out_of_range_are_named():
    for bad, flag in ((dict(threshold=0.0), "threshold"), (dict(samples=0), "samples"),
                      (dict(timesteps=(1.0,)), "timesteps"), (dict(dilation=-1), "dilation"),
                      (dict(edge_sigma=-0.1), "edge-sigma")):  # fmt: skip
        with pytest.raises(UserError, match=f"--mask.{flag}"):
            MaskConfig(source="auto", **bad).validate()


@pytest.fixture()
def ball_image(tmp_path):
    array = np.full((40, 48, 3), 120, dtype=np.uint8)
    array[10:30, 8:24] = (200, 30, 30)
    path = tmp_path / "view.png"
    Image.fromarray(array).save(path)
    return path


def edit(image, output, *extra):
    main(["ids", "--image", str(image), "--prompt-src", "a red ball", "--prompt-trg", "a blue ball", "--model",
          "tiny", "--steps", "1", "--output", str(output), *map(str, extra)])  # fmt: skip
    return output


def test_the_editor_leaves_the_latent_outside_the_mask_exactly_as_it_was(sd_prior):
    z_src, _, _ = make_latents(2, seed=4)
    mask = torch.zeros(2, 1, *z_src.shape[-2:])
    mask[0, :, :, :5] = 1.0
    mask[1, :, 2:6, 3:9] = 0.5
    guidance = GUIDANCE_METHODS["ids"].config().setup(prior=sd_prior)
    z = optimise_latent(guidance, z_src, "a blue ball", "a red ball", steps=3, lr=0.1, grad_scale=2000.0,
                        generator=torch.Generator().manual_seed(0), mask=mask)  # fmt: skip
    outside = (mask == 0).expand_as(z)
    assert torch.equal(z[outside], z_src[outside])
    assert (z - z_src)[~outside].abs().min() > 0


def test_a_given_mask_image_reaches_the_edit_and_is_saved(ball_image, tmp_path):
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[:, :24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    output = edit(ball_image, tmp_path / "masked", "--mask.source", tmp_path / "mask.png", "--mask.dilation", 0,
                  "--mask.feather", 0)  # fmt: skip
    saved = np.asarray(Image.open(output / "mask.png").convert("L"))
    assert saved.shape == (64, 76) or saved.shape[0] == 64  # the working size (short side 64)
    assert saved[:, : saved.shape[1] // 2 - 4].min() == 255 and saved[:, saved.shape[1] // 2 + 4 :].max() == 0
    assert Image.open(output / "strip.png").width == 3 * saved.shape[1]


def test_pasting_keeps_the_source_where_the_mask_is_black_and_blends_by_its_value():
    """By hand: a 2 x 2 latent mask enlarged 4x bilinearly; each pixel is w * edit + (1 - w) * source."""
    generator = torch.Generator().manual_seed(1)
    edit_pixels, source = torch.rand(2, 3, 8, 8, generator=generator), torch.rand(2, 3, 8, 8, generator=generator)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.25, 0.25], [0.25, 0.25]]]])
    got = paste_into_source(edit_pixels, source, mask)
    # half-pixel centres: output pixel x samples the latent at (x + 0.5) / 4 - 0.5, clamped at the border
    position = ((torch.arange(8) + 0.5) / 4 - 0.5).clamp(0, 1)
    weight = (1 - position)[:, None] * (1 - position)[None, :]  # the only white latent pixel is the top-left one
    expected_first = weight * edit_pixels[0] + (1 - weight) * source[0]
    torch.testing.assert_close(got[0], expected_first)
    torch.testing.assert_close(got[1], 0.25 * edit_pixels[1] + 0.75 * source[1])
    assert torch.equal(got[0][:, 6:, 6:], source[0][:, 6:, 6:])  # past the white pixel's reach: the source exactly


def test_edit_png_keeps_the_source_pixels_outside_a_given_mask_unless_told_not_to(ball_image, tmp_path):
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[:, :24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    flags = ("--mask.source", tmp_path / "mask.png", "--mask.dilation", 0, "--mask.feather", 0, "--steps", 3,
             "--mask.view-dilation", 0, "--mask.view-feather", 0)  # fmt: skip
    results = {}
    for name, extra in (("pasted", ()), ("decoded", ("--no-paste-outside-mask",))):
        output = edit(ball_image, tmp_path / name, *flags, *extra)
        strip = np.asarray(Image.open(output / "strip.png").convert("RGB")).astype(int)
        result = np.asarray(Image.open(output / "edit.png").convert("RGB")).astype(int)
        width = result.shape[1]
        source = strip[:, :width]  # the strip's first tile: the source at the working size
        right = slice(width // 2 + 4, None)  # a latent pixel (4 px) clear of the mask's edge
        results[name] = (np.abs(result[:, right] - source[:, right]).max(), np.abs(result - source).max())
    assert results["pasted"][0] == 0 and results["pasted"][1] > 0, results  # edited on the left only
    assert results["decoded"][0] > 0, results  # the decoder's own output differs from the source everywhere


def test_edit_png_is_pasted_through_the_image_pixel_mask_grown_by_view_dilation(ball_image, tmp_path):
    """The paste follows the mask at the image's pixels, grown by --mask.view-dilation image pixels: the first column
    from which edit.png is the source in every row moves right by exactly the growth, 3 (a latent pixel of the tiny
    prior is 2 image pixels, so the latent mask could not move it by 3)."""
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[:, :24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    first_kept = {}
    for grow in (0, 3):
        output = edit(ball_image, tmp_path / f"grow{grow}", "--mask.source", tmp_path / "mask.png",
                      "--mask.view-dilation", grow, "--mask.view-feather", 0)  # fmt: skip
        strip = np.asarray(Image.open(output / "strip.png").convert("RGB")).astype(int)
        result = np.asarray(Image.open(output / "edit.png").convert("RGB")).astype(int)
        same = (result == strip[:, : result.shape[1]]).all(axis=(0, 2))  # per column: the source in every row
        kept = np.flatnonzero(~same)[-1] + 1  # right of the last changed column: the source
        assert same[kept:].all() and not same[:kept].all()
        first_kept[grow] = kept
    assert first_kept[3] - first_kept[0] == 3, first_kept


def test_a_missing_or_mis_sized_mask_is_named_before_editing(ball_image, tmp_path):
    with pytest.raises(UserError, match="--mask.source: no mask image"):
        edit(ball_image, tmp_path / "a", "--mask.source", tmp_path / "nothing.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(UserError, match="--mask.source: the mask .* is 20x20 pixels, its image 48x40"):
        edit(ball_image, tmp_path / "b", "--mask.source", tmp_path / "small.png")
    assert not (tmp_path / "b").exists()


def test_the_auto_mask_runs_through_the_2d_editor(ball_image, tmp_path):
    """Wiring only (the tiny prior's map means nothing; test_demo.py checks the demo prior's masks)."""
    output = edit(ball_image, tmp_path / "auto", "--mask.source", "auto")
    mask = np.asarray(Image.open(output / "mask.png"))
    assert mask.shape[:2] == np.asarray(Image.open(output / "edit.png")).shape[:2]


def test_with_instruct_pix2pix_the_pair_is_the_instruction_and_no_text_both_on_the_source_image(ip2p_prior):
    z_src, _, _ = make_latents(1, seed=6)
    config = MaskConfig(source="auto", timesteps=(0.4,), samples=1)
    got = relevance_map(ip2p_prior, z_src, "make it blue", "ignored", config, torch.Generator().manual_seed(2))
    t = torch.tensor([400])
    z_t = add_noise(z_src, torch.randn(z_src.shape, generator=torch.Generator().manual_seed(2)), t,
                    ip2p_prior.alphas_cumprod)  # fmt: skip
    eps = [ip2p_prior.predict_noise(z_t, t, ip2p_prior.encode_text([text]), 1.0, image_cond=z_src)
           for text in ("make it blue", "")]  # fmt: skip
    torch.testing.assert_close(got, (eps[0] - eps[1]).abs().mean(1, keepdim=True), rtol=1e-4, atol=1e-6)
