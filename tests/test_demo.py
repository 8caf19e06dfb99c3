"""The demo prior: it loads through the real diffusers-folder path, and on it an edit happens and the rest stays.

Thresholds are ones a random prior fails: each behaviour test runs the same check on ``tiny`` and expects it to
fail there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ids_nerfstudio.demo import WORDS, DemoSample, caption, demo_tokenizer, render_sample
from ids_nerfstudio.demo.scoring import (
    auto_mask_iou,
    colour_name,
    measure_colour_edit,
    measure_structure_edit,
    object_colour,
    recolour,
    recolour_cases,
)
from ids_nerfstudio.demo.world import COLOURS, SceneObject, look_at
from ids_nerfstudio.eval import ClipEmbedder
from ids_nerfstudio.guidance import DDSConfig, IDSConfig
from ids_nerfstudio.guidance.relevance import MaskConfig
from ids_nerfstudio.image_editor import PACKAGED_DEFAULT_GRAD_SCALE, optimise_latent
from ids_nerfstudio.model_names import DEMO_WEIGHTS, resolve_model
from ids_nerfstudio.prior import StableDiffusionPriorConfig

CAMERA = look_at(np.array([2.4, -1.6, 1.1]), np.array([0.0, 0.0, 0.25]))


@pytest.fixture(scope="module")
def demo_prior():
    prior = StableDiffusionPriorConfig(model="demo", device="cpu").setup()
    prior.components  # noqa: B018
    return prior


def test_every_demo_word_is_one_token_and_any_text_tokenizes():
    tokenizer = demo_tokenizer()
    for word in WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tokenizer("a photo of a zebra", add_special_tokens=False).input_ids) > 5  # bytes for unknown words


def test_demo_prior_loads_from_its_diffusers_folder(demo_prior):
    assert resolve_model("demo", "diffusion").location == str(DEMO_WEIGHTS / "diffusion")
    assert resolve_model("some/hub-id", "diffusion").location == "some/hub-id"
    components = demo_prior.components
    assert components.unet.dtype == torch.float32, "fp16 weights on disk are loaded in the prior's dtype"
    assert not any(p.requires_grad for p in components.unet.parameters())
    assert demo_prior.latent_downsample == 4 and demo_prior.size_multiple == 16
    assert components.tokenizer("a red ball").input_ids == demo_tokenizer()("a red ball").input_ids


def render_caption_pairs(count: int) -> tuple[torch.Tensor, list[str], list[list[str]]]:
    """Single-object views of each colour and shape; for each, its caption and the other colours' captions."""
    images, truths, candidates = [], [], []
    for k in range(count):
        shape, colour = ("ball", "cube")[k % 2], list(COLOURS)[k % len(COLOURS)]
        sample = DemoSample((SceneObject(shape, colour, 0.0, 0.0, 0.3, angle=0.3 * k),), CAMERA)
        images.append(torch.from_numpy(render_sample(sample)[0]).permute(2, 0, 1).float())
        truths.append(sample.caption)
        candidates.append([caption((SceneObject(shape, c, 0, 0, 0.3),)) for c in COLOURS])
    return torch.stack(images), truths, candidates


def caption_accuracy(clip: ClipEmbedder, count: int = 12) -> float:
    images, truths, candidates = render_caption_pairs(count)
    image_features = clip.images(images)
    hits = 0
    for k in range(count):
        scores = clip.texts(candidates[k]) @ image_features[k]
        hits += candidates[k][int(scores.argmax())] == truths[k]
    return hits / count


def test_demo_clip_ranks_the_right_caption_first_and_a_random_clip_does_not():
    assert caption_accuracy(ClipEmbedder("demo")) >= 0.9
    assert caption_accuracy(ClipEmbedder("tiny")) < 0.5  # chance is 1/6


def red_ball_edit(prior, steps: int = 100):
    """A 2D IDS edit of a red ball into a blue ball: (source, edit, ball mask), images H W 3 in [0, 1]."""
    sample = DemoSample((SceneObject("ball", "red", 0.0, 0.0, 0.34),), CAMERA)
    image, masks = render_sample(sample)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        z_src = prior.encode_images(pixels)
    guidance = IDSConfig().setup(prior=prior)
    prompts = caption((SceneObject("ball", "blue", 0, 0, 0.3),)), sample.caption
    z = optimise_latent(guidance, z_src, *prompts, steps=steps, lr=0.1, grad_scale=PACKAGED_DEFAULT_GRAD_SCALE,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        edit = prior.decode_latents(z)[0].permute(1, 2, 0).numpy()
    return image, edit, masks[0]


def test_ids_edit_on_the_demo_prior_recolours_the_ball_and_keeps_the_background(demo_prior):
    source, edit, mask = red_ball_edit(demo_prior)
    result = measure_colour_edit(source, edit, mask)
    assert result.before == "red" and result.after == "blue", (result.mean_before, result.mean_after)
    blue_share = result.mean_after[2] / result.mean_after.sum() - result.mean_before[2] / result.mean_before.sum()
    assert blue_share > 0.2, "the ball's chromaticity moved toward blue by a clear margin"
    assert result.background_psnr >= 30.0, result.background_psnr  # measured 32.5 dB; the tiny prior: see below


def test_the_same_edit_with_a_random_unet_fails_those_thresholds(random_unet_demo):
    """The control differs from the demo prior in the UNet only (same VAE, text encoder, steps and step size)."""
    control = StableDiffusionPriorConfig(model=str(random_unet_demo), device="cpu").setup()
    source, edit, mask = red_ball_edit(control)
    result = measure_colour_edit(source, edit, mask)
    print(f"random UNet: {result.after}, background {result.background_psnr:.1f} dB")
    assert not (result.after == "blue" and result.background_psnr >= 30.0), (result.after, result.background_psnr)


def test_the_packaged_grad_scale_is_the_official_step_per_latent_element(demo_prior):
    """125 / (16 x 16) for the demo's latents of a 64 px image = 2000 / (64 x 64) for SD's (its VAE: 8x) at 512 px."""
    from ids_nerfstudio.image_editor import DEFAULT_GRAD_SCALE, DEFAULT_SIZE, PACKAGED_DEFAULT_SIZE

    demo_side = PACKAGED_DEFAULT_SIZE // demo_prior.latent_downsample  # the shipped VAE's downsampling
    assert PACKAGED_DEFAULT_GRAD_SCALE / demo_side**2 == DEFAULT_GRAD_SCALE / (DEFAULT_SIZE // 8) ** 2


def test_ids_keeps_the_rest_better_than_dds_at_equal_success(demo_prior):
    """The paper's claim in miniature on four seeded views (one with two objects), 80 steps each: IDS recolours
    as often as DDS and keeps more of the rest (measured: both 4 of 4; 31.7 vs 31.3 dB, IDS ahead on the
    two-object view by 1.2 dB). benchmarks/demo_prior.py has the larger draws (64 views: 91 % / 28.9 dB vs
    88 % / 27.4 dB)."""
    cases = recolour_cases(4, seed=0)
    assert sorted(len(case.sample.objects) for case in cases) == [1, 1, 1, 2]
    outcome = {}
    for name, config in (("dds", DDSConfig()), ("ids", IDSConfig())):
        results, _, _ = recolour(demo_prior, config.setup(prior=demo_prior), cases, steps=80,
                                 grad_scale=PACKAGED_DEFAULT_GRAD_SCALE, seed=0)  # fmt: skip
        successes = sum(result.after == case.colour for result, case in zip(results, cases, strict=True))
        outcome[name] = (successes, float(np.mean([result.background_psnr for result in results])))
    print("dds, ids (successes, background dB):", outcome["dds"], outcome["ids"])
    assert outcome["ids"][0] >= outcome["dds"][0] >= 3, outcome
    assert outcome["ids"][1] > outcome["dds"][1], outcome


def test_colour_names_survive_shading():
    for name, rgb in COLOURS.items():
        assert colour_name(0.3 * np.array(rgb)) == name
    image = np.full((8, 8, 3), 0.6)
    image[2:5, 2:5] = COLOURS["purple"]
    assert object_colour(image) == "purple"


def test_a_structure_edit_is_measured_against_the_ray_traced_source_and_ideal():
    from ids_nerfstudio.demo.world import render_with_masks

    ball, cube = (SceneObject(shape, "red", 0.0, 0.0, 0.34) for shape in ("ball", "cube"))
    (ball_image, ball_mask), (cube_image, cube_mask) = (render_with_masks(CAMERA, 64, 64, 77.0, (o,)) for o in
                                                        (ball, cube))  # fmt: skip
    ball_mask, cube_mask = ball_mask[0], cube_mask[0]
    ideal = measure_structure_edit(ball_image, cube_image, ball_mask, cube_mask)  # the perfect edit
    assert ideal.area_ratio == pytest.approx(1, abs=0.02) and ideal.iou_ideal > 0.98 and ideal.iou_source < 0.8
    assert ideal.floor_psnr == float("inf"), "the floor outside both objects is untouched"
    unchanged = measure_structure_edit(ball_image, ball_image, ball_mask, cube_mask)  # no edit at all
    assert unchanged.iou_source > 0.98 and unchanged.iou_ideal < 0.8 and unchanged.centroid_shift < 0.1
    moved = measure_structure_edit(ball_image, np.roll(cube_image, 3, axis=1), ball_mask, cube_mask)
    assert moved.centroid_shift == pytest.approx(ideal.centroid_shift + 3, abs=0.5) and moved.floor_psnr < 30
    assert unchanged.area_ratio == pytest.approx(ball_mask.sum() / cube_mask.sum(), abs=0.02)


def test_training_script_writes_loadable_folders_and_its_cache_reproduces_the_run(tmp_path):
    """A two-step run of every stage: the folders load through the real loaders, and a rerun that takes the VAE and
    CLIP from the cache gives the same UNet, byte for byte (each stage draws from its own generator)."""
    from ids_nerfstudio.demo.train import TrainArgs, main

    settings = dict(images=24, vae_steps=2, vae_batch=4, clip_steps=2, clip_batch=8, unet_steps=2, unet_batch=4,
                    device="cpu", workers=1, cache=tmp_path / "cache")  # fmt: skip
    main(TrainArgs(output=tmp_path / "first", **settings))
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["clip", "vae"]
    main(TrainArgs(output=tmp_path / "second", **settings))
    unet_file = "diffusion/unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "first" / unet_file).read_bytes() == (tmp_path / "second" / unet_file).read_bytes()

    prior = StableDiffusionPriorConfig(model=str(tmp_path / "first" / "diffusion"), device="cpu").setup()
    latents = prior.encode_images(torch.rand(2, 3, 64, 64))
    assert latents.shape == (2, 4, 16, 16)
    text = prior.encode_text(["a red ball", ""])
    assert prior.predict_noise(latents, torch.tensor([10, 500]), text, 7.5).isfinite().all()
    clip = ClipEmbedder(str(tmp_path / "first" / "clip"))
    assert clip.texts(["a photo of a red ball on a grey floor"]).shape[0] == 1


def test_loading_a_model_prints_no_notice_that_accelerate_is_missing():
    """diffusers and transformers load with accelerate (a dependency); without it each printed a five-line notice."""
    import subprocess
    import sys

    load = "from ids_nerfstudio.prior import StableDiffusionPriorConfig as C; C(model='demo').setup().components"
    result = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accelerate" not in result.stdout + result.stderr, result.stderr


def auto_masks_find_the_objects(prior) -> tuple[bool, np.ndarray]:
    """On 8 seeded views (6 with two objects) the thresholded auto mask overlaps the recoloured object's true mask:
    mean IoU >= 0.4 and IoU >= 0.3 in 6 of 8 views (measured at the views' pixels: demo prior 0.62, 7 of 8 >= 0.5,
    all >= 0.44; the random UNet 0.05)."""
    iou = auto_mask_iou(prior, recolour_cases(8, seed=1), MaskConfig(source="auto"))
    return bool(iou.mean() >= 0.4 and (iou >= 0.3).sum() >= 6), iou


def test_the_auto_mask_of_a_rendered_view_overlaps_the_true_object_mask(demo_prior):
    found, iou = auto_masks_find_the_objects(demo_prior)
    assert found, iou.round(2)


def test_the_auto_mask_of_a_random_unet_does_not(random_unet_demo):
    prior = StableDiffusionPriorConfig(model=str(random_unet_demo), device="cpu").setup()
    found, iou = auto_masks_find_the_objects(prior)
    assert not found, iou.round(2)


def test_a_masked_edit_of_two_object_views_changes_only_the_named_object(demo_prior):
    """Two seeded two-object views, 80 IDS steps: with the auto mask the named object takes its new colour, the other
    keeps its own and the rest stays above 30 dB even in the decoder's whole output; pasted into the source through
    the mask (as ids-edit-image writes it: through the view-pixel mask, grown and feathered) the rest is above 35
    dB. The same edit without the mask recolours as well but leaves less of the rest (measured: auto pasted 44.6
    and 48.2 dB, 42.6 and 46.3 through the latent mask before; decoded 32.0 and 31.7 dB, no mask 27.1 and 27.6
    dB)."""
    cases = [recolour_cases(8, seed=1)[k] for k in (2, 4)]
    assert all(len(case.sample.objects) == 2 for case in cases)
    guidance = IDSConfig().setup(prior=demo_prior)
    outcome = {}
    for mask, paste in (("auto", True), ("auto", False), ("off", True)):
        results, _, edited = recolour(demo_prior, guidance, cases, steps=80, grad_scale=PACKAGED_DEFAULT_GRAD_SCALE,
                                      seed=0, mask=MaskConfig(source=mask), paste_outside_mask=paste)  # fmt: skip
        others = []
        for case, image in zip(cases, edited, strict=True):
            other = 1 - case.index
            others.append(object_colour(image.permute(1, 2, 0).numpy(), render_sample(case.sample)[1][other]))
        outcome[mask, paste] = (
            all(r.after == case.colour for r, case in zip(results, cases, strict=True)),
            others == [case.sample.objects[1 - case.index].colour for case in cases],
            [round(r.background_psnr, 1) for r in results],
        )
    print("(named recoloured, other kept, background dB):", outcome)
    assert outcome["auto", True][:2] == (True, True) and min(outcome["auto", True][2]) >= 35.0, outcome
    assert outcome["auto", False][:2] == (True, True) and min(outcome["auto", False][2]) >= 30.0, outcome
    assert min(outcome["off", True][2]) < 30.0, outcome
