"""Shared fixtures: tiny offline priors (fp32, CPU) and deterministic latents."""

from __future__ import annotations

import os

import pytest
import torch

from ids_nerfstudio.prior import tiny_instruct_pix2pix, tiny_stable_diffusion

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one pytest-xdist worker per core: each keeps to one thread, and so do the ns-train runs it starts
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sd_prior():
    prior = tiny_stable_diffusion(seed=0, device="cpu", dtype="float32")
    prior.components  # load once for the session  # noqa: B018
    return prior


@pytest.fixture(scope="session")
def ip2p_prior():
    prior = tiny_instruct_pix2pix(seed=1, device="cpu", dtype="float32")
    prior.components  # noqa: B018
    return prior


def make_latents(batch_size: int, height: int = 8, width: int = 12, seed: int = 0):
    """(z_src, z_trg, noise): a source latent, a nearby target latent and a noise draw, non-square."""
    generator = torch.Generator().manual_seed(seed)
    z_src = torch.randn(batch_size, 4, height, width, generator=generator)
    z_trg = z_src + 0.3 * torch.randn(batch_size, 4, height, width, generator=generator)
    noise = torch.randn(batch_size, 4, height, width, generator=generator)
    return z_src, z_trg, noise


def unet_eps(prior, z_t, t, text_emb):
    """A direct, unbatched-by-us UNet call: the independent reference for every formula test."""
    return prior.unet(z_t, t, encoder_hidden_states=text_emb).sample


def cfg_eps(prior, z_t, t, text_emb, scale):
    """Classifier-free guidance written out with two separate UNet calls."""
    uncond = unet_eps(prior, z_t, t, prior.null_embedding.expand(z_t.shape[0], -1, -1))
    cond = unet_eps(prior, z_t, t, text_emb)
    return uncond + scale * (cond - uncond)


def write_random_unet_demo(folder):
    """The control prior of the demo behaviour tests: the demo prior's diffusers folder with only the UNet replaced
    by a seeded random one of the same architecture. The VAE, text encoder, tokenizer and schedule are the demo's,
    so latents, prompts and the step per latent element are the same: a test that the demo prior passes and this
    fails measures what the UNet learned."""
    import shutil

    from diffusers import UNet2DConditionModel

    from ids_nerfstudio.model_names import DEMO_WEIGHTS

    shutil.copytree(DEMO_WEIGHTS / "diffusion", folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    unet.save_pretrained(folder / "unet")
    return folder


@pytest.fixture(scope="session")
def random_unet_demo(tmp_path_factory):
    """Folder of the demo prior with a random UNet (see ``write_random_unet_demo``)."""
    return write_random_unet_demo(tmp_path_factory.mktemp("control") / "demo-random-unet")


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory):
    """The demo scene of the behaviour tests of a scene edit: 12 views of 64 px."""
    from ids_nerfstudio.demo.scene import write_demo_scene

    return write_demo_scene(tmp_path_factory.mktemp("demo-scene") / "scene", size=64, views=12)


HEAVY_FIRST = ("test_demo_nerf.py", "test_nerf.py", "test_demo.py", "test_demo_splat.py", "test_splat.py")
"""The files whose module fixtures take longest, longest first: pytest-xdist hands out whole files (--dist
loadfile) in this order, so that no long file starts last."""


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
