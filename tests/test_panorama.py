"""Patch-wise (panorama) editing: coverage, region weights, the one-patch case, region mixing, the CLI, the demo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_latents
from PIL import Image

from ids_nerfstudio.demo.scoring import dilate, masked_psnr, measure_colour_edit
from ids_nerfstudio.demo.wide import render_panorama
from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance import GUIDANCE_METHODS, CSDConfig, DDSConfig
from ids_nerfstudio.guidance.csd import rbf_kernel
from ids_nerfstudio.guidance.formulas import sds_weight
from ids_nerfstudio.image_editor import optimise_latent
from ids_nerfstudio.panorama import (
    coverage,
    crop_patches,
    decode_tiled,
    encode_tiled,
    optimise_panorama,
    patch_gradient,
    patch_grid,
    region_weights,
    scatter_patches,
)
from ids_nerfstudio.prior import StableDiffusionPriorConfig
from ids_nerfstudio.scripts.edit_image import main

# csdedit.py of subin-kim-cv/CSD (commit 6c53266), copied as literals: the region weights of its 12 patches
OFFICIAL_WEIGHTS_4 = [
    [0.9375, 0.0625, 0.0, 0.0], [0.6875, 0.3125, 0.0, 0.0], [0.4375, 0.5625, 0.0, 0.0], [0.1875, 0.8125, 0.0, 0.0],
    [0.0, 0.875, 0.125, 0.0], [0.0, 0.625, 0.375, 0.0], [0.0, 0.375, 0.625, 0.0], [0.0, 0.125, 0.875, 0.0],
    [0.0, 0.0, 0.8125, 0.1875], [0.0, 0.0, 0.5625, 0.4375], [0.0, 0.0, 0.3125, 0.6875], [0.0, 0.0, 0.0625, 0.9375],
]  # fmt: skip
OFFICIAL_WEIGHTS_3 = [
    [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.0, 1.0, 0.0],
    [0.0, 1.0, 0.0], [0.0, 0.75, 0.25], [0.0, 0.5, 0.5], [0.0, 0.25, 0.75], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0],
]  # fmt: skip
OFFICIAL_WEIGHTS_2 = [
    [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.875, 0.125], [0.625, 0.375], [0.375, 0.625], [0.125, 0.875],
    [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0],
]  # fmt: skip
BLUE = "a photo of a blue ball on a grey floor"


def test_patch_grid_covers_every_pixel_and_adds_a_flush_last_patch():
    corners = patch_grid(16, 30, (16, 16), 4)
    assert corners[:, 0].tolist() == [0] * 5 and corners[:, 1].tolist() == [0, 4, 8, 12, 14]
    assert (coverage(corners, (16, 16), (16, 30)) > 0).all()


def test_scatter_divides_the_sum_of_patches_by_the_per_pixel_count():
    """Three 4x4 patches on a 4x9 latent at columns 0, 3, 5: the sum and counts written out by hand."""
    corners = torch.tensor([[0, 0], [0, 3], [0, 5]])
    grads = torch.stack([torch.full((2, 4, 4), v) for v in (1.0, 10.0, 100.0)])
    expected_row = [1, 1, 1, (1 + 10) / 2, 10, (10 + 100) / 2, (10 + 100) / 2, 100, 100]
    expected = torch.tensor(expected_row).expand(1, 2, 4, 9)
    assert torch.allclose(scatter_patches(grads, corners, (4, 9)), expected)
    assert coverage(corners, (4, 4), (4, 9))[0].tolist() == [1, 1, 1, 2, 1, 2, 2, 1, 1]
    uncovered = scatter_patches(grads[:1], corners[:1], (4, 9))
    assert uncovered[..., 4:].abs().sum() == 0, "no patch: no gradient (and no division by zero)"


@pytest.mark.parametrize(("regions", "official"), [(2, OFFICIAL_WEIGHTS_2), (3, OFFICIAL_WEIGHTS_3),
                                                   (4, OFFICIAL_WEIGHTS_4)])  # fmt: skip
def test_region_weights_are_the_official_tables(regions, official):
    """The official tables are the overlap fractions of 64-wide, stride-16 patches with equal strips of 240."""
    lefts = patch_grid(64, 240, (64, 64), 16)[:, 1]
    assert len(lefts) == 12
    assert torch.allclose(region_weights(lefts, 240, 64, regions), torch.tensor(official))


@pytest.mark.parametrize("guidance", list(GUIDANCE_METHODS))
def test_one_patch_covering_the_latent_is_the_2d_editor(sd_prior, guidance):
    """Same draws, same steps: a panorama whose one patch is the whole latent equals optimise_latent."""
    z_src = make_latents(1, height=8, width=12)[0]
    config = GUIDANCE_METHODS[guidance].config()
    common = dict(steps=2, lr=0.1, grad_scale=2000.0)
    reference = optimise_latent(config.setup(prior=sd_prior), z_src, BLUE, "a photo", **common,
                                generator=torch.Generator().manual_seed(3))  # fmt: skip
    patched = optimise_panorama(config.setup(prior=sd_prior), z_src, [BLUE], "a photo", **common, size=(8, 12),
                                stride=4, generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert not torch.equal(reference, z_src)
    torch.testing.assert_close(patched, reference, rtol=1e-5, atol=1e-6)


def test_csd_couples_the_patches_and_the_others_do_not(sd_prior):
    """CSD's patch gradients depend on the other patches (SVGD); DDS's are each patch's own."""
    z_src, z, _ = make_latents(1, height=8, width=16)
    corners = patch_grid(8, 16, (8, 8), 4)
    t = torch.tensor([300])

    def patch_grads(config, chosen):
        grad, _ = patch_gradient(config.setup(prior=sd_prior), z, z_src, corners[chosen], (8, 8), [BLUE], "a photo",
                                 t=t, score_scale=1.0, generator=torch.Generator().manual_seed(0))  # fmt: skip
        return grad[..., :8]  # the first patch's pixels, covered by it alone where only it is drawn

    for config, coupled in ((CSDConfig(), True), (CSDConfig(svgd=False), False), (DDSConfig(), False)):
        alone, together = patch_grads(config, [0]), patch_grads(config, [0, 2])
        assert torch.allclose(alone, together, atol=1e-6) != coupled, type(config).__name__


@pytest.mark.parametrize("svgd", [True, False])
def test_region_wise_mixing_is_the_overlap_weighted_sum_of_the_prompts_deltas(sd_prior, svgd):
    """Two strips: each patch's delta is alpha_1 d(prompt 1) + alpha_2 d(prompt 2) with one noise per patch, then
    CSD's SVGD over the patches' noisy latents (written out with rbf_kernel)."""
    z_src, z, _ = make_latents(1, height=8, width=16)
    corners = patch_grid(8, 16, (8, 8), 4)
    weights = region_weights(corners[:, 1], 16, 8, 2)
    prompts, t = ["a photo of a dog", "a photo of a cat"], torch.tensor([250])
    guidance = CSDConfig(svgd=svgd).setup(prior=sd_prior)
    grad, _ = patch_gradient(guidance, z, z_src, corners, (8, 8), prompts, "a photo", t=t, score_scale=2.0,
                             generator=torch.Generator().manual_seed(0), weights=weights)  # fmt: skip

    noise = torch.randn(len(corners), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z_p, z_src_p = crop_patches(z, corners, (8, 8)), crop_patches(z_src, corners, (8, 8))
    uncoupled = CSDConfig(svgd=False).setup(prior=sd_prior)
    per_prompt = [uncoupled(z_p, z_src_p, p, "a photo", t=t, noise=noise).grad for p in prompts]  # w(t) d_k
    mixed = sum(weights[:, k, None, None, None] * per_prompt[k] for k in range(2))
    if svgd:
        weight = sds_weight(t, sd_prior.alphas_cumprod, z_p)
        z_t = sd_prior.alphas_cumprod[t].sqrt() * z_p + (1 - sd_prior.alphas_cumprod[t]).sqrt() * noise
        kernel, repulsion, _ = rbf_kernel(z_t.flatten(1))
        mixed = ((kernel.T @ mixed.flatten(1)) + weight.flatten()[0] * repulsion).view_as(mixed) / len(corners)
    expected = scatter_patches(2.0 * mixed, corners, (8, 16))
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_one_region_is_the_plain_patch_step(sd_prior):
    z_src, z, _ = make_latents(1, height=8, width=16)
    corners = patch_grid(8, 16, (8, 8), 4)
    guidance = CSDConfig().setup(prior=sd_prior)
    grads = [patch_gradient(guidance, z, z_src, corners, (8, 8), [BLUE], "a photo", t=torch.tensor([200]),
                            score_scale=1.0, generator=torch.Generator().manual_seed(0), weights=weights)[0]
             for weights in (None, torch.ones(len(corners), 1))]  # fmt: skip
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_tiled_vae_with_one_tile_is_the_plain_vae_and_overlapping_tiles_stay_close(sd_prior):
    pixels = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = sd_prior.encode_images(pixels)
        decoded = sd_prior.decode_latents(plain)
    torch.testing.assert_close(encode_tiled(sd_prior, pixels, (8, 16), 4), plain)
    torch.testing.assert_close(decode_tiled(sd_prior, plain, (8, 16), 4), decoded)
    tiled = encode_tiled(sd_prior, pixels, (8, 8), 4)
    assert tiled.shape == plain.shape
    # a pixel covered by two tiles is their average: the middle columns by hand
    with torch.no_grad():
        left, right = sd_prior.encode_images(pixels[..., 0:16]), sd_prior.encode_images(pixels[..., 8:24])
    torch.testing.assert_close(tiled[..., 4:8], (left[..., 4:8] + right[..., 0:4]) / 2)


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def wide_image(tmp_path):
    path = tmp_path / "wide.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 64, 3), dtype=np.uint8)).save(path)
    return path


def cli(image, output, *extra):
    return main(["--image", str(image), "--prompt-src", "a photo of a cat", "--prompt-trg", "a photo of a dog",
                 "--model", "tiny", "--device", "cpu", "--size", "16", "--steps", "2", "--max-side", "32",
                 "--output", str(output), *extra])  # fmt: skip


def test_panorama_lifts_the_max_side_refusal(wide_image, tmp_path):
    with pytest.raises(UserError, match="--max-side 32"):
        cli(wide_image, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    output = cli(wide_image, tmp_path / "out", "--panorama", "--patches.stride", "2", "--patches.tiled-vae")
    assert Image.open(output / "edit.png").size == (64, 16)


@pytest.mark.parametrize("guidance", ["csd", "cds", "pds", "sds"])
def test_every_guidance_edits_a_panorama_with_region_prompts_and_a_mask(wide_image, tmp_path, guidance):
    output = cli(wide_image, tmp_path / "out", "--guidance", guidance, "--panorama", "--patches.per-step", "3",
                 "--patches.region-prompts", "a photo of a dog", "a photo of a cow", "--mask.source", "auto",
                 "--fpr-iters", "1")  # fmt: skip
    assert Image.open(output / "edit.png").size == (64, 16) and (output / "mask.png").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--patches.per-step", "-1"], "--patches.per-step must be >= 0"),
    (["--patches.region-prompts", "a dog", " "], "--patches.region-prompts: a region prompt is empty"),
    (["--patches.lr", "0"], "--patches.lr"),
])  # fmt: skip
def test_bad_panorama_flags_are_refused_before_anything_is_written(wide_image, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        cli(wide_image, tmp_path / "out", "--panorama", *flags)
    assert not (tmp_path / "out").exists()


def test_region_prompts_without_panorama_are_refused(wide_image, tmp_path):
    with pytest.raises(UserError, match="need --panorama"):
        cli(wide_image, tmp_path / "out", "--max-side", "64", "--patches.region-prompts", "a", "b")


# ------------------------------------------------------------------------------------------- demo prior


def demo_panorama_edit(model: str) -> tuple[list[str], float]:
    """CSD (SVGD over 6 of the 9 patches a step; the settings ``ids-edit-image csd --model demo --panorama
    --patches.per-step 6`` takes) recolours the 192 x 64 demo panorama's three red balls blue: (each ball's colour
    after, floor PSNR outside the balls)."""
    image, masks, caption = render_panorama()
    prior = StableDiffusionPriorConfig(model=model, device="cpu").setup()
    with torch.no_grad():
        z_src = prior.encode_images(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    z = optimise_panorama(CSDConfig().setup(prior=prior), z_src, [BLUE], caption, steps=60, lr=0.5, lr_decay=0.9,
                          grad_scale=16 * 16, size=(16, 16), stride=4, per_step=6,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        edit = prior.decode_latents(z)[0].permute(1, 2, 0).numpy()
    colours = [measure_colour_edit(image, edit, mask).after for mask in masks]
    return colours, masked_psnr(image, edit, ~dilate(masks.any(0), 2))


def test_a_demo_panorama_turns_its_balls_blue_and_keeps_its_floor():
    colours, floor = demo_panorama_edit("demo")
    print(f"demo: {colours}, floor {floor:.1f} dB")
    assert colours == ["blue"] * 3 and floor >= 28.0, (colours, floor)


def test_a_random_unet_fails_those_thresholds(random_unet_demo):
    colours, floor = demo_panorama_edit(str(random_unet_demo))
    print(f"random UNet: {colours}, floor {floor:.1f} dB")
    assert not (colours == ["blue"] * 3 and floor >= 28.0), (colours, floor)
