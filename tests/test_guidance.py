"""Oracle tests: each guidance's grad equals its formula written out (tests/helpers.py) with direct UNet calls."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    PROMPT_SRC,
    PROMPT_TRG,
    TOL,
    cfg_eps,
    embeddings,
    hand_cut_grad,
    hand_fpr,
    make_latents,
    noised,
    noised_sources,
    official_pds,
    pds_inputs,
    timesteps,
    tweedie,
    unet_eps,
)
from torch.testing import assert_close

from ids_nerfstudio.guidance import (
    CDSConfig,
    CSDConfig,
    DDSConfig,
    IDSConfig,
    PDSConfig,
    SDSConfig,
    fixed_point_regularization,
)
from ids_nerfstudio.guidance.csd import rbf_kernel


@pytest.mark.parametrize("batch_size", [1, 3])
def test_sds_matches_formula(sd_prior, batch_size):
    z_src, z_trg, noise = make_latents(batch_size)
    t = timesteps(batch_size)
    out = SDSConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)
    _, emb_trg = embeddings(sd_prior, batch_size)
    w = (1 - sd_prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
    expected = w * (cfg_eps(sd_prior, noised(sd_prior, z_trg, noise, t), t, emb_trg, 100.0) - noise)
    assert_close(out.grad, expected, **TOL)
    assert torch.equal(out.t, t)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_dds_matches_formula(sd_prior, batch_size):
    z_src, z_trg, noise = make_latents(batch_size)
    t = timesteps(batch_size)
    out = DDSConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)
    emb_src, emb_trg = embeddings(sd_prior, batch_size)
    expected = cfg_eps(sd_prior, noised(sd_prior, z_trg, noise, t), t, emb_trg, 7.5) - cfg_eps(
        sd_prior, noised(sd_prior, z_src, noise, t), t, emb_src, 7.5
    )
    assert_close(out.grad, expected, **TOL)


def test_dds_is_zero_for_identical_inputs(sd_prior):
    z_src, _, noise = make_latents(2)
    out = DDSConfig().setup(prior=sd_prior)(z_src, z_src, PROMPT_SRC, PROMPT_SRC, t=timesteps(2), noise=noise)
    assert_close(out.grad, torch.zeros_like(out.grad), atol=1e-5, rtol=0)


def test_ids_with_zero_fpr_iterations_equals_dds_exactly(sd_prior):
    z_src, z_trg, noise = make_latents(3)
    t = timesteps(3)
    dds = DDSConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)
    ids = IDSConfig(fpr_iters=0).setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)
    assert torch.equal(dds.grad, ids.grad)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ids_matches_algorithm_1(sd_prior, batch_size):
    z_src, z_trg, noise = make_latents(batch_size)
    t = timesteps(batch_size)
    out = IDSConfig(fpr_iters=2).setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)
    emb_src, emb_trg = embeddings(sd_prior, batch_size)
    z_t_src = hand_fpr(sd_prior, z_src, noise, t, emb_src, iters=2, scale=1.0)
    a = sd_prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_star = (z_t_src - a.sqrt() * z_src) / (1 - a).sqrt()
    z_t_trg = a.sqrt() * z_trg + (1 - a).sqrt() * eps_star
    expected = cfg_eps(sd_prior, z_t_trg, t, emb_trg, 7.5) - cfg_eps(sd_prior, z_t_src, t, emb_src, 7.5)
    assert_close(out.grad, expected, **TOL)
    assert out.extras["fpr_distance"].shape == (2, batch_size)


def test_fpr_samples_are_independent(sd_prior):
    """Per-sample distances: each sample's result is what it gets alone (the official batch norm couples them)."""
    z_src, z_trg, noise = make_latents(3)
    t = timesteps(3)
    guidance = IDSConfig().setup(prior=sd_prior)
    batched = guidance(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise).grad
    for i in range(3):
        alone = guidance(
            z_trg[i : i + 1], z_src[i : i + 1], PROMPT_TRG, PROMPT_SRC, t=t[i : i + 1], noise=noise[i : i + 1]
        ).grad
        assert_close(batched[i : i + 1], alone, **TOL)


def test_fpr_step_is_the_autograd_gradient_of_the_distance(sd_prior):
    z_src, t, emb_src, z_t, score = noised_sources(sd_prior)
    corrected, _ = fixed_point_regularization(score, z_t, z_src, t, sd_prior.alphas_cumprod, iters=1, scale=0.7)
    leaf = z_t.clone().requires_grad_(True)
    x0 = tweedie(sd_prior, leaf, cfg_eps(sd_prior, leaf, t, emb_src, 7.5), t)
    distance = (x0 - z_src).flatten(1).norm(dim=1).sum()
    (expected_step,) = torch.autograd.grad(distance, leaf)
    assert_close(corrected - z_t, -0.7 * expected_step, **TOL)


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_fpr_distance_decreases_over_iterations(sd_prior, distance):
    z_src, _, noise = make_latents(3)
    t = timesteps(3, (200, 350, 500))
    emb_src, _ = embeddings(sd_prior, 3)

    def score(z):
        return sd_prior.predict_noise(z, t, emb_src, 7.5)

    z_t = noised(sd_prior, z_src, noise, t)
    _, distances = fixed_point_regularization(
        score, z_t, z_src, t, sd_prior.alphas_cumprod, iters=4, scale=1.0, distance=distance
    )
    assert distances.shape == (4, 3)
    assert (distances[1:] < distances[:-1]).all(), distances


def test_fpr_l1_distance_matches_l2_for_a_uniform_residual():
    from ids_nerfstudio.guidance.fpr import fpr_distance

    x0 = torch.full((2, 4, 3, 5), 0.25)
    z = torch.zeros_like(x0)
    assert_close(fpr_distance(x0, z, "l1"), fpr_distance(x0, z, "l2"))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_pds_default_matches_the_official_update(sd_prior, batch_size):
    z_src, z_trg, noise, noise_prev, t = pds_inputs(batch_size)
    out = PDSConfig().setup(prior=sd_prior)(
        z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise, noise_prev=noise_prev
    )
    emb_src, emb_trg = embeddings(sd_prior, batch_size)
    expected = official_pds(sd_prior, z_trg, z_src, t, noise, noise_prev, emb_trg, emb_src)
    assert_close(out.grad, expected, rtol=1e-3, atol=1e-3)  # CFG 100 amplifies float32 rounding
    exact = PDSConfig(posterior="exact").setup(prior=sd_prior)(
        z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise, noise_prev=noise_prev
    )
    relative = (exact.grad - expected).norm() / expected.norm()
    assert relative > 0.1, f"the exact posterior should differ from the official update, got {relative:.3f}"


@pytest.mark.parametrize("batch_size", [1, 3])
def test_pds_exact_posterior_matches_formula(sd_prior, batch_size):
    z_src, z_trg, noise, noise_prev, t = pds_inputs(batch_size)
    out = PDSConfig(posterior="exact").setup(prior=sd_prior)(
        z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise, noise_prev=noise_prev
    )
    emb_src, emb_trg = embeddings(sd_prior, batch_size)
    ac = sd_prior.alphas_cumprod
    a_t, a_p = ac[t].view(-1, 1, 1, 1), ac[t - 2].view(-1, 1, 1, 1)
    beta = 1 - a_t / a_p
    sigma = ((1 - a_p) / (1 - a_t) * beta).sqrt()

    def stochastic_latent(z0, emb):
        x_t = noised(sd_prior, z0, noise, t)
        x0_hat = tweedie(sd_prior, x_t, cfg_eps(sd_prior, x_t, t, emb, 100.0), t)
        mu = a_p.sqrt() * beta / (1 - a_t) * x0_hat + (a_t / a_p).sqrt() * (1 - a_p) / (1 - a_t) * x_t
        x_prev = a_p.sqrt() * z0 + (1 - a_p).sqrt() * noise_prev
        return (x_prev - mu) / sigma

    expected = stochastic_latent(z_trg, emb_trg) - stochastic_latent(z_src, emb_src)
    assert_close(out.grad, expected, rtol=1e-3, atol=1e-3)  # CFG 100 amplifies float32 rounding


@pytest.mark.parametrize("posterior", ["official", "exact"])
def test_pds_is_chi_dds_plus_the_identity_term_psi(sd_prior, posterior):
    """PDS Eq. 14: grad = chi(t) delta_cfg100 + psi(t) (z_trg - z_src). With the exact posterior psi = 0 (PDS is a
    scaled DDS); with the official single-step beta_t psi is not 0 and carries the identity term."""
    z_src, z_trg, noise, noise_prev, t = pds_inputs(3)
    out = PDSConfig(posterior=posterior).setup(prior=sd_prior)(
        z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise, noise_prev=noise_prev
    )
    delta = DDSConfig(guidance_scale=100.0).setup(prior=sd_prior)(
        z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise
    ).grad
    ac = sd_prior.alphas_cumprod.double()
    a_t, a_p = ac[t].view(-1, 1, 1, 1), ac[t - 2].view(-1, 1, 1, 1)
    beta = 1 - (a_t / ac[t - 1].view(-1, 1, 1, 1) if posterior == "official" else a_t / a_p)
    c_x0, c_xt = a_p.sqrt() * beta / (1 - a_t), (1 - beta).sqrt() * (1 - a_p) / (1 - a_t)
    sigma = ((1 - a_p) / (1 - a_t) * beta).sqrt()
    chi = c_x0 * ((1 - a_t) / a_t).sqrt() / sigma
    psi = (a_p.sqrt() - c_x0 - c_xt * a_t.sqrt()) / sigma
    expected = chi * delta.double() + psi * (z_trg - z_src).double()
    assert_close(out.grad.double(), expected, rtol=1e-3, atol=1e-3)
    identity_term = (psi * (z_trg - z_src)).norm() / out.grad.norm()
    assert (identity_term > 0.05) if posterior == "official" else (identity_term < 1e-4), identity_term.item()


@pytest.mark.parametrize("posterior", ["official", "exact"])
def test_fpr_composes_with_both_pds_posteriors(sd_prior, posterior):
    z_src, z_trg, noise, noise_prev, t = pds_inputs(2)
    plain, with_fpr = (
        PDSConfig(posterior=posterior, fpr_iters=iters).setup(prior=sd_prior)(
            z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise, noise_prev=noise_prev
        )
        for iters in (0, 2)
    )
    assert with_fpr.extras["fpr_distance"].shape == (2, 2) and torch.isfinite(with_fpr.grad).all()
    assert not torch.allclose(plain.grad, with_fpr.grad), "FPR's eps* replaces the shared noise"


def test_pds_timesteps_lie_on_the_ddim_grid(sd_prior):
    guidance = PDSConfig().setup(prior=sd_prior)
    t = guidance.sample_timesteps(20_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert ((t - 1) % 2 == 0).all()
    assert t.min() == 21 and t.max() == 979, "official: grid indices 10..489 of 500, t = 2 i + 1"


@pytest.mark.parametrize(
    ("config", "low", "high"),
    [(DDSConfig(), 50, 948), (IDSConfig(), 50, 948), (CDSConfig(), 50, 948), (SDSConfig(), 20, 980),
     (CSDConfig(), 20, 500)],
)  # fmt: skip
def test_timestep_ranges_match_the_official_code(sd_prior, config, low, high):
    """Inclusive ranges: official DDS/IDS/CDS randint(50, 949), CSD-Edit randint(20, 501), SDS as threestudio."""
    guidance, generator = config.setup(prior=sd_prior), torch.Generator().manual_seed(0)
    if guidance.shares_timestep:  # one t per call: draw many calls of two particles
        t = torch.cat([guidance.sample_timesteps(2, torch.device("cpu"), generator) for _ in range(10_000)])
    else:
        t = guidance.sample_timesteps(20_000, torch.device("cpu"), generator)
    assert t.min() == low and t.max() == high


@pytest.mark.parametrize("batch_size", [1, 3])
def test_cds_matches_the_official_rows(sd_prior, batch_size):
    """As the official CDS: the reference is the source latent with the SOURCE prompt (the cond_src row of the
    DDS call), the target pass the target latent with the TARGET prompt (its cond row)."""
    # n_patches above the patch count: every patch is used, so the loss does not depend on the random ids
    config = CDSConfig(n_patches=10_000)
    z_src, z_trg, noise = make_latents(batch_size)
    t = timesteps(batch_size)
    out = config.setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)

    emb_src, emb_trg = embeddings(sd_prior, batch_size)
    delta = cfg_eps(sd_prior, noised(sd_prior, z_trg, noise, t), t, emb_trg, 7.5) - cfg_eps(
        sd_prior, noised(sd_prior, z_src, noise, t), t, emb_src, 7.5
    )
    cut_grad = hand_cut_grad(sd_prior, z_trg, z_src, noise, t, emb_src, emb_trg)
    assert_close(out.grad, delta + 3.0 * cut_grad, **TOL)
    assert_close(out.regularizer_grad, 3.0 * cut_grad, **TOL)
    assert out.extras["cut_loss"].shape == (batch_size,)
    # the unconditional rows (a plausible misreading) give a clearly different contrastive term: the test can tell
    null = sd_prior.null_embedding.expand(batch_size, -1, -1)
    old = hand_cut_grad(sd_prior, z_trg, z_src, noise, t, null, null)
    assert (old - cut_grad).norm() > 0.1 * cut_grad.norm()


def test_cds_features_are_captured_without_replacing_attention_processors(sd_prior):
    processors = dict(sd_prior.unet.attn_processors)
    z_src, z_trg, noise = make_latents(2, height=6, width=14)
    out = CDSConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, noise=noise)
    after = sd_prior.unet.attn_processors
    assert all(after[name] is processor for name, processor in processors.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in sd_prior.unet.modules()), "hooks left behind"
    assert torch.isfinite(out.extras["cut_loss"]).all() and out.extras["cut_loss"].shape == (2,)
    assert torch.isfinite(out.grad).all()


def test_csd_single_particle_is_the_weighted_per_view_delta(sd_prior):
    z_src, z_trg, noise = make_latents(1)
    t = timesteps(1)
    out = CSDConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)
    dds = DDSConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)
    assert_close(out.grad, (1 - sd_prior.alphas_cumprod[t]).view(-1, 1, 1, 1) * dds.grad, **TOL)


@pytest.mark.parametrize("identical", [False, True])
def test_csd_two_particles_give_no_nan(sd_prior, identical):
    z_src, z_trg, noise = make_latents(2)
    if identical:
        z_src, z_trg, noise = z_src[:1].repeat(2, 1, 1, 1), z_trg[:1].repeat(2, 1, 1, 1), noise[:1].repeat(2, 1, 1, 1)
    out = CSDConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, noise=noise)
    assert torch.isfinite(out.grad).all()
    assert out.t[0] == out.t[1], "particles share t"


def test_csd_repulsion_is_the_autograd_gradient_of_the_kernel():
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kernel, repulsion, h = rbf_kernel(x)
    leaf = x.clone().requires_grad_(True)
    # K(x_j, x_i) differentiated in its first argument only: the second argument is a detached copy
    k = torch.exp(-(leaf[:, None] - x[None]).pow(2).sum(-1) / h)  # h is a constant of the update
    for i in range(4):
        (grad_i,) = torch.autograd.grad(k[:, i].sum(), leaf, retain_graph=True)  # row j: grad_{x_j} K(x_j, x_i)
        assert_close(repulsion[i], -grad_i.sum(0))
    squared = torch.pdist(x).pow(2)
    assert_close(h, squared.median() / math.log(4))
    assert_close(kernel, k.detach())


def test_csd_three_particles_match_the_svgd_formula(sd_prior):
    z_src, z_trg, noise = make_latents(3)
    t = torch.full((3,), 400)
    out = CSDConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise)
    delta = DDSConfig().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise).grad
    x = noised(sd_prior, z_trg, noise, t).flatten(1).double()
    d2 = torch.stack([torch.stack([(x[i] - x[j]).pow(2).sum() for j in range(3)]) for i in range(3)])
    h = torch.stack([d2[0, 1], d2[0, 2], d2[1, 2]]).median() / math.log(3)
    expected = []
    for i in range(3):
        total = sum(torch.exp(-d2[j, i] / h) * (delta[j].flatten().double() + 2 / h * (x[j] - x[i])) for j in range(3))
        expected.append((1 - sd_prior.alphas_cumprod[400]) / 3 * total)
    assert_close(out.grad, torch.stack(expected).view_as(out.grad).float(), **TOL)


def test_csd_edit_uses_the_image_conditional_delta(ip2p_prior):
    prior = ip2p_prior
    z_src, z_trg, noise = make_latents(1)
    t = torch.tensor([300])
    out = CSDConfig().setup(prior=prior)(z_trg, z_src, "turn it into a dog", t=t, noise=noise)
    image = z_src / prior.vae.config.scaling_factor
    null = prior.null_embedding
    text = prior.encode_text(["turn it into a dog"])

    def eps(z, img, emb):
        return unet_eps(prior, torch.cat([z, img], dim=1), t, emb)

    z_t, src_t = noised(prior, z_trg, noise, t), noised(prior, z_src, noise, t)
    e00, e_i0, e_it = eps(z_t, torch.zeros_like(image), null), eps(z_t, image, null), eps(z_t, image, text)
    edit = e00 + 1.5 * (e_i0 - e00) + 7.5 * (e_it - e_i0)
    s00, s_i0 = eps(src_t, torch.zeros_like(image), null), eps(src_t, image, null)
    baseline = s00 + 1.5 * (s_i0 - s00)
    assert_close(out.grad, (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1) * (edit - baseline), **TOL)
