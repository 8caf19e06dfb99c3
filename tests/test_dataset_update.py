"""Dataset-update editing (editing/dataset_update.py) against independent references: diffusers' DDIMScheduler for
the SDEdit, the official refinement pipeline's schedule written out (itertools.cycle, every 10 steps, skip 16..18),
a CSD-Edit SGD loop written out, and a resumed ns-train run that must train on its edited images."""

from __future__ import annotations

import copy
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from helpers import EDIT, PROMPTS, cfg_eps, checkpoints, free_port, hand_fpr, ns_train, resumed_trainer, run

from ids_nerfstudio.editing.dataset_update import (
    DatasetUpdateConfig,
    DatasetUpdater,
    stage_generator,
    working_size,
)
from ids_nerfstudio.guidance.csd import CSDConfig
from ids_nerfstudio.guidance.sdedit import sdedit_grid
from ids_nerfstudio.images import load_image, to_tensor

PROMPT_TRG, PROMPT_SRC = "a photo of oranges", "a photo of balls"
VIEWS, SIZE = 5, 32


class FakeDataset:
    """Training views whose original images may be read (``readable``) or not (any read fails the test)."""

    def __init__(self, images: torch.Tensor, readable: bool = True) -> None:
        self.images, self.readable, self.reads = images, readable, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        if not self.readable:
            raise AssertionError(f"the source image of view {index} was read")
        self.reads += 1
        return {"image": self.images[index].permute(1, 2, 0)}


class FakeDataManager:
    """The data manager's side of a dataset update: the dataset and a cache of training images edited in place."""

    def __init__(self, images: torch.Tensor, readable: bool = True) -> None:
        self.train_dataset = FakeDataset(images, readable)
        self.trained_on = images.permute(0, 2, 3, 1).clone()

    def replace_train_image(self, index: int, image: torch.Tensor) -> None:
        self.trained_on[index] = image


def images(seed: int, count: int = VIEWS) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class CountingRenderer:
    """Renders of the views: fixed images; counts which views were rendered."""

    def __init__(self, renders: torch.Tensor) -> None:
        self.renders, self.calls = renders, []

    def __call__(self, indices: list[int]) -> torch.Tensor:
        self.calls.append(list(indices))
        return self.renders[indices]


@pytest.fixture
def sd_offset_prior(sd_prior):
    """The tiny prior with Stable Diffusion's steps_offset of 1 (the demo prior's is 0)."""
    components = sd_prior.components
    components.steps_offset = 1
    yield sd_prior
    components.steps_offset = 0


def reference_sdedit(prior, z_0, skip, noise, text, scale=15.0, correct=None):
    """PDS ``run_sdedit`` with diffusers' DDIMScheduler (SD's config: steps_offset 1, set_alpha_to_one False) and CFG
    written out with two UNet calls; ``correct(t_start)``, if given, is the start latent instead of the noised z_0."""
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                              set_alpha_to_one=False, clip_sample=False)  # fmt: skip
    scheduler.set_timesteps(20)
    S = 20 - skip
    t_start = list(reversed(scheduler.timesteps))[S - 1]
    x = scheduler.add_noise(z_0, noise, t_start) if correct is None else correct(t_start)
    for t in scheduler.timesteps[-S:]:
        eps = cfg_eps(prior, x, t.expand(len(x)), text, scale)
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x, int(t_start)


def test_sdedit_equals_a_ddim_loop_from_the_drawn_start_with_the_same_noise(sd_offset_prior):
    prior = sd_offset_prior
    updater = DatasetUpdater(DatasetUpdateConfig(mode="sdedit", size=SIZE), prior, None, None)
    renders = images(0, 2)
    for stage_step in (0, 10, 20):
        edited = updater.edit(renders, None, stage_step, PROMPT_TRG, PROMPT_SRC)
        generator = stage_generator(0, stage_step)  # the engine's draws, in its order: skip, then the noise
        skip = int(torch.randint(16, 19, (1,), generator=generator))
        with torch.no_grad():
            z_0 = prior.encode_images(renders)
            noise = torch.randn(z_0.shape, generator=generator)
            text = prior.encode_text([PROMPT_TRG] * 2)
            z, t_start = reference_sdedit(prior, z_0, skip, noise, text)
            expected = prior.decode_latents(z)
        assert t_start in (151, 101, 51)
        torch.testing.assert_close(edited, expected, atol=2e-5, rtol=1e-4)


def test_an_fpr_corrected_sdedit_runs_the_ddim_loop_from_the_hand_corrected_start(sd_offset_prior):
    """--pipeline.refinement.fpr-iters 2: IDS's Algorithm 1 (helpers.hand_fpr) on the noised start, with the
    SDEdit's own score (target prompt, CFG 15), then the same DDIM loop."""
    prior = sd_offset_prior
    config = DatasetUpdateConfig(mode="sdedit", size=SIZE, fpr_iters=2, fpr_scale=0.5)
    renders = images(0, 2)
    edited = DatasetUpdater(config, prior, None, None).edit(renders, None, 10, PROMPT_TRG, PROMPT_SRC)
    plain = DatasetUpdater(DatasetUpdateConfig(mode="sdedit", size=SIZE), prior, None, None)
    generator = stage_generator(0, 10)
    skip = int(torch.randint(16, 19, (1,), generator=generator))
    with torch.no_grad():
        z_0 = prior.encode_images(renders)
        noise = torch.randn(z_0.shape, generator=generator)
        text = prior.encode_text([PROMPT_TRG] * 2)

    def corrected(t_start):
        return hand_fpr(prior, z_0, noise, t_start.expand(2), text, iters=2, scale=0.5, scale_cfg=15.0)

    z, _ = reference_sdedit(prior, z_0, skip, noise, text, correct=corrected)
    with torch.no_grad():
        expected = prior.decode_latents(z)
    torch.testing.assert_close(edited, expected, atol=2e-5, rtol=1e-4)
    assert (edited - plain.edit(renders, None, 10, PROMPT_TRG, PROMPT_SRC)).abs().max() > 1e-3, "FPR moved the start"


def test_the_sdedit_grid_reads_the_priors_offset_and_starts_at_the_official_timesteps(sd_prior, sd_offset_prior):
    assert [int(sdedit_grid(sd_offset_prior, 20, skip)[0]) for skip in (16, 17, 18)] == [151, 101, 51]
    assert sdedit_grid(sd_offset_prior, 20, 16).tolist() == [151, 101, 51, 1]
    sd_offset_prior.components.steps_offset = 0  # the demo prior's scheduler
    assert [int(sdedit_grid(sd_prior, 20, skip)[0]) for skip in (16, 17, 18)] == [150, 100, 50]


def test_refinement_cycles_the_views_every_10_steps_and_draws_skips_16_to_18():
    """refinement_pipeline.py: ``cycle(range(N))``, one view (edit_count 1) when ``step % edit_rate == 0``."""
    updater = DatasetUpdater(DatasetUpdateConfig(mode="sdedit"), None, FakeDataManager(images(0)), None)
    order = itertools.cycle(range(VIEWS))
    expected = {step: [next(order)] if step % 10 == 0 else [] for step in range(200)}
    assert {step: updater.views_at(step) for step in range(200)} == expected
    skips = {int(torch.randint(16, 19, (1,), generator=stage_generator(0, s))) for s in range(0, 200, 10)}
    assert skips == {16, 17, 18}


def test_csd_updates_draw_16_views_without_replacement_every_2000_steps():
    updater = DatasetUpdater(DatasetUpdateConfig(mode="csd"), None, FakeDataManager(images(0, 24)), None)
    assert updater.views_at(1) == [] and updater.views_at(1999) == []
    first, second = updater.views_at(0), updater.views_at(2000)
    assert len(first) == len(set(first)) == 16 and len(set(second)) == 16 and first != second


def test_refinement_edits_only_the_renders_stored_at_its_start_never_the_source_images(sd_prior, tmp_path):
    datamanager = FakeDataManager(images(0), readable=False)
    renderer = CountingRenderer(images(1))
    updater = DatasetUpdater(DatasetUpdateConfig(mode="sdedit", size=SIZE), sd_prior, datamanager, renderer)
    updater.attach(tmp_path)
    for stage_step in range(0, 30):
        updater.update(stage_step, PROMPT_TRG, PROMPT_SRC)
        if stage_step % 10 == 0:
            renderer.renders = images(stage_step + 2)  # the scene moves on; the stored renders stay
    assert renderer.calls == [list(range(VIEWS))], "every view rendered once, at the stage's start"
    stored = images(1)
    for stage_step, view in ((0, 0), (10, 1), (20, 2)):
        expected = updater.edit(stored[[view]], None, stage_step, PROMPT_TRG, PROMPT_SRC)[0]
        torch.testing.assert_close(datamanager.trained_on[view], expected.permute(1, 2, 0))
        saved = to_tensor(load_image(tmp_path / "edited_images" / f"{view:05d}.png"))[0]
        assert (saved - expected).abs().max() <= 1 / 255 + 1e-6
    assert sorted(p.name for p in (tmp_path / "update_renders").iterdir()) == [f"{i:05d}.png" for i in range(VIEWS)]


@pytest.mark.parametrize("prior_name", ["sd_prior", "ip2p_prior"])
def test_the_joint_csd_update_equals_a_csd_edit_run_over_the_same_views(prior_name, request):
    """One CSD-Edit run, the views as SVGD particles, from their current renders; with InstructPix2Pix each view is
    conditioned on its own original image, with Stable Diffusion the originals are DDS's sources."""
    prior = request.getfixturevalue(prior_name)
    sources, renders = images(0), images(1)
    datamanager = FakeDataManager(sources)
    config = DatasetUpdateConfig(mode="csd", views_per_update=3, size=SIZE, csd_iterations=22, csd_lr_decay=0.5)
    assert (config.csd_lr, DatasetUpdateConfig().csd_lr_decay) == (2.0, 0.9), "the official CSD-Edit's schedule"
    updater = DatasetUpdater(config, prior, datamanager, CountingRenderer(renders))
    assert updater.update(0, PROMPT_TRG, PROMPT_SRC) == (views := updater.views_at(0))
    # the same edit written out: SGD on the latents of the views' renders, the unscaled CSD gradient, one t per
    # iteration for all particles, lr 2.0 halved after 20 iterations
    generator = stage_generator(0, 0)
    guidance = CSDConfig().setup(prior=prior)
    with torch.no_grad():
        z = prior.encode_images(renders[views])
        z_src = prior.encode_images(sources[views])
    for iteration in range(22):
        t = guidance.sample_timesteps(1, z.device, generator)
        out = guidance(z, z_src, PROMPT_TRG, PROMPT_SRC, t=t, generator=generator)
        z = z - (2.0 if iteration < 20 else 1.0) * out.grad
    expected = prior.decode_latents(z).detach()
    assert working_size(SIZE, SIZE, SIZE, prior.size_multiple) == (SIZE, SIZE)
    for row, view in enumerate(views):
        torch.testing.assert_close(datamanager.trained_on[view], expected[row].permute(1, 2, 0), atol=1e-5, rtol=1e-4)
    untouched = [i for i in range(VIEWS) if i not in views]
    assert torch.equal(datamanager.trained_on[untouched], sources[untouched].permute(0, 2, 3, 1))


def test_an_in2n_update_is_a_ddim_edit_of_the_current_render_conditioned_on_the_original(ip2p_prior):
    """instruct-nerf2nerf ip2p.edit_image: T ~ U[20, 980], a 20-step grid of stride T // 20 (steps_offset), three-way
    CFG (text 7.5, image 1.5) with the original image, DDIM eta 0 to alpha-bar 1 past the grid's end."""
    sources, renders = images(0), images(1)
    datamanager = FakeDataManager(sources)
    config = DatasetUpdateConfig(mode="in2n", size=SIZE)
    updater = DatasetUpdater(config, ip2p_prior, datamanager, CountingRenderer(renders))
    assert updater.update(10, PROMPT_TRG, PROMPT_SRC) == [1]
    generator = stage_generator(0, 10)
    t_big = int(torch.randint(20, 981, (1,), generator=generator))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=True)  # fmt: skip
    scheduler.config.num_train_timesteps = t_big  # as ip2p.edit_image does
    scheduler.set_timesteps(20)
    with torch.no_grad():
        z = ip2p_prior.encode_images(renders[[1]])
        image_cond = ip2p_prior.encode_images(sources[[1]])
        z = scheduler.add_noise(z, torch.randn(z.shape, generator=generator), scheduler.timesteps[0:1])
        text = ip2p_prior.encode_text([PROMPT_TRG])
        for t in scheduler.timesteps:
            eps = ip2p_prior.predict_noise(z, t[None], text, 7.5, image_cond=image_cond)
            z = scheduler.step(eps, t, z, eta=0.0).prev_sample
        expected = ip2p_prior.decode_latents(z)[0]
    torch.testing.assert_close(datamanager.trained_on[1], expected.permute(1, 2, 0), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------- nerfstudio runs

UPDATE = ["--pipeline.dataset-update.mode", "sdedit", "--pipeline.dataset-update.period", "1",
          "--pipeline.dataset-update.size", "16"]  # fmt: skip


@pytest.fixture(scope="module")
def update_run(workspace, scene):
    """`ns-train ids-edit` in dataset-update mode: 2 reconstruction steps, then 3 updates (one view each)."""
    output = workspace / "dataset-update"
    result = ns_train("ids-edit", scene, output, *PROMPTS, *EDIT, *UPDATE, "--reconstruction-steps", "2",
                      "--max-num-iterations", "3", "--steps-per-save", "1", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_a_dataset_update_run_writes_its_edits_beside_the_run_and_leaves_the_dataset(update_run, scene):
    (run_dir,) = {path.parent.parent for path in checkpoints(update_run)}
    assert sorted(p.name for p in (run_dir / "edited_images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert len(list((run_dir / "update_renders").iterdir())) == 6
    assert not list(scene.rglob("edited_images")), "nothing written into the dataset"


def test_a_resumed_dataset_update_run_trains_on_its_edited_images(update_run):
    trainer = resumed_trainer(update_run, 5)
    datamanager = trainer.pipeline.datamanager
    (run_dir,) = {path.parent.parent for path in checkpoints(update_run) if "in-process" not in str(path)}
    for view in range(3):
        saved = to_tensor(load_image(run_dir / "edited_images" / f"{view:05d}.png"))[0].permute(1, 2, 0)
        trained_on = datamanager.train_image(view)
        assert (trained_on - saved).abs().max() < 1e-6
        original = datamanager.train_dataset[view]["image"][..., :3].float()
        assert (trained_on - original).abs().mean() > 0.01, "the edit, not the original"
    assert (datamanager.train_image(4) - datamanager.train_dataset[4]["image"][..., :3]).abs().max() < 1e-6
    assert sorted(p.name for p in (trainer.base_dir / "edited_images").iterdir())[:3] == [
        "00000.png", "00001.png", "00002.png"]  # fmt: skip
    assert trainer.pipeline.update_stage(int(trainer.pipeline.edit_start_step) + 3) is not None


def test_the_working_size_keeps_the_short_side_as_pds_does():
    assert working_size(480, 640, 512, 8) == (512, 680)  # PDS: int(640 * 512 / 480) = 682, to a multiple of 8
    assert F.interpolate(torch.zeros(1, 3, 5, 7), size=(10, 14), mode="bilinear").shape[-2:] == (10, 14)


def test_refinement_steps_follow_the_edit_in_one_command(edit_run, workspace, scene):
    """--refinement-steps N after a finished edit (--load-dir): the refinement stage starts at the loaded step + 1."""
    (load_dir,) = {p.parent for p in checkpoints(edit_run) if "in-process" not in str(p)}
    output = workspace / "refined"
    result = ns_train("ids-edit", scene, output, *PROMPTS, *EDIT, "--load-dir", str(load_dir),
                      "--max-num-iterations", "2", "--refinement-steps", "2", "--pipeline.refinement.period", "1",
                      "--pipeline.refinement.size", "16", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = {path.parent.parent for path in checkpoints(output)}
    assert sorted(p.name for p in (run_dir / "edited_images").iterdir()) == ["00000.png", "00001.png"]
    assert len(list((run_dir / "refinement_renders").iterdir())) == 6, "every view rendered at the stage's start"
    assert not (run_dir / "update_renders").exists()
    state = torch.load(checkpoints(output)[-1], weights_only=False)
    assert int(state["pipeline"]["refine_start_step"]) == int(state["pipeline"]["edit_start_step"]) + 2
    assert state["step"] == int(state["pipeline"]["refine_start_step"]) + 1


@pytest.fixture(scope="module")
def splat_update_run(workspace, scene):
    """`ns-train ids-splat-edit-demo` with splatfacto's bilateral grid (its per-view appearance) on: 5 reconstruction
    steps, then 2 dataset updates (one view each)."""
    output = workspace / "splat-update"
    result = run([sys.executable, "-m", "nerfstudio.scripts.train", "ids-splat-edit-demo", "--data", str(scene),
                  "--output-dir", str(output), *PROMPTS, *EDIT, *UPDATE, "--machine.device-type", "cpu",
                  "--vis", "tensorboard", "--reconstruction-steps", "5", "--max-num-iterations", "2",
                  "--pipeline.model.use-bilateral-grid", "True"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_a_splat_dataset_update_trains_on_its_edited_images(splat_update_run):
    """splatfacto's FullImageDatamanager: the edit replaces ``cached_train[i]["image"]``, which ``next_train``
    serves; a resumed run reads the edits back."""
    output = splat_update_run
    trainer = resumed_trainer(output, 4)
    datamanager = trainer.pipeline.datamanager
    (run_dir,) = {path.parent.parent for path in checkpoints(output) if "in-process" not in str(path)}
    for view in range(2):
        saved = to_tensor(load_image(run_dir / "edited_images" / f"{view:05d}.png"))[0].permute(1, 2, 0)
        served = datamanager.cached_train[view]["image"].float() / 255
        assert (served - saved).abs().max() < 1e-6
        assert (served - datamanager.train_dataset[view]["image"][..., :3]).abs().mean() > 0.01
    # the update stage trains with each group's reconstruction rate (splats: means 1.6e-4, not one rate for all)
    trainer.start_updating(trainer.pipeline.updater, 0)
    rates = {group: trainer.optimizers.optimizers[group].param_groups[0]["lr"]
             for group in trainer.pipeline.model.edited_param_groups}  # fmt: skip
    assert rates["means"] == 1.6e-4 and rates["features_dc"] == trainer.config.optimizers["features_dc"]["optimizer"].lr


def refining_trainer(run: Path, output: Path):
    """An in-process trainer set up to refine the finished 2-step edit ``run`` (--load-dir, --refinement-steps 4,
    one view per step, 16 px SDEdits)."""
    import yaml

    (load_dir,) = {p.parent for p in checkpoints(run) if "in-process" not in str(p)}
    config = yaml.load((load_dir.parent / "config.yml").read_text(), Loader=yaml.Loader)
    config.load_dir, config.load_step, config.output_dir = load_dir, None, output
    config.max_num_iterations, config.refinement_steps = 2, 4
    config.pipeline.refinement.period, config.pipeline.refinement.size = 1, 16
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def assert_the_appearance_acts_only_when_on(model, parameter: torch.Tensor, shift: torch.Tensor, render) -> None:
    """In training mode, with the same random draws (seed 0: nerfacto's jittered samples, splatfacto's random
    background): moving the per-view appearance ``parameter`` by ``shift`` leaves ``render()["rgb"]`` as it is with
    the appearance off, and changes it with the appearance on. Leaves the appearance off."""

    def colours(off: bool, moved: bool) -> torch.Tensor:
        model.set_appearance_off(off)
        model.train()
        saved = parameter.detach().clone()
        torch.manual_seed(0)
        with torch.no_grad():
            parameter.add_(shift if moved else 0)
            rgb = render()["rgb"]
            parameter.copy_(saved)
        return rgb

    try:
        torch.testing.assert_close(colours(True, True), colours(True, False))
        assert (colours(False, True) - colours(False, False)).abs().max() > 1e-3, "the appearance does act when on"
    finally:
        model.set_appearance_off(True)


@pytest.fixture(scope="module")
def splat_refinement(splat_update_run, workspace):
    """An in-process trainer refining the finished splat run (--load-dir, --refinement-steps 4, one view per step)
    after the refinement's first 3 steps; the means' learning rate of each optimizer step, and the means' Adam step
    count before them (the loaded one)."""
    trainer = refining_trainer(splat_update_run, workspace / "splat-refining")
    means = trainer.optimizers.optimizers["means"]
    rates: list[float] = []
    means.register_step_pre_hook(lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"]))
    (parameter,) = means.param_groups[0]["params"]
    loaded_steps = float(means.state[parameter]["step"])
    start = int(trainer.pipeline.refine_start_step)
    for step in range(start, start + 3):
        trainer.train_iteration(step)
    return trainer, rates, loaded_steps


def test_the_splat_refinement_restarts_the_means_decay_and_keeps_adams_state(splat_refinement):
    """pds_config.py's pds_splat_refinement (load_scheduler=False): the means' own schedule, exponential decay from
    1.6e-4 toward 1.6e-6 over 30,000 steps, started afresh at the refinement's first step (no warm-up: the splat
    refinement has none); the loaded Adam state goes on."""
    trainer, rates, loaded_steps = splat_refinement

    def decay(k: int, lr: float = 1.6e-4, final: float = 1.6e-6, steps: int = 30000) -> float:
        return math.exp(math.log(lr) * (1 - k / steps) + math.log(final) * k / steps)  # nerfstudio's, written out

    assert rates == pytest.approx([decay(k) for k in range(3)], rel=1e-9)
    assert loaded_steps > 3, "the edit run's Adam state is loaded (its scheduler was at that many steps)"
    means = trainer.optimizers.optimizers["means"]
    (parameter,) = means.param_groups[0]["params"]
    assert float(means.state[parameter]["step"]) == loaded_steps + 3, "and goes on"


def test_the_splat_refinement_trains_without_the_bilateral_grid(splat_refinement):
    """splatfacto's per-view appearance is its bilateral grid: the refinement's training renders skip it (moving the
    grids changes nothing), while the edit's (appearance on) apply it (moving them changes the colours)."""
    trainer = splat_refinement[0]
    model = trainer.pipeline.model
    assert model.config.use_bilateral_grid and model.appearance_off
    camera, _ = trainer.pipeline.datamanager.next_train(0)
    assert "cam_idx" in camera.metadata
    grids = model.bil_grids.grids
    shift = 0.5 * torch.randn(grids.shape, generator=torch.Generator().manual_seed(0))

    assert_the_appearance_acts_only_when_on(model, grids, shift, lambda: model.get_outputs(copy.deepcopy(camera)))


# ----------------------------------------------------------------------------- the refinement's training setup


@pytest.fixture(scope="module")
def refinement(edit_run, workspace):
    """An in-process trainer refining the finished edit run (--load-dir, --refinement-steps 4, one view per step)
    after the refinement's first 3 steps; the learning rate of each optimizer step, the Adam step count of a trained
    parameter before them (the one loaded, and the checkpoint's), and that parameter."""
    trainer = refining_trainer(edit_run, workspace / "refining")
    seen = {group: [] for group in ("fields", "proposal_networks")}
    for group, rates in seen.items():
        optimizer = trainer.optimizers.optimizers[group]
        optimizer.register_step_pre_hook(lambda opt, args, kwargs, rates=rates: rates.append(opt.param_groups[0]["lr"]))
    fields = trainer.optimizers.optimizers["fields"]
    trained = trainer.pipeline.model.field.mlp_head.layers[0].weight
    index = next(i for i, p in enumerate(fields.param_groups[0]["params"]) if p is trained)
    loaded = torch.load(sorted(trainer.config.load_dir.glob("step-*.ckpt"))[-1], weights_only=False)
    saved = loaded["optimizers"]["fields"]["state"][index]["step"]
    adam_steps = (float(fields.state[trained]["step"]), float(saved))
    start = int(trainer.pipeline.refine_start_step)
    for step in range(start, start + 3):
        trainer.train_iteration(step)
    return trainer, seen, adam_steps, trained


def test_the_refinement_restarts_the_schedules_with_pds_warmup_and_keeps_adams_state(refinement):
    """pds_config.py's refinement: ExponentialDecaySchedulerConfig(lr_final=1e-3, warmup_steps=1000) on fields and
    proposal networks at lr 1e-2, started afresh (load_scheduler=False) over the loaded optimizers (Adam kept)."""
    trainer, seen, (adam_steps, saved_steps), trained = refinement

    def warmup(k: int, lr: float = 1e-2, pre: float = 1e-8, steps: int = 1000) -> float:
        return pre + (lr - pre) * math.sin(0.5 * math.pi * k / steps)  # nerfstudio's cosine ramp, written out

    for rates in seen.values():
        assert rates == pytest.approx([warmup(k) for k in range(3)], rel=1e-9, abs=1e-15)
    assert adam_steps == saved_steps > 0, "the edit's Adam state is loaded"
    assert float(trainer.optimizers.optimizers["fields"].state[trained]["step"]) == adam_steps + 3, "and goes on"


def test_a_resumed_refinement_goes_on_with_its_schedule(refinement):
    trainer = refinement[0]
    trainer.restart_schedulers({"fields": 1e-2}, stage_step=500)
    assert trainer.optimizers.optimizers["fields"].param_groups[0]["lr"] == pytest.approx(
        1e-8 + (1e-2 - 1e-8) * math.sin(0.25 * math.pi)
    )


def test_the_refinement_trains_without_per_view_appearance(refinement):
    """Training rays of the refinement render with one appearance: moving the per-view codes (their mean kept)
    changes nothing; with the appearance on (as while distilling, the codes frozen) it changes the colours."""
    trainer = refinement[0]
    model = trainer.pipeline.model
    assert model.appearance_off, "off once the refinement runs"
    ray_bundle, _ = trainer.pipeline.datamanager.next_train(0)
    rays = ray_bundle[:256]
    weight = model.field.embedding_appearance.embedding.weight
    shift = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    shift -= shift.mean(0)  # the average code stays

    assert_the_appearance_acts_only_when_on(model, weight, shift, lambda: model(rays))


def test_the_viewer_shows_the_edited_training_image_on_its_camera(refinement, monkeypatch, tmp_path):
    """nerfstudio's viewer draws each training camera's frustum with its image: a resumed run's loaded edits at
    start, and each new edit when it replaces its view (the frustum drawn again in place, still clickable)."""
    from nerfstudio.configs.base_config import ViewerConfig
    from nerfstudio.viewer.viewer import Viewer

    trainer = refinement[0]
    datamanager = trainer.pipeline.datamanager
    viewer = Viewer(ViewerConfig(websocket_host="127.0.0.1", websocket_port=free_port()),
                    log_filename=tmp_path / "viewer_log.txt", datapath=tmp_path, pipeline=trainer.pipeline,
                    trainer=trainer, train_lock=trainer.train_lock)  # fmt: skip
    drawn: dict[str, list] = {}
    add_frustum = viewer.viser_server.scene.add_camera_frustum

    def recording(name, **kwargs):
        drawn.setdefault(name, []).append(kwargs)
        return add_frustum(name=name, **kwargs)

    monkeypatch.setattr(viewer.viser_server.scene, "add_camera_frustum", recording)
    monkeypatch.setattr(trainer, "viewer_state", viewer, raising=False)
    monkeypatch.setattr(trainer.config, "vis", "viewer")

    def shown(view: int) -> torch.Tensor:
        return torch.from_numpy(drawn[f"/cameras/camera_{view:05d}"][-1]["image"]).float()

    def thumbnail_of(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(image.permute(2, 0, 1)[None], size=like.shape[:2], mode="bilinear")
        return resized[0].permute(1, 2, 0) * 255

    try:
        trainer._init_viewer_state()
        edited = trainer.pipeline.replaced_views()
        assert edited == [0, 1, 2], "the refinement's first three steps replaced views 0, 1, 2"
        for view in range(len(datamanager.train_dataset)):
            (first, *redrawn) = drawn[f"/cameras/camera_{view:05d}"]  # nerfstudio's, from the dataset image
            assert len(redrawn) == (view in edited)
            original = thumbnail_of(datamanager.train_dataset[view]["image"][..., :3], shown(view))
            current = thumbnail_of(datamanager.train_image(view), shown(view))
            assert (shown(view) - current).abs().max() <= 2
            if view in edited:
                assert (shown(view) - original).abs().mean() > 3, "the edit, not the dataset's image"
                assert redrawn[0]["position"] == pytest.approx(first["position"])
        before = viewer.camera_handles[3]
        trainer.train_iteration(int(trainer.pipeline.refine_start_step) + 3)  # replaces view 3
        assert len(drawn["/cameras/camera_00003"]) == 2 and viewer.camera_handles[3] is not before
        assert (shown(3) - thumbnail_of(datamanager.train_image(3), shown(3))).abs().max() <= 2
        assert (shown(3) - thumbnail_of(datamanager.train_dataset[3]["image"][..., :3], shown(3))).abs().mean() > 3
        assert viewer.camera_handles[3]._impl.click_cb, "clicking the camera still moves the view to it"
    finally:
        viewer.viser_server.stop()


# ------------------------------------------------------------------ CSD's re-initialised optimizer (App. B.3)

CSD_MODE = ["--pipeline.dataset-update.mode", "csd", "--pipeline.dataset-update.period", "1",
            "--pipeline.dataset-update.views-per-update", "2", "--pipeline.dataset-update.csd-iterations", "1",
            "--pipeline.dataset-update.size", "16"]  # fmt: skip


def adam_steps(optimizers: dict) -> dict[str, list[float]]:
    """Adam's step count of every parameter with a state, per optimizer group (a checkpoint's or a trainer's)."""
    return {group: sorted(float(state["step"]) for state in optimizer["state"].values())
            for group, optimizer in optimizers.items()}  # fmt: skip


def test_a_csd_update_starts_with_fresh_optimizers_and_a_resume_keeps_them(stock_run, scene, workspace):
    """From a stock nerfacto checkpoint (3 steps: Adam at step 3, schedulers at epoch 3) the csd mode's first stage
    step runs on new optimizers: Adam's state starts afresh (step 1 after it; the cameras, frozen while editing,
    have none), each scheduler from epoch 0; a resumed run goes on with that state (step 3 after its next step)."""
    loaded = torch.load(checkpoints(stock_run)[-1], weights_only=False)
    assert set(adam_steps(loaded["optimizers"])) == {"proposal_networks", "fields", "camera_opt"}
    assert all(steps and set(steps) == {3.0} for steps in adam_steps(loaded["optimizers"]).values())
    output = workspace / "csd-fresh-optimizers"
    result = ns_train("ids-edit", scene, output, *PROMPTS, *EDIT, *CSD_MODE, "--load-dir", str(stock_run),
                      "--max-num-iterations", "2", "--steps-per-save", "1", "--save-only-latest-checkpoint", "False",
                      tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (torch.load(path, weights_only=False) for path in checkpoints(output))
    assert (first["step"], second["step"]) == (3, 4) and int(first["pipeline"]["edit_start_step"]) == 3
    for state, steps in ((first, 1.0), (second, 2.0)):
        counts = adam_steps(state["optimizers"])
        assert counts["camera_opt"] == [], "the reconstruction's camera state is gone"
        assert counts["fields"] and set(counts["fields"]) == set(counts["proposal_networks"]) == {steps}
        assert {scheduler["last_epoch"] for scheduler in state["schedulers"].values()} == {steps}
    trainer = resumed_trainer(output, 3)  # the stage's step 2: no re-initialisation
    trainer.train_iteration(5)
    counts = adam_steps({group: optimizer.state_dict() for group, optimizer in trainer.optimizers.optimizers.items()})
    assert set(counts["fields"]) == set(counts["proposal_networks"]) == {3.0}
    assert trainer.optimizers.schedulers["fields"].last_epoch == 3


def test_csd_reconstructs_30000_steps_and_reinitialises_by_default_the_other_modes_do_not():
    from ids_nerfstudio.method_configs import ids_edit

    config = copy.deepcopy(ids_edit.config)
    assert config.reconstruction_steps is None and config.reconstruction_steps_resolved == 5000
    assert not config.pipeline.refinement.reinitialises_optimizers
    for mode, reinitialises in (("csd", True), ("in2n", False), ("sdedit", False)):
        assert DatasetUpdateConfig(mode=mode).reinitialises_optimizers is reinitialises
    config.pipeline.dataset_update.mode = "csd"
    assert config.reconstruction_steps_resolved == 30000
    config.reconstruction_steps = 100
    assert config.reconstruction_steps_resolved == 100
    assert DatasetUpdateConfig(mode="csd", reinitialise_optimizers=False).reinitialises_optimizers is False
