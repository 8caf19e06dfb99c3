"""The prior layer: CFG order and batching, caching, laziness, frozen weights, loading errors."""

from __future__ import annotations

import pytest
import torch
from helpers import cfg_eps, make_latents, unet_eps
from torch.testing import assert_close

from ids_nerfstudio.guidance import GUIDANCE_METHODS
from ids_nerfstudio.prior import (
    DiffusionPrior,
    PriorLoadError,
    StableDiffusionPrior,
    StableDiffusionPriorConfig,
    tiny_instruct_pix2pix,
    tiny_stable_diffusion,
)


def count_unet_calls(prior):
    calls = []
    handle = prior.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls, handle


@pytest.mark.parametrize("batch_size", [1, 3])
def test_predict_noise_is_diffusers_cfg_in_one_unet_call(sd_prior, batch_size):
    _, z, _ = make_latents(batch_size)
    t = torch.tensor([10, 400, 900][:batch_size])
    emb = sd_prior.encode_text(["a red car"] * batch_size)
    calls, handle = count_unet_calls(sd_prior)
    eps = sd_prior.predict_noise(z, t, emb, 5.0)
    handle.remove()
    assert calls == [2 * batch_size], "conditional and unconditional rows go through one UNet call"
    assert_close(eps, cfg_eps(sd_prior, z, t, emb, 5.0), rtol=1e-4, atol=1e-4)
    assert_close(sd_prior.predict_noise(z, t, emb, None), unet_eps(sd_prior, z, t, emb), rtol=1e-4, atol=1e-4)


def test_text_embeddings_are_cached_and_match_the_text_encoder(sd_prior):
    calls, handle = [], sd_prior.components.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    first = sd_prior.encode_text(["a cached prompt", "another one", "a cached prompt"])
    second = sd_prior.encode_text(["another one"])
    handle.remove()
    assert len(calls) == 1, "each distinct prompt is encoded once"
    assert torch.equal(first[1], second[0]) and torch.equal(first[0], first[2])
    tokenizer = sd_prior.components.tokenizer
    ids = tokenizer(["another one"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        assert_close(second, sd_prior.components.text_encoder(ids.input_ids)[0])


def test_vae_round_trip_shapes_on_non_square_images(sd_prior):
    images = torch.rand(2, 3, 24, 40)
    latents = sd_prior.encode_images(images)
    factor = sd_prior.latent_downsample
    assert latents.shape == (2, 4, 24 // factor, 40 // factor)
    decoded = sd_prior.decode_latents(latents)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
    posterior = sd_prior.vae.encode(images * 2 - 1).latent_dist
    assert_close(latents, posterior.mean * sd_prior.vae.config.scaling_factor), "the mean, never a sample"


def test_prior_is_built_only_when_first_used():
    prior = tiny_stable_diffusion(device="cpu")
    guidance = GUIDANCE_METHODS["ids"].config().setup(prior=prior)
    assert not prior.is_loaded, "constructing the prior and the guidance loads nothing"
    z_src, z_trg, _ = make_latents(1)
    guidance(z_trg, z_src, "a dog", "a cat")
    assert prior.is_loaded
    assert isinstance(prior, DiffusionPrior)  # (on Python < 3.12 this check reads the properties, so comes last)


def test_prior_weights_are_frozen_and_outside_guidance_state(sd_prior, ip2p_prior):
    for prior in (sd_prior, ip2p_prior):
        for module in (prior.unet, prior.vae, prior.components.text_encoder):
            assert not any(p.requires_grad for p in module.parameters())
            assert not module.training
    for name, method in GUIDANCE_METHODS.items():
        guidance = method.config().setup(prior=sd_prior)
        assert guidance.state_dict() == {}, name
        assert list(guidance.parameters()) == [], name


def test_fp16_dtype_option_is_honoured():
    prior = tiny_stable_diffusion(device="cpu", dtype="float16")
    assert prior.dtype == torch.float16
    prior.components  # noqa: B018
    assert prior.unet.dtype == torch.float16 and prior.alphas_cumprod.dtype == torch.float32


def test_auto_dtype_is_fp32_on_cpu():
    assert StableDiffusionPrior("x", device="cpu").dtype == torch.float32


def test_missing_local_model_gives_one_clear_error(tmp_path):
    prior = StableDiffusionPriorConfig(model=str(tmp_path / "no-such-model"), device="cpu").setup()
    with pytest.raises(PriorLoadError, match="does not exist") as error:
        prior.encode_text(["x"])
    assert "\n" not in str(error.value)


def test_incomplete_model_folder_names_the_model_and_how_to_fetch_it(tmp_path):
    prior = StableDiffusionPriorConfig(model=str(tmp_path), device="cpu").setup()
    with pytest.raises(PriorLoadError) as error:
        prior.encode_text(["x"])
    message = str(error.value)
    assert str(tmp_path) in message and "huggingface-cli download" in message and "\n" not in message


def test_instruct_pix2pix_three_way_cfg(ip2p_prior):
    prior = ip2p_prior
    _, z, _ = make_latents(2)
    image_latents = make_latents(2, seed=5)[0]
    t = torch.tensor([100, 600])
    text = prior.encode_text(["make it snow", "make it snow"])
    null = prior.null_embedding.expand(2, -1, -1)
    image = image_latents / prior.vae.config.scaling_factor

    def eps(img, emb):
        return unet_eps(prior, torch.cat([z, img], dim=1), t, emb)

    e00, e_i0, e_it = eps(torch.zeros_like(image), null), eps(image, null), eps(image, text)
    expected = e00 + 1.5 * (e_i0 - e00) + 4.0 * (e_it - e_i0)
    assert_close(prior.predict_noise(z, t, text, 4.0, image_cond=image_latents), expected, rtol=1e-4, atol=1e-4)
    image_only = e00 + 1.5 * (e_i0 - e00)
    assert_close(prior.predict_noise(z, t, None, 4.0, image_cond=image_latents), image_only, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="image_cond"):
        prior.predict_noise(z, t, text, 4.0)


def test_tiny_priors_are_deterministic():
    a, b = tiny_instruct_pix2pix(seed=3, device="cpu"), tiny_instruct_pix2pix(seed=3, device="cpu")
    for p, q in zip(a.unet.parameters(), b.unet.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_diffusers_folder_loads_through_the_real_loading_path(sd_prior, tmp_path):
    """Save the tiny model as a diffusers folder and load it by path, as a user's local SD copy would be."""
    from diffusers import DDPMScheduler

    components = sd_prior.components
    components.unet.save_pretrained(tmp_path / "unet")
    components.vae.save_pretrained(tmp_path / "vae")
    components.text_encoder.save_pretrained(tmp_path / "text_encoder")
    components.tokenizer.save_pretrained(tmp_path / "tokenizer")
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_pretrained(
        tmp_path / "scheduler"
    )
    loaded = StableDiffusionPriorConfig(model=str(tmp_path), device="cpu", dtype="float32").setup()
    _, z, _ = make_latents(2)
    t = torch.tensor([50, 700])
    emb = sd_prior.encode_text(["a loaded model", "x"])
    assert_close(loaded.encode_text(["a loaded model", "x"]), emb)
    assert_close(loaded.predict_noise(z, t, emb, 7.5), sd_prior.predict_noise(z, t, emb, 7.5))
    assert_close(loaded.alphas_cumprod, sd_prior.alphas_cumprod)
