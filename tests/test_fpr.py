"""FPR's options: the identity Jacobian (no UNet backward pass) and the SSIM distance, against hand-written forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from helpers import cfg_eps, make_latents
from torch import Tensor
from torch.testing import assert_close

from ids_nerfstudio.guidance import IDSConfig, PDSConfig, SDSConfig, fixed_point_regularization
from ids_nerfstudio.guidance.formulas import add_noise, per_sample
from ids_nerfstudio.guidance.fpr import fpr_distance, latent_ssim

TOL = {"rtol": 1e-4, "atol": 1e-4}
PROMPT_SRC, PROMPT_TRG = "a photo of a cat", "a photo of a dog"
T = torch.tensor([120, 480, 830])


def alpha(prior, t):
    return prior.alphas_cumprod[t].view(-1, 1, 1, 1)


def identity_fpr_by_hand(prior, z_src, noise, t, emb_src, iters, scale):
    """The identity-Jacobian FPR written out: eps held fixed, d x0/d z_t = 1/sqrt(a), the L2 norm's gradient."""
    a = alpha(prior, t)
    z_t = a.sqrt() * z_src + (1 - a).sqrt() * noise
    for _ in range(iters):
        x0 = (z_t - (1 - a).sqrt() * cfg_eps(prior, z_t, t, emb_src, 7.5)) / a.sqrt()
        residual = x0 - z_src
        unit = residual / residual.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        z_t = z_t - scale * unit / a.sqrt()
    return z_t


class BackwardCounter:
    """Counts backward passes through a UNet: a full backward hook on its last layer (every backward pass through
    the UNet starts there; the UNet itself returns a dataclass, which module backward hooks do not see)."""

    def __init__(self, unet):
        self.calls = 0
        self.handle = unet.conv_out.register_full_backward_hook(self.hook)

    def hook(self, *_):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


def test_identity_jacobian_ids_equals_its_closed_form(sd_prior):
    z_src, z_trg, noise = make_latents(3)
    emb_src, emb_trg = sd_prior.encode_text([PROMPT_SRC] * 3), sd_prior.encode_text([PROMPT_TRG] * 3)
    guidance = IDSConfig(fpr_iters=2, fpr_scale=0.7, fpr_jacobian="identity").setup(prior=sd_prior)
    out = guidance(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=T, noise=noise)
    z_t_src = identity_fpr_by_hand(sd_prior, z_src, noise, T, emb_src, iters=2, scale=0.7)
    a = alpha(sd_prior, T)
    eps_star = (z_t_src - a.sqrt() * z_src) / (1 - a).sqrt()
    z_t_trg = a.sqrt() * z_trg + (1 - a).sqrt() * eps_star
    expected = cfg_eps(sd_prior, z_t_trg, T, emb_trg, 7.5) - cfg_eps(sd_prior, z_t_src, T, emb_src, 7.5)
    assert_close(out.grad, expected, **TOL)
    exact = IDSConfig(fpr_iters=2, fpr_scale=0.7).setup(prior=sd_prior)(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=T,
                                                                       noise=noise)  # fmt: skip
    assert not torch.allclose(exact.grad, out.grad, **TOL)  # the UNet's Jacobian is not the identity


@pytest.mark.parametrize("config", [IDSConfig, SDSConfig, PDSConfig])
def test_identity_jacobian_runs_no_unet_backward_pass(sd_prior, config):
    z_src, z_trg, noise = make_latents(2)
    t = torch.tensor([301, 601])
    counts = {}
    for jacobian in ("exact", "identity"):
        guidance = config(fpr_iters=3, fpr_jacobian=jacobian).setup(prior=sd_prior)
        with BackwardCounter(sd_prior.unet) as counter:
            guidance(z_trg, z_src, PROMPT_TRG, PROMPT_SRC, t=t, noise=noise, noise_prev=None)
        counts[jacobian] = counter.calls
    assert counts == {"exact": 3, "identity": 0}


def test_identity_jacobian_reduces_the_distance(sd_prior):
    z_src, _, noise = make_latents(3)
    emb_src = sd_prior.encode_text([PROMPT_SRC] * 3)
    a = alpha(sd_prior, T)
    z_t = a.sqrt() * z_src + (1 - a).sqrt() * noise
    _, distances = fixed_point_regularization(
        lambda z: sd_prior.predict_noise(z, T, emb_src, 7.5), z_t, z_src, T, sd_prior.alphas_cumprod,
        iters=4, scale=0.5, jacobian="identity",
    )  # fmt: skip
    assert (distances[1:] < distances[:-1]).all(), distances


SD_ALPHAS = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod.float()
"""Stable Diffusion's alpha-bar (1 / sqrt(a) is about 11 at t = 948)."""


def linear_score(eps_slope: Tensor, bias: Tensor):
    """A linear "UNet": eps(z_t) = c_t z_t + b, per sample; c = 0 makes eps independent of z_t."""
    return lambda z_t: per_sample(eps_slope, z_t) * z_t + bias


@pytest.mark.parametrize("distance", ["l2", "l1", "ssim"])
def test_identity_jacobian_equals_exact_fpr_when_eps_does_not_depend_on_z_t(distance):
    """The identity Jacobian is exact for a noise prediction independent of z_t: the two must then agree."""
    z_src, bias, noise = make_latents(3, seed=1)
    t = torch.tensor([50, 480, 948])
    alphas = SD_ALPHAS
    z_t = add_noise(z_src, noise, t, alphas)
    score = linear_score(torch.zeros(3), bias)
    runs = {j: fixed_point_regularization(score, z_t, z_src, t, alphas, iters=3, scale=0.7, distance=distance,
                                          jacobian=j) for j in ("exact", "identity")}  # fmt: skip
    assert_close(runs["identity"][0], runs["exact"][0], **TOL)
    assert_close(runs["identity"][1], runs["exact"][1], **TOL)
    assert not torch.allclose(runs["exact"][0], z_t, **TOL), "FPR moved z_t"


def test_exact_fpr_step_is_the_linear_unets_jacobian_times_the_identity_step():
    """eps = c z_t + b: d x0 / d z_t = (1 - sqrt(1 - a) c) / sqrt(a), so one exact step is (1 - sqrt(1 - a) c) times
    the identity step (which drops c). At the Gaussian posterior's slope c = sqrt(1 - a) / (a s^2 + 1 - a) the factor
    is a s^2 / (a s^2 + 1 - a): near 0 at large t, where the identity step overshoots."""
    z_src, bias, noise = make_latents(3, seed=2)
    t = torch.tensor([50, 480, 948])
    alphas = SD_ALPHAS
    a = alphas[t]
    slope = (1 - a).sqrt() / (a + 1 - a)  # unit-variance data, s = 1
    z_t = add_noise(z_src, noise, t, alphas)
    steps = {}
    for jacobian in ("exact", "identity"):
        moved, _ = fixed_point_regularization(linear_score(slope, bias), z_t, z_src, t, alphas, iters=1, scale=1.0,
                                              jacobian=jacobian)  # fmt: skip
        steps[jacobian] = z_t - moved
    assert_close(steps["exact"], per_sample(1 - (1 - a).sqrt() * slope, z_t) * steps["identity"], **TOL)
    assert_close(per_sample(1 - (1 - a).sqrt() * slope, z_t).flatten(), a, **TOL)  # a s^2 / (a s^2 + 1 - a), s = 1
    # the identity step's length is lambda / sqrt(a) (11 at t = 948), the exact one's lambda sqrt(a) (0.09)
    lengths = steps["identity"].flatten(1).norm(dim=1)
    assert_close(lengths, 1 / a.sqrt(), **TOL)


def ssim_by_hand(x: np.ndarray, y: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Wang et al.'s SSIM of one sample (C, H, W), window by window, L = range of y, valid windows only."""
    size = min(window, x.shape[1], x.shape[2])
    size -= 1 - size % 2
    taps = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    w = np.outer(taps, taps) / taps.sum() ** 2
    data_range = y.max() - y.min()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                px, py = x[c, i : i + size, j : j + size], y[c, i : i + size, j : j + size]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cov = (w * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(2, 4, 13, 15), (1, 3, 6, 9), (2, 2, 1, 1)])
def test_ssim_distance_matches_a_hand_written_ssim(shape):
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(shape, generator=generator, dtype=torch.float64)
    x = y + 0.5 * torch.randn(shape, generator=generator, dtype=torch.float64)
    expected = [1 - ssim_by_hand(x[i].numpy(), y[i].numpy()) for i in range(shape[0])]
    assert_close(fpr_distance(x, y, "ssim"), torch.tensor(expected, dtype=torch.float64))
    assert_close(latent_ssim(y, y), torch.ones(shape[0], dtype=torch.float64))
    assert math.isclose(ssim_by_hand(y[0].numpy(), y[0].numpy()), 1.0)


def test_ssim_fpr_reduces_the_ssim_distance(sd_prior):
    z_src, _, noise = make_latents(3)
    emb_src = sd_prior.encode_text([PROMPT_SRC] * 3)
    a = alpha(sd_prior, T)
    z_t = a.sqrt() * z_src + (1 - a).sqrt() * noise
    _, distances = fixed_point_regularization(
        lambda z: sd_prior.predict_noise(z, T, emb_src, 7.5), z_t, z_src, T, sd_prior.alphas_cumprod,
        iters=3, scale=1.0, distance="ssim",
    )  # fmt: skip
    assert (distances[1:] < distances[:-1]).all(), distances
