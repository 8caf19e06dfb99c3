"""Oracle tests: each guidance's grad equals its formula written out here with direct UNet calls."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import cfg_eps, make_latents, unet_eps
from torch.testing import assert_close

from ids_nerfstudio.guidance import (
    GUIDANCE_METHODS,
    CDSConfig,
    CSDConfig,
    DDSConfig,
    IDSConfig,
    PDSConfig,
    SDSConfig,
    fixed_point_regularization,
)
from ids_nerfstudio.guidance.csd import rbf_kernel

TOL = {"rtol": 1e-4, "atol": 1e-4}
PROMPT_SRC, PROMPT_TRG = "a photo of a cat", "a photo of a dog"


def timesteps(batch_size: int, values=(120, 480, 830)) -> torch.Tensor:
    return torch.tensor(values[:batch_size])


def embeddings(prior, batch_size):
    return prior.encode_text([PROMPT_SRC] * batch_size), prior.encode_text([PROMPT_TRG] * batch_size)


def noised(prior, z0, noise, t):
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def tweedie(prior, z_t, eps, t):
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    return (z_t - (1 - a).sqrt() * eps) / a.sqrt()


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


def hand_fpr(prior, z_src, noise, t, emb_src, iters, scale, scale_cfg=7.5):
    """Algorithm 1 of the IDS paper, one sample's norm at a time (per-sample distance)."""
    z_t = noised(prior, z_src, noise, t)
    for _ in range(iters):
        z_t = z_t.detach().requires_grad_(True)
        x0 = tweedie(prior, z_t, cfg_eps(prior, z_t, t, emb_src, scale_cfg), t)
        distance = sum(torch.linalg.vector_norm(x0[i] - z_src[i]) for i in range(z_t.shape[0]))
        (step,) = torch.autograd.grad(distance, z_t)
        z_t = z_t - scale * step
    return z_t.detach()


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


def noised_sources(prior):
    """Two source latents, noised at two timesteps, with the source score FPR corrects them by (CFG 7.5)."""
    z_src, _, noise = make_latents(2)
    t = timesteps(2)
    emb_src, _ = embeddings(prior, 2)
    return z_src, t, emb_src, noised(prior, z_src, noise, t), lambda z: prior.predict_noise(z, t, emb_src, 7.5)


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


def official_pds(prior, z_trg, z_src, t, noise, noise_prev, emb_trg, emb_src, scale=100.0):
    """PDS as the official code (KAIST-Visual-AI-Group/PDS, pds.py) computes it: per branch, CFG at 100 and the
    posterior of the single step beta_t = betas[t] (alpha_t = 1 - beta_t), for x_t' at t' = t - 2."""
    ac = prior.alphas_cumprod
    a_t, a_p = ac[t].view(-1, 1, 1, 1), ac[t - 2].view(-1, 1, 1, 1)
    beta_t = 1 - ac[t].double() / ac[t - 1].double()  # diffusers' betas[t], recovered from the schedule
    beta_t = beta_t.float().view(-1, 1, 1, 1)
    sigma = ((1 - a_p) / (1 - a_t) * beta_t).sqrt()

    def zt(z0, emb):
        x_t = noised(prior, z0, noise, t)
        pred_x0 = tweedie(prior, x_t, cfg_eps(prior, x_t, t, emb, scale), t)
        mu = a_p.sqrt() * beta_t / (1 - a_t) * pred_x0 + (1 - beta_t).sqrt() * (1 - a_p) / (1 - a_t) * x_t
        return (noised(prior, z0, noise_prev, t - 2) - mu) / sigma

    return zt(z_trg, emb_trg) - zt(z_src, emb_src)


def pds_inputs(batch_size):
    z_src, z_trg, noise = make_latents(batch_size)
    noise_prev = make_latents(batch_size, seed=7)[2]
    t = timesteps(batch_size, (121, 481, 831))  # on the 500-step DDIM grid (stride 2, offset 1)
    return z_src, z_trg, noise, noise_prev, t


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


def hand_patch_nce(ref, trg, temperature=0.07):
    """PatchNCE for one sample written as a loop: ref, trg are (P, C) normalised patches."""
    losses = []
    for i in range(ref.shape[0]):
        logits = [ref[i] @ trg[i]] + [ref[i] @ trg[j] if j != i else torch.tensor(-10.0) for j in range(ref.shape[0])]
        logits = torch.stack(logits) / temperature
        losses.append(-F.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


def up_attention_features(prior, z_t, t, emb):
    """Up-block attn1 outputs and their spatial sizes, recorded by hooks written here (not the library's)."""
    features, sizes = {}, {}
    handles = []
    for name, module in prior.unet.named_modules():
        if name.startswith("up_blocks") and name.endswith("attn1"):
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: features.__setitem__(n, o)))
    for name, module in prior.unet.named_modules():
        if name.startswith("up_blocks") and hasattr(module, "transformer_blocks"):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: sizes.__setitem__(n, a[0].shape[-2:])))
    unet_eps(prior, z_t, t, emb)
    for handle in handles:
        handle.remove()
    return features, {n: next(s for p, s in sizes.items() if n.startswith(p)) for n in features}


def hand_cut_grad(prior, z_trg, z_src, noise, t, emb_ref, emb_cur):
    """Gradient on z_trg of the summed per-sample PatchNCE between up-block attn1 features (every patch used)."""
    batch_size = z_trg.shape[0]
    ref, sizes = up_attention_features(prior, noised(prior, z_src, noise, t), t, emb_ref)
    leaf = z_trg.clone().requires_grad_(True)
    cur, _ = up_attention_features(prior, noised(prior, leaf, noise, t), t, emb_cur)
    total = 0
    for b in range(batch_size):
        for name in ref:
            h, w = sizes[name]
            r, c = (
                f[b].T.reshape(1, -1, h, w).detach() if f is ref[name] else f[b].T.reshape(1, -1, h, w)
                for f in (ref[name], cur[name])
            )
            for ps in (1, 2):
                rp, cp = (F.avg_pool2d(x, ps) if ps > 1 else x for x in (r, c))
                rp, cp = (F.normalize(x, dim=1)[0].flatten(1).T for x in (rp, cp))
                total = total + hand_patch_nce(rp.detach(), cp)
    return torch.autograd.grad(total, leaf)[0]


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


@pytest.mark.parametrize("name", sorted(GUIDANCE_METHODS))
def test_loss_backpropagates_to_grad_over_batch(sd_prior, name):
    z_src, z_trg, noise = make_latents(3)
    leaf = z_trg.clone().requires_grad_(True)
    guidance = GUIDANCE_METHODS[name].config(fpr_iters=1).setup(prior=sd_prior)
    out = guidance(leaf, z_src, PROMPT_TRG, PROMPT_SRC, noise=noise)
    out.loss.backward()
    assert_close(leaf.grad, out.grad / 3)
    assert out.grad.shape == z_trg.shape and torch.isfinite(out.grad).all()
    assert out.extras["fpr_distance"].shape == (1, 3), "FPR composes with every guidance"


def test_bad_inputs_raise_clear_errors(sd_prior):
    z_src, z_trg, _ = make_latents(2)
    guidance = DDSConfig().setup(prior=sd_prior)
    with pytest.raises(ValueError, match="one shape"):
        guidance(z_trg, z_src[:1], PROMPT_TRG, PROMPT_SRC)
    with pytest.raises(ValueError, match="prompt_trg: got 3 prompts for a batch of 2"):
        guidance(z_trg, z_src, [PROMPT_TRG] * 3, PROMPT_SRC)
    with pytest.raises(ValueError, match="t_min <= t_max"):
        DDSConfig(t_min=0.9, t_max=0.1).setup(prior=sd_prior)


def test_per_sample_prompts(sd_prior):
    """A list of prompts gives each sample its own prompt, the same as running the samples one by one."""
    z_src, z_trg, noise = make_latents(2)
    t = timesteps(2)
    guidance = DDSConfig().setup(prior=sd_prior)
    both = guidance(z_trg, z_src, ["a dog", "a pig"], PROMPT_SRC, t=t, noise=noise).grad
    second = guidance(z_trg[1:], z_src[1:], "a pig", PROMPT_SRC, t=t[1:], noise=noise[1:]).grad
    assert_close(both[1:], second, **TOL)


# ------------------------------------------------------------------------------------------ the call contract


def test_the_call_contract_refuses_what_a_rule_would_silently_drop(sd_prior):
    """A misspelt option is a TypeError, a second noise for a one-noise rule a ValueError; the config of the
    abstract base names no rule to build."""
    import inspect

    from ids_nerfstudio.guidance import GuidanceConfig, GuidanceInputs

    z_src, z_trg, noise = make_latents(1)
    dds = DDSConfig().setup(prior=sd_prior)
    with pytest.raises(TypeError, match="noise_prevv"):
        dds(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, noise_prevv=noise)
    with pytest.raises(ValueError, match="only PDS takes a second"):
        dds(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, noise_prev=noise)
    with pytest.raises(TypeError, match="_target"):
        GuidanceConfig()
    for method in GUIDANCE_METHODS.values():
        rule = method.config()._target
        parameters = list(inspect.signature(rule.compute_grad).parameters.values())
        assert [p.name for p in parameters] == ["self", "inputs"], rule  # no **kwargs that swallow options
        assert rule.compute_grad.__annotations__["inputs"] in ("GuidanceInputs", GuidanceInputs)


# ------------------------------------------------------------------------------- FPR on every guidance


def corrected_noise(prior, z_src, noise, t, source_score, iters=2, distance="l2"):
    """eps* = (z_t* - sqrt(a) z_src) / sqrt(1 - a) from ``fixed_point_regularization``'s z_t* (IDS Eq. 8)."""
    z_t = noised(prior, z_src, noise, t)
    z_star, _ = fixed_point_regularization(
        source_score, z_t, z_src, t, prior.alphas_cumprod, iters=iters, scale=1.0, distance=distance
    )
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    return (z_star - a.sqrt() * z_src) / (1 - a).sqrt()


def hand_dds(prior, z_trg, z_src, noise, t, emb_trg, emb_src, scale=7.5):
    return cfg_eps(prior, noised(prior, z_trg, noise, t), t, emb_trg, scale) - cfg_eps(
        prior, noised(prior, z_src, noise, t), t, emb_src, scale
    )


def hand_csd(prior, z_trg, delta, noise, t):
    """CSD's SVGD update over the batch written out (kernel on the noisy target latents, repelling term)."""
    n = z_trg.shape[0]
    x = noised(prior, z_trg, noise, t).flatten(1).double()
    d2 = torch.stack([torch.stack([(x[i] - x[j]).pow(2).sum() for j in range(n)]) for i in range(n)])
    if n > 1:
        h = d2[~torch.eye(n, dtype=torch.bool)].median() / math.log(n)
    else:
        h = torch.tensor(1.0, dtype=torch.float64)
    rows = []
    for i in range(n):
        total = sum(torch.exp(-d2[j, i] / h) * (delta[j].flatten().double() + 2 / h * (x[j] - x[i])) for j in range(n))
        rows.append((1 - prior.alphas_cumprod[t[i]]) / n * total)
    return torch.stack(rows).view_as(delta).float()


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("method", ["sds", "cds", "pds", "csd"])
def test_fpr_gives_each_guidance_its_own_formula_at_the_corrected_noise(sd_prior, method, batch_size):
    """IDS supplementary E: with FPR a rule is its own formula with the shared noise replaced by eps*, which the
    test computes from fixed_point_regularization's output with the rule's source score (CFG at its scale)."""
    z_src, z_trg, noise, noise_prev, t = pds_inputs(batch_size)
    if method == "csd":
        t = torch.full((batch_size,), 401)  # particles share t
    emb_src, emb_trg = embeddings(sd_prior, batch_size)
    configs = {"sds": SDSConfig, "cds": lambda **kw: CDSConfig(n_patches=10_000, **kw), "pds": PDSConfig,
               "csd": CSDConfig}  # fmt: skip
    config = configs[method](fpr_iters=2)
    scale = config.guidance_scale
    eps_star = corrected_noise(sd_prior, z_src, noise, t, lambda z: sd_prior.predict_noise(z, t, emb_src, scale))
    extra = {"noise_prev": noise_prev} if method == "pds" else {}
    out = config.setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise, **extra)

    if method == "sds":
        w = (1 - sd_prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
        expected = w * (cfg_eps(sd_prior, noised(sd_prior, z_trg, eps_star, t), t, emb_trg, scale) - eps_star)
    elif method == "cds":
        expected = hand_dds(sd_prior, z_trg, z_src, eps_star, t, emb_trg, emb_src) + 3.0 * hand_cut_grad(
            sd_prior, z_trg, z_src, eps_star, t, emb_src, emb_trg
        )
    elif method == "pds":
        expected = official_pds(sd_prior, z_trg, z_src, t, eps_star, noise_prev, emb_trg, emb_src)
    else:
        delta = hand_dds(sd_prior, z_trg, z_src, eps_star, t, emb_trg, emb_src)
        expected = hand_csd(sd_prior, z_trg, delta, eps_star, t)
    assert_close(out.grad, expected, **TOL)
    assert out.extras["fpr_distance"].shape == (2, batch_size)
    plain = configs[method]().setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise, **extra)
    assert (plain.grad - expected).norm() > 0.01 * expected.norm(), "eps* differs enough from eps to tell"


def test_fpr_l1_distance_is_the_l1_norm_for_a_non_uniform_residual(sd_prior):
    """On a residual that is not uniform the two distances, and FPR's steps with them, differ: an L2 implementation
    of l1 fails here."""
    from ids_nerfstudio.guidance.fpr import fpr_distance

    residual = torch.tensor([[3.0, -1.0, 0.0, 2.0]]).view(1, 1, 2, 2)
    assert_close(fpr_distance(residual, torch.zeros_like(residual), "l1"), torch.tensor([6.0 / 2.0]))
    assert_close(fpr_distance(residual, torch.zeros_like(residual), "l2"), torch.tensor([14.0**0.5]))

    z_src, t, emb_src, z_t, score = noised_sources(sd_prior)
    corrected, _ = fixed_point_regularization(
        score, z_t, z_src, t, sd_prior.alphas_cumprod, iters=1, scale=0.5, distance="l1"
    )
    leaf = z_t.clone().requires_grad_(True)
    x0 = tweedie(sd_prior, leaf, cfg_eps(sd_prior, leaf, t, emb_src, 7.5), t)
    numel = x0[0].numel()
    l1 = sum((x0[i] - z_src[i]).abs().sum() / numel**0.5 for i in range(2))
    (l1_step,) = torch.autograd.grad(l1, leaf, retain_graph=True)
    assert_close(corrected - z_t, -0.5 * l1_step, **TOL)
    l2 = sum(torch.linalg.vector_norm(x0[i] - z_src[i]) for i in range(2))
    (l2_step,) = torch.autograd.grad(l2, leaf)
    assert (l1_step - l2_step).norm() > 0.1 * l1_step.norm(), "the residual is far from uniform"


@pytest.fixture(scope="module")
def half_prior():
    """The tiny prior of ``sd_prior`` (same seed) in half precision: float16 on CUDA, bfloat16 on the CPU."""
    from ids_nerfstudio.prior import tiny_stable_diffusion

    cuda = torch.cuda.is_available()
    return tiny_stable_diffusion(seed=0, device="cuda" if cuda else "cpu", dtype="float16" if cuda else "bfloat16")


@pytest.mark.parametrize("name", sorted(GUIDANCE_METHODS))
def test_one_half_precision_step_of_every_guidance_follows_float32(sd_prior, half_prior, name):
    """The full methods run the UNet in float16 on CUDA. The guidance is a difference of two noise predictions, so
    it keeps fewer digits than either: bfloat16 (8-bit mantissa) measured 12-26 % relative error here, cosine
    0.97-0.99 and norm within 4 %; stated tolerance cosine >= 0.95, norm within 10 % (float16: cosine >= 0.99)."""
    z_src, z_trg, noise, noise_prev, t = pds_inputs(2)
    if name == "csd":
        t = torch.full((2,), 401)
    config = CDSConfig(n_patches=10_000) if name == "cds" else GUIDANCE_METHODS[name].config()
    extra = {"noise_prev": noise_prev} if name == "pds" else {}
    grads = []
    for prior in (sd_prior, half_prior):
        device = prior.device
        inputs = [x.to(device) for x in (z_trg, z_src)]
        draws = {key: value.to(device) for key, value in {"t": t, "noise": noise, **extra}.items()}
        out = config.setup(prior=prior)(*inputs, PROMPT_TRG, PROMPT_SRC, **draws)
        assert out.grad.dtype == torch.float32 and torch.isfinite(out.grad).all(), "latents keep their dtype"
        grads.append(out.grad.cpu())
    full, half = grads
    cosine = F.cosine_similarity(full.flatten(), half.flatten(), dim=0)
    assert cosine >= (0.99 if half_prior.dtype == torch.float16 else 0.95), float(cosine)
    assert 0.9 <= half.norm() / full.norm() <= 1.1
