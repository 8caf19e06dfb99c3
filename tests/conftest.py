"""Shared fixtures: tiny offline priors (fp32, CPU), the control prior, and the small scenes and runs of the scene
tests (session-scoped: each pytest-xdist worker builds a run once, for every file it is handed)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from helpers import (
    DEMO_EDIT_STEPS,
    DEMO_RECONSTRUCTION_STEPS,
    EDIT,
    PROMPTS,
    SMALL_NERFACTO,
    STOCK_NERFACTO,
    checkpoints,
    demo_ns_train,
    ns_train,
    resumed_trainer,
    run,
    write_random_unet_demo,
)  # fmt: skip

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


@pytest.fixture(scope="session")
def random_unet_demo(tmp_path_factory):
    """Folder of the demo prior with a random UNet (see ``write_random_unet_demo``)."""
    return write_random_unet_demo(tmp_path_factory.mktemp("control") / "demo-random-unet")


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory):
    """The demo scene of the behaviour tests of a scene edit: 12 views of 64 px."""
    from ids_nerfstudio.demo.scene import write_demo_scene

    return write_demo_scene(tmp_path_factory.mktemp("demo-scene") / "scene", size=64, views=12)


@pytest.fixture(scope="session")
def demo_reconstruction(tmp_path_factory, demo_scene):
    """config.yml of the demo scene's reconstruction (``ids-edit-demo`` with no editing steps)."""
    workspace = tmp_path_factory.mktemp("demo-reconstruction")
    return demo_ns_train("--data", demo_scene, "--output-dir", workspace / "reconstruction",
                         "--reconstruction-steps", DEMO_RECONSTRUCTION_STEPS, "--max-num-iterations", 0)  # fmt: skip


@pytest.fixture(scope="session")
def demo_edit(tmp_path_factory, demo_scene, demo_reconstruction):
    """config.yml of the demo edit (red ball -> blue ball, IDS, no mask) of that reconstruction."""
    workspace = tmp_path_factory.mktemp("demo-edit")
    return demo_ns_train("--data", demo_scene, "--load-dir", demo_reconstruction.parent / "nerfstudio_models",
                         "--max-num-iterations", DEMO_EDIT_STEPS, "--output-dir", workspace / "demo",
                         "--pipeline.prior.model", "demo")  # fmt: skip


HEAVY_FIRST = ("test_demo_nerf.py", "test_nerf_runs.py", "test_demo.py",
               "test_editing_step.py", "test_demo_splat.py", "test_splat.py", "test_scene_tools.py")  # fmt: skip
"""The files whose module fixtures take longest, longest first: pytest-xdist hands out whole files (--dist
loadfile) in this order, so that no long file starts last."""


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


# ------------------------------------------------------------ small nerfstudio runs shared by the scene tests


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """The folder of the small runs."""
    return tmp_path_factory.mktemp("nerf")


@pytest.fixture(scope="session")
def scene(workspace):
    """A tiny demo scene: 6 views of 24 px."""
    from ids_nerfstudio.demo.scene import write_demo_scene

    return write_demo_scene(workspace / "scene", size=24, views=6)


@pytest.fixture(scope="session")
def stock_run(workspace, scene):
    """A stock `ns-train nerfacto` run (nerfstudio's own model, data manager and optimizers)."""
    output = workspace / "stock"
    command = [sys.executable, "-c", STOCK_NERFACTO, "--data", str(scene), "--output-dir", str(output),
               "--max-num-iterations", "3", *SMALL_NERFACTO]  # fmt: skip
    result = run(command, tmp=workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = checkpoints(output)
    return checkpoint.parent


@pytest.fixture(scope="session")
def edit_run(workspace, scene):
    """`ns-train ids-edit` from images: 2 reconstruction steps, then 2 editing steps."""
    output = workspace / "ids"
    result = ns_train("ids-edit", scene, output, *PROMPTS, *EDIT, "--reconstruction-steps", "2",
                      "--max-num-iterations", "2", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="session")
def edit_pipeline(edit_run):
    """The edit run's pipeline, loaded in this process in training mode (with its training data loader)."""
    from nerfstudio.utils.eval_utils import eval_setup

    (config,) = edit_run.rglob("config.yml")
    _, pipeline, _, _ = eval_setup(config, test_mode="val")
    pipeline.train()
    return pipeline


@pytest.fixture(scope="session")
def edit_trainer(edit_run):
    """A trainer resumed from the edit run, set up in this process."""
    return resumed_trainer(edit_run, 1)
