"""PDS's toy (PDS paper, Fig. 3): the real guidance rules on a 2-D class-conditional diffusion model.

Points of class a (cluster at (-1, 0), std 0.25) are edited toward class b (cluster at (1, 0)) by SGD, as the 2D
editor does (lr 0.1, 200 steps, score x 1). What each rule does there (benchmarks/pds_toy.py prints the numbers):
at CFG 1 SDS collapses every point onto b's mode, DDS (and IDS) translate each point by exactly the mode shift, and
PDS stops halfway, near the boundary of the two classes; at CFG 7.5 SDS overshoots past b's mode and collapses the
spread across the shift, DDS and IDS drift far past b, and PDS ends inside b.
"""

from __future__ import annotations

import pytest
import torch

from ids_nerfstudio.guidance import DDSConfig, IDSConfig, PDSConfig, SDSConfig
from ids_nerfstudio.image_editor import optimise_latent
from ids_nerfstudio.prior.toy import ToyPriorConfig

RULES = {"sds": SDSConfig, "dds": DDSConfig, "ids": IDSConfig, "pds": PDSConfig}


@pytest.fixture(scope="module")
def toy():
    prior = ToyPriorConfig().setup()  # about 7 s on one CPU thread
    return prior, prior.sample(0, 32, torch.Generator().manual_seed(1))


def edit(toy, rule, guidance_scale, **options):
    prior, z_src = toy
    guidance = RULES[rule](guidance_scale=guidance_scale, **options).setup(prior=prior)
    z = optimise_latent(guidance, z_src, "b", "a", steps=200, lr=0.1, grad_scale=1.0,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    return z.flatten(1), z_src.flatten(1)


@pytest.mark.parametrize("t", [100, 500, 900])
def test_toy_prior_learned_the_exact_score(toy, t):
    """The conditional eps-network against the exact eps of a Gaussian class: E[eps | x_t] =
    sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""
    prior, _ = toy
    for label, name in enumerate(("a", "b")):
        z0 = prior.sample(label, 256, torch.Generator().manual_seed(2))
        a = prior.alphas_cumprod[t]
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=torch.Generator().manual_seed(3))
        mu = prior.means[label].view(1, 2, 1, 1)
        exact = (1 - a).sqrt() * (z_t - a.sqrt() * mu) / (a * 0.25**2 + 1 - a)
        eps = prior.predict_noise(z_t, torch.full((256,), t), prior.encode_text([name] * 256), None)
        assert (eps - exact).pow(2).mean() < 0.01 * exact.pow(2).mean() + 1e-3, (name, t)


def test_at_cfg_1_sds_collapses_dds_translates_pds_stops_halfway(toy):
    mode_b, shift = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])
    sds, source = edit(toy, "sds", 1.0)
    assert (sds - mode_b).norm(dim=1).max() < 0.1  # every point on b's mode: the source's spread (0.25) is gone
    for rule in ("dds", "ids"):
        translated, _ = edit(toy, rule, 1.0)
        assert (translated - (source + shift)).norm(dim=1).max() < 0.1, rule  # each point moved by the mode shift
    pds, _ = edit(toy, "pds", 1.0)
    moved = (pds - source)[:, 0].mean()
    assert 0.5 < moved < 1.5  # about halfway (the classes' boundary is at x = 0)
    assert ((pds - source)[:, 1].abs() < 0.1).all()  # and along the shift only: the source's offsets are kept


def test_at_cfg_7_5_pds_ends_in_the_target_class_sds_overshoots_dds_and_ids_drift(toy):
    mode_b = torch.tensor([1.0, 0.0])
    pds, source = edit(toy, "pds", 7.5)
    sds, _ = edit(toy, "sds", 7.5)
    pds_error = (pds - mode_b).norm(dim=1).mean()
    sds_error = (sds - mode_b).norm(dim=1).mean()
    assert pds_error < 0.8  # inside b's cluster (a source point is 2 from b's mode)
    assert sds_error > pds_error + 1.0  # SDS overshoots past b's mode by more than a unit
    assert sds[:, 0].mean() > mode_b[0] + 1.0
    assert sds[:, 1].std() < 0.3 * source[:, 1].std()  # and collapses the spread across the shift
    assert pds[:, 1].std() > 0.7 * source[:, 1].std()  # PDS keeps it
    for rule in ("dds", "ids"):
        drifted, _ = edit(toy, rule, 7.5)
        assert drifted[:, 0].mean() > sds[:, 0].mean() + 1.0, rule  # past even SDS
