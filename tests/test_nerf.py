"""The nerfstudio plugin end to end on the CPU, offline, with the tiny prior and a tiny demo scene."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("nerfstudio")

from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig  # noqa: E402
from nerfstudio.utils.eval_utils import eval_setup  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from ids_nerfstudio.demo.scene import write_demo_scene  # noqa: E402
from ids_nerfstudio.errors import UserError  # noqa: E402
from ids_nerfstudio.nerf.checkpoints import allow_nerfstudio_checkpoints  # noqa: E402
from ids_nerfstudio.nerf.render import backpropagate_rgb, render_rgb, view_rays  # noqa: E402

allow_nerfstudio_checkpoints()  # the tests read nerfstudio checkpoints with torch.load, as ns-render does

# a very small nerfacto so that a step takes a fraction of a second on a CPU
SMALL_NERFACTO = [
    "--pipeline.datamanager.train-num-rays-per-batch", "64", "--pipeline.datamanager.eval-num-rays-per-batch", "64",
    "--pipeline.model.num-nerf-samples-per-ray", "8", "--pipeline.model.num-proposal-samples-per-ray", "8", "8",
    "--pipeline.model.num-levels", "4", "--pipeline.model.max-res", "64", "--pipeline.model.log2-hashmap-size", "10",
    "--pipeline.model.hidden-dim", "16", "--pipeline.model.hidden-dim-color", "16",
    "--machine.device-type", "cpu", "--vis", "tensorboard",
]  # fmt: skip
EDIT = ["--pipeline.prior.model", "tiny", "--pipeline.render-size", "16"]
PROMPTS = ["--prompt-src", "a photo of balls", "--prompt-trg", "a photo of oranges"]

STOCK_NERFACTO = """
import sys
from ids_nerfstudio.nerf.model import lazy_lpips  # only LPIPS's AlexNet download is avoided: offline
from nerfstudio.scripts.train import entrypoint
sys.argv = ["ns-train", "nerfacto", *sys.argv[1:]]
with lazy_lpips():
    entrypoint()
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """A child process; ns-render finds its ffmpeg through the plugin (nerf/ffmpeg.py), whatever PATH has."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    kwargs.pop("tmp", None)
    kwargs.setdefault("timeout", 600)
    return subprocess.run(command, capture_output=True, text=True, env=env, **kwargs)


def ns_train(method: str, data: Path, output: Path, *extra: str, tmp: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nerfstudio.scripts.train", method, "--data", str(data),
               "--output-dir", str(output), *SMALL_NERFACTO, *extra]  # fmt: skip
    return run(command, tmp=tmp)


def checkpoints(output: Path) -> list[Path]:
    return sorted(output.rglob("step-*.ckpt"))


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.stem.split("-")[1])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("nerf")


@pytest.fixture(scope="module")
def scene(workspace):
    return write_demo_scene(workspace / "scene", size=24, views=6)


@pytest.fixture(scope="module")
def stock_run(workspace, scene):
    """A stock `ns-train nerfacto` run (nerfstudio's own model, data manager and optimizers)."""
    output = workspace / "stock"
    command = [sys.executable, "-c", STOCK_NERFACTO, "--data", str(scene), "--output-dir", str(output),
               "--max-num-iterations", "3", *SMALL_NERFACTO]  # fmt: skip
    result = run(command, tmp=workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = checkpoints(output)
    return checkpoint.parent


@pytest.fixture(scope="module")
def edit_run(workspace, scene):
    """`ns-train ids-edit` from images: 2 reconstruction steps, then 2 editing steps."""
    output = workspace / "ids"
    result = ns_train("ids-edit", scene, output, *PROMPTS, *EDIT, "--reconstruction-steps", "2",
                      "--max-num-iterations", "2", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_demo_scene_is_a_nerfstudio_dataset(scene, tmp_path):
    outputs = NerfstudioDataParserConfig(data=scene, eval_mode="all").setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) == 6
    transforms = json.loads((scene / "transforms.json").read_text())
    assert transforms["w"] == transforms["h"] == 24 and len(transforms["frames"]) == 6
    result = run([sys.executable, "-m", "ids_nerfstudio.scripts.demo_scene", str(scene)], tmp=tmp_path)
    assert result.returncode == 2 and "not an empty folder" in result.stderr


def test_ids_edit_from_images_then_render(edit_run, workspace):
    (checkpoint,) = checkpoints(edit_run)
    assert step_of(checkpoint) == 3, "2 reconstruction + 2 editing steps: the last step is 3"
    state = torch.load(checkpoint, map_location="cpu")  # weights_only=True, the torch default
    keys = list(state["pipeline"])
    assert int(state["pipeline"]["edit_start_step"]) == 2
    assert not any(word in key for key in keys for word in ("unet", "vae", "text_encoder", "prior")), keys
    assert set(state["optimizers"]) == {"proposal_networks", "fields", "camera_opt"}
    kept = torch.load(edit_run.rglob("reconstruction.ckpt").__next__())
    assert kept["step"] == 2 and set(kept) == {"step", "pipeline"}, "the state the edit started from, no optimizers"
    field = [key for key in kept["pipeline"] if "field." in key and "embedding_appearance" not in key]
    assert any(not torch.equal(kept["pipeline"][key], state["pipeline"][key]) for key in field), "before the edit"

    (config,) = edit_run.rglob("config.yml")
    _, pipeline, _, _ = eval_setup(config, test_mode="inference")
    assert not pipeline.prior.is_loaded, "loading an edit run for rendering never builds the diffusion model"

    video = workspace / "edit.mp4"
    result = run([sys.executable, "-m", "nerfstudio.scripts.render", "interpolate", "--load-config", str(config),
                  "--output-path", str(video), "--pose-source", "train", "--interpolation-steps", "1",
                  "--downscale-factor", "2"],
                 tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert video.stat().st_size > 0


def test_pds_edit_from_a_stock_nerfacto_run_counts_editing_steps(stock_run, scene, workspace):
    output = workspace / "pds"
    result = ns_train("pds-edit", scene, output, *PROMPTS, *EDIT, "--load-dir", str(stock_run),
                      "--max-num-iterations", "2", "--pipeline.guidance.fpr-iters", "1", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = checkpoints(output)
    assert step_of(checkpoint) == step_of(checkpoints(stock_run.parent)[0]) + 2
    assert not list(stock_run.parent.rglob("*.ckpt"))[1:], "nothing is written into the source run"


def test_an_edit_run_started_with_a_load_step_renders_from_its_own_checkpoint(stock_run, scene, workspace):
    source_step = step_of(checkpoints(stock_run)[0])
    output = workspace / "explicit-load-step"
    result = ns_train("dds-edit", scene, output, *PROMPTS, *EDIT, "--load-dir", str(stock_run),
                      "--load-step", str(source_step), "--max-num-iterations", "1", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (config,) = output.rglob("config.yml")
    _, _, checkpoint, step = eval_setup(config, test_mode="test")  # what ns-render and ns-viewer do
    assert step == source_step + 1 and checkpoint == checkpoints(output)[0], "its own step, not the source's"


def test_an_edit_run_resumes_from_its_own_checkpoint(edit_run, scene, workspace):
    load_dir = checkpoints(edit_run)[0].parent
    output = workspace / "resumed"
    result = ns_train("ids-edit", scene, output, *PROMPTS, *EDIT, "--load-dir", str(load_dir),
                      "--max-num-iterations", "4", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = checkpoints(output)
    # editing started at step 2 in the first run: 4 editing steps in all end at step 5, not 4 more
    assert step_of(checkpoint) == 5
    assert int(torch.load(checkpoint)["pipeline"]["edit_start_step"]) == 2
    (kept,) = output.rglob("reconstruction.ckpt")
    assert kept.read_bytes() == next(edit_run.rglob("reconstruction.ckpt")).read_bytes(), "the source run's, copied"


def test_a_resume_whose_editing_steps_are_all_taken_says_so_in_one_line_and_writes_nothing(edit_run, scene, workspace):
    load_dir = checkpoints(edit_run)[0].parent  # editing started at step 2; saved at step 3
    output = workspace / "nothing-to-do"
    result = ns_train("ids-edit", scene, output, *PROMPTS, *EDIT, "--load-dir", str(load_dir),
                      "--max-num-iterations", "2", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if "nothing to do" in line]
    assert line == (
        f"ns-train: nothing to do: {load_dir} has taken 2 editing steps (steps 2..3) and --max-num-iterations 2 "
        "counts every editing step of the run; raise it to go on"
    )
    assert result.stdout.rstrip().endswith(line), "the last word"
    assert "Traceback" not in result.stderr and not output.exists()


def test_a_long_prompt_is_said_to_be_cut_before_training(scene, tmp_path):
    long_target = "a photo of " + "a very orange orange " * 16
    result = ns_train("ids-edit", scene, tmp_path / "out", "--prompt-src", "a photo of balls", "--prompt-trg",
                      long_target, *EDIT, "--reconstruction-steps", "0", "--max-num-iterations", "1",
                      tmp=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [line for line in result.stdout.splitlines() if "is cut" in line]
    assert "over the text encoder's 77" in line and "orange" in line.split("77:")[1]
    assert result.stdout.index("is cut") < result.stdout.index("Editing steps"), "said before training"


def interrupted_run(
    scene: Path, output: Path, signals: list[int], steps_per_save: int
) -> tuple[subprocess.CompletedProcess, Path]:
    """An endless ``ns-train ids-edit`` saving every ``steps_per_save`` steps, sent ``signals`` once it is editing."""
    import time

    command = [sys.executable, "-m", "nerfstudio.scripts.train", "ids-edit", "--data", str(scene),
               "--output-dir", str(output), *SMALL_NERFACTO, *PROMPTS, *EDIT, "--reconstruction-steps", "2",
               "--max-num-iterations", "100000", "--steps-per-save", str(steps_per_save)]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    lines = []
    for line in child.stdout:  # the trainer's setup says when editing starts
        lines.append(line)
        if line.startswith("Editing steps"):
            break
    time.sleep(4)  # a few editing steps
    for signum in signals:
        child.send_signal(signum)
        time.sleep(0.02)
    out, err = child.communicate(timeout=300)
    return subprocess.CompletedProcess(command, child.returncode, "".join(lines) + out, err), output


def test_ctrl_c_saves_the_newest_step_and_prints_the_command_that_goes_on(scene, workspace):
    import signal

    result, output = interrupted_run(scene, workspace / "ctrl-c", [signal.SIGINT], steps_per_save=100000)  # no save
    assert result.returncode == 130, result.stderr[-3000:]
    (checkpoint,) = checkpoints(output)
    assert step_of(checkpoint) >= 2 and torch.load(checkpoint)["step"] == step_of(checkpoint), "an editing step, whole"
    message = result.stdout[result.stdout.index("Interrupted"):].splitlines()
    assert message[0] == f"Interrupted: saved step {step_of(checkpoint)} to {checkpoint.parent}. To go on:"
    assert message[1].startswith("ns-train ids-edit --data") and message[1].endswith(f"--load-dir {checkpoint.parent}")
    assert "Traceback" not in result.stdout + result.stderr


def test_sigterm_saves_too_and_a_second_signal_leaves_at_once_with_whole_checkpoints(scene, workspace):
    import signal

    result, output = interrupted_run(scene, workspace / "sigterm", [signal.SIGTERM, signal.SIGINT], steps_per_save=1)
    assert result.returncode == 130, result.stderr[-3000:]
    saved = checkpoints(output)
    assert saved and all(torch.load(path)["step"] == step_of(path) for path in saved), "every checkpoint is whole"
    assert {p.name for p in saved[0].parent.iterdir()} == {p.name for p in saved}, "nothing else in the folder"


@pytest.mark.parametrize("method", ["dds-edit", "cds-edit", "sds-edit", "csd-edit"])
def test_every_method_runs_an_editing_step(method, stock_run, scene, workspace):
    output = workspace / method
    result = ns_train(method, scene, output, *PROMPTS, *EDIT, "--load-dir", str(stock_run),
                      "--max-num-iterations", "1", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first = step_of(checkpoints(stock_run)[0]) + 1
    (checkpoint,) = checkpoints(output)
    assert step_of(checkpoint) == first and torch.load(checkpoint)["step"] == first, "one editing step was saved"
    source, edited = torch.load(checkpoints(stock_run)[0])["pipeline"], torch.load(checkpoint)["pipeline"]
    field = [key for key in source if "field." in key and "embedding_appearance" not in key]
    assert field and any(not torch.equal(source[key], edited[key]) for key in field), "the step changed the field"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt-trg", "x"], "--data is required"),
        (["--prompt-trg", "  ", "--data", "{scene}"], "--prompt-trg is empty"),
        (["--prompt-trg", "x", "--data", "{scene}", "--load-dir", "{scene}"], "holds no step-*.ckpt"),
        (["--prompt-trg", "x", "--data", "{scene}", "--pipeline.prior.model", "/no/such/model"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_errors_and_writes_nothing(args, message, scene, tmp_path):
    output = tmp_path / "out"
    args = [a.replace("{scene}", str(scene)) for a in args]
    command = [sys.executable, "-m", "nerfstudio.scripts.train", "ids-edit", "--output-dir", str(output),
               "--reconstruction-steps", "0", *SMALL_NERFACTO, *args]  # fmt: skip
    result = run(command, tmp=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    if "prior" not in " ".join(args):
        assert not output.exists(), "bad input writes nothing"


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (dict(source="/no/masks"), "/no/masks: not a folder"),
        (dict(source="{scene}"), "no mask for frame_00000.png"),
        (dict(source="{masks}"), r"the mask .*frame_00001.png is \(12, 12\) \(width, height\), its image \(24, 24\)"),
        (dict(source="dataset"), "have no mask_path"),
        (dict(source="auto", threshold=2.0), "--pipeline.mask.threshold"),
    ],
)
def test_bad_masks_are_named_by_the_trainers_check(mask, message, scene, tmp_path):
    """In process: ns-train's check (its one-line printing is the bad-input test's above)."""
    from PIL import Image

    from ids_nerfstudio.method_configs import METHOD_SPECIFICATIONS

    for k in range(6):
        Image.new("L", (24 if k == 0 else 12, 24 if k == 0 else 12)).save(tmp_path / f"frame_{k:05d}.png")
    config = copy.deepcopy(METHOD_SPECIFICATIONS["ids-edit"].config)
    config.data, config.pipeline.prompt_trg, config.machine.device_type = scene, "x", "cpu"
    for name, value in mask.items():
        setattr(config.pipeline.mask, name, value.format(scene=scene, masks=tmp_path) if name == "source" else value)
    with pytest.raises(UserError, match=message):
        config.validate()


def test_identical_prompts_warn(scene, tmp_path):
    result = ns_train("ids-edit", scene, tmp_path / "out", "--prompt-src", "x", "--prompt-trg", "x", *EDIT,
                      "--reconstruction-steps", "0", "--max-num-iterations", "1", tmp=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the edit is a no-op" in result.stdout


# ----------------------------------------------------------------------------------------- in-process tests


@pytest.fixture(scope="module")
def edit_pipeline(edit_run):
    """The edit run's pipeline, loaded in this process in training mode (with its training data loader)."""
    (config,) = edit_run.rglob("config.yml")
    _, pipeline, _, _ = eval_setup(config, test_mode="val")
    pipeline.train()
    return pipeline


def test_deferred_backpropagation_equals_the_full_graph(edit_pipeline):
    model = edit_pipeline.model
    camera = edit_pipeline.datamanager.train_dataset.cameras[0:1]
    rays = view_rays(camera, 0)
    height, width = rays.shape
    rgb_grad = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(0))
    parameters = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    rgb = render_rgb(model, rays, chunk_size=97, seed=5, graph=True)
    rgb.backward(rgb_grad)
    full = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in parameters]

    model.zero_grad()
    no_graph = render_rgb(model, rays, chunk_size=97, seed=5, graph=False)
    assert not no_graph.requires_grad
    assert_close(no_graph, rgb.detach())
    backpropagate_rgb(model, rays, rgb_grad, chunk_size=97, seed=5)
    deferred = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in parameters]
    assert any(g.abs().sum() > 0 for g in full)
    for a, b in zip(full, deferred, strict=True):
        assert_close(a, b, rtol=1e-4, atol=1e-6)


def resumed_trainer(run: Path, max_num_iterations: int):
    """A trainer resumed from a run's checkpoint (as --load-dir does), set up in this process."""
    import yaml

    (config_path,) = run.rglob("config.yml")
    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    config.load_dir = checkpoints(run)[0].parent
    config.output_dir = run / "in-process"
    config.max_num_iterations = max_num_iterations
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


@pytest.fixture(scope="module")
def edit_trainer(edit_run):
    """A trainer resumed from the edit run, set up in this process."""
    return resumed_trainer(edit_run, 1)


def test_a_non_finite_guidance_gradient_skips_the_step(edit_trainer, monkeypatch):
    trainer = edit_trainer
    original = trainer.pipeline.guidance.forward

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        out.grad[0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(trainer.pipeline.guidance, "forward", poisoned)
    before = {k: v.clone() for k, v in trainer.pipeline.model.state_dict().items()}
    with pytest.warns(UserWarning, match="non-finite guidance gradient"):
        trainer.train_iteration(int(trainer.pipeline.edit_start_step) + 2)
    after = trainer.pipeline.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "fields unchanged"


def test_stock_checkpoints_load_with_weights_only_thanks_to_the_numpy_allow_list(stock_run, tmp_path):
    checkpoint = checkpoints(stock_run)[0]
    load = f"import torch; torch.load({str(checkpoint)!r}, map_location='cpu', weights_only=True)"
    without = run([sys.executable, "-c", load], tmp=tmp_path)
    assert without.returncode != 0 and "Weights only load failed" in without.stderr, "the problem is real"
    allow = "from ids_nerfstudio.nerf.checkpoints import allow_nerfstudio_checkpoints; allow_nerfstudio_checkpoints()"
    with_plugin = run([sys.executable, "-c", f"{allow}; {load}"], tmp=tmp_path)
    assert with_plugin.returncode == 0, with_plugin.stderr[-2000:]


def _edit_step_grads(pipeline, step, render_mode):
    """Parameter gradients of one editing step, with the view and guidance draws reset to the same seeds."""
    pipeline.config.render_mode = render_mode
    pipeline.datamanager._view_generator.manual_seed(0)
    pipeline.datamanager._current = []
    pipeline.generator.manual_seed(0)
    pipeline.model.zero_grad()
    torch.manual_seed(0)  # the regularizer ray batch
    assert pipeline.edit_step(step) is not None
    return {name: p.grad.clone() for name, p in pipeline.model.named_parameters() if p.grad is not None}


def test_pipeline_edit_step_is_the_same_with_deferred_and_full_graph_rendering(edit_pipeline):
    edit_pipeline.model.set_editing(True)
    step = int(edit_pipeline.edit_start_step) + 7
    full = _edit_step_grads(edit_pipeline, step, "full-graph")
    deferred = _edit_step_grads(edit_pipeline, step, "deferred")
    assert full.keys() == deferred.keys() and any(g.abs().sum() > 0 for g in full.values())
    for name in full:
        assert_close(deferred[name], full[name], rtol=1e-3, atol=1e-6, msg=name)
    assert not any("camera_optimizer" in name or "embedding_appearance" in name for name in full), "frozen"


def fixed_guidance(seen: dict):
    """A guidance stand-in that returns a fixed, seeded gradient and records the source latents it was given."""
    from ids_nerfstudio.guidance import GuidanceOutput
    from ids_nerfstudio.guidance.formulas import guidance_loss

    def forward(z_trg, z_src, prompt_trg, prompt_src, **_):
        grad = torch.randn(z_trg.shape, generator=torch.Generator().manual_seed(1)) * seen.get("scale", 1.0)
        seen.update(z_src=z_src.detach().clone(), grad=grad)
        return GuidanceOutput(grad=grad, loss=guidance_loss(z_trg, grad), t=torch.zeros(len(z_trg), dtype=torch.long))

    return forward


def parameter_grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_one_editing_step_applies_weight_times_grad_over_numel_through_the_encoder_and_render_of_each_view(
    edit_pipeline, monkeypatch
):
    """For a fixed guidance output G, the step's parameter gradients are those of
    ``weight / numel(G_k) * sum_k <G_k, E(R(view_k))>`` written out here (R: one full-graph render of view k at the
    guidance size, E: the VAE encoder), each view paired with its own source latent, deferred and full-graph.
    The model is in eval mode so that ray sampling has no jitter and the test's own render sees the same samples."""
    pipeline, model = edit_pipeline, edit_pipeline.model
    dataset = pipeline.datamanager.train_dataset
    seen: dict = {}
    monkeypatch.setattr(pipeline.guidance, "forward", fixed_guidance(seen))
    monkeypatch.setattr(pipeline.config, "regularizer_rays", 0)
    monkeypatch.setattr(pipeline.config, "guidance_weight", 0.7)
    monkeypatch.setattr(pipeline.config, "render_size", 12)  # the 24 px views at exactly half size
    monkeypatch.setattr(pipeline.datamanager.config, "views_per_step", 2)
    model.set_editing(True)
    model.eval()
    try:
        results = {}
        for mode in ("deferred", "full-graph"):
            monkeypatch.setattr(pipeline.config, "render_mode", mode)
            pipeline.datamanager._view_generator.manual_seed(0)  # the same two views in both modes
            pipeline.datamanager._current = []
            model.zero_grad()
            assert pipeline.edit_step(int(pipeline.edit_start_step) + 3) is not None
            results[mode] = (list(pipeline.datamanager._current), parameter_grads(model), seen["z_src"], seen["grad"])

        indices, _, z_src, grad = results["deferred"]
        assert len(set(indices)) == 2 and results["full-graph"][0] == indices
        prior = pipeline.prior
        sources = [F.interpolate(dataset[i]["image"][..., :3].permute(2, 0, 1)[None].float(), size=(12, 12),
                                 mode="bilinear", antialias=True) for i in indices]  # fmt: skip
        with torch.no_grad():
            assert_close(z_src, prior.encode_images(torch.cat(sources)), msg="each view with its own source latent")

        model.zero_grad()
        renders = []
        for i in indices:
            camera = copy.deepcopy(dataset.cameras[i : i + 1])
            camera.rescale_output_resolution(0.5)
            rays = camera.generate_rays(camera_indices=0, keep_shape=True)
            renders.append(model(rays.flatten())["rgb"].view(12, 12, 3))
        # (B, H, W, 3) memory as rendered: the VAE's CPU kernels round differently for another layout (~1e-4)
        latents = prior.encode_images(torch.stack(renders).permute(0, 3, 1, 2))
        (0.7 / grad[0].numel() * (grad * latents).sum()).backward()
        expected = parameter_grads(model)
        assert expected and any(g.abs().sum() > 0 for g in expected.values())
        for mode, (_, grads, _, _) in results.items():
            assert grads.keys() == expected.keys(), mode
            for name in expected:
                error = (grads[name] - expected[name]).norm() / expected[name].norm().clamp(min=1e-12)
                assert error < 1e-3, f"{mode}: {name}: relative error {float(error):.2e}"
    finally:
        model.train()


def nerfacto_losses_of_the_first_rays(pipeline, step: int, count: int):
    """nerfstudio's own outputs and get_loss_dict on the first ``count`` rays of the step's training batch (drawn
    under seed 0, as the tests draw the step's), with the model's gradients zeroed first."""
    pipeline.model.zero_grad()
    torch.manual_seed(0)
    ray_bundle, batch = pipeline.datamanager.next_train(step)
    batch = {key: value[:count] if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    outputs = pipeline.model(ray_bundle[:count])
    return outputs, batch, pipeline.model.get_loss_dict(outputs, batch, pipeline.model.get_metrics_dict(outputs, batch))


def test_the_regularizer_rays_add_exactly_nerfactos_proposal_and_distortion_losses(edit_pipeline, monkeypatch):
    """With a zero guidance gradient, what the step applies is the gradient of nerfacto's own interlevel and
    distortion losses (nerfstudio's get_loss_dict) on the first N rays of the same training batch; with 0 rays
    it applies nothing and logs neither loss."""
    pipeline, model = edit_pipeline, edit_pipeline.model
    seen = {"scale": 0.0}
    monkeypatch.setattr(pipeline.guidance, "forward", fixed_guidance(seen))
    model.set_editing(True)
    step = int(pipeline.edit_start_step) + 5
    scalars = {}
    for rays in (0, 32):
        monkeypatch.setattr(pipeline.config, "regularizer_rays", rays)
        model.zero_grad()
        torch.manual_seed(0)  # the training ray batch and its samples
        scalars[rays] = pipeline.edit_step(step)
        if rays == 0:
            assert all(g.abs().max() == 0 for g in parameter_grads(model).values()), "zero guidance, no loss"
    ours = parameter_grads(model)
    assert not {"interlevel_loss", "distortion_loss"} & scalars[0].keys()
    assert {"interlevel_loss", "distortion_loss"} <= scalars[32].keys()

    _, _, losses = nerfacto_losses_of_the_first_rays(pipeline, step, 32)
    (losses["interlevel_loss"] + losses["distortion_loss"]).backward()
    expected = parameter_grads(model)
    assert any(g.abs().sum() > 0 for g in expected.values())
    for name, value in ours.items():
        assert_close(value, expected.get(name, torch.zeros_like(value)), rtol=1e-4, atol=1e-7, msg=name)


def test_with_a_mask_the_regularizer_rays_also_fit_their_images_outside_it(edit_pipeline, tmp_path, monkeypatch):
    """Masks white on each view's left half, zero guidance: the step applies the gradient of interlevel +
    distortion + w * mean_i((1 - m_i) * mean_c (rgb_ic - image_ic)^2) on the first 32 rays, m_i written here as the
    value of the ray's view's mask at its pixel (the latent pixel of the 8 x 8 latent that holds it)."""
    from PIL import Image

    from ids_nerfstudio.guidance.relevance import latent_mask, soften

    pipeline, model = edit_pipeline, edit_pipeline.model
    dataset = pipeline.datamanager.train_dataset
    mask = np.zeros((24, 24), dtype=np.uint8)
    mask[:, :12] = 255
    for name in dataset.image_filenames:
        Image.fromarray(mask).save(tmp_path / f"{Path(name).stem}.png")
    monkeypatch.setattr(pipeline.guidance, "forward", fixed_guidance({"scale": 0.0}))
    monkeypatch.setattr(pipeline.config.mask, "source", str(tmp_path))
    monkeypatch.setattr(pipeline.config, "regularizer_rays", 32)
    monkeypatch.setattr(pipeline.config, "keep_outside_mask", 0.6)
    pipeline.datamanager.edit_masks.clear()
    model.set_editing(True)
    step = int(pipeline.edit_start_step) + 7
    model.zero_grad()
    torch.manual_seed(0)
    scalars = pipeline.edit_step(step)
    ours = parameter_grads(model)
    assert "keep_rgb_loss" in scalars

    latent = soften(latent_mask(torch.from_numpy(mask / 255.0)[None, None], 8, 8).round(), pipeline.config.mask)
    outputs, batch, losses = nerfacto_losses_of_the_first_rays(pipeline, step, 32)
    rows, columns = batch["indices"][:, 1] // 3, batch["indices"][:, 2] // 3  # 24 px -> 8 latent pixels
    weights = 0.6 * (1 - latent[0, 0, rows, columns])
    assert (weights < 0.01).any() and (weights > 0.5).any(), "rays inside and outside the masks"
    error = (outputs["rgb"] - batch["image"][..., :3]).pow(2).mean(-1)
    (losses["interlevel_loss"] + losses["distortion_loss"] + (weights * error).mean()).backward()
    expected = parameter_grads(model)
    for name, value in ours.items():
        assert_close(value, expected.get(name, torch.zeros_like(value)), rtol=1e-4, atol=1e-7, msg=name)


def test_a_trainer_editing_step_moves_the_field_and_proposals_and_not_the_cameras_or_appearance(edit_trainer):
    """The field and proposal optimizers take a step; the camera optimizer and the appearance embedding get no
    gradient and stay bit-identical. (The proposal networks' own gradient is the interlevel loss's, exactly zero
    in this tiny run: its proposal envelopes already bound the near-zero weights, so their values need not move.)"""
    model, optimizers = edit_trainer.pipeline.model, edit_trainer.optimizers.optimizers

    def adam_steps(group: str) -> list[int]:
        return [int(optimizers[group].state[p].get("step", 0)) for g in optimizers[group].param_groups
                for p in g["params"]]  # fmt: skip

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    steps_before = {group: adam_steps(group) for group in optimizers}
    edit_trainer.train_iteration(int(edit_trainer.pipeline.edit_start_step) + 11)
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    frozen = [name for name in before if "camera_optimizer" in name or "embedding_appearance" in name]
    assert frozen and not changed & set(frozen), sorted(changed & set(frozen))
    assert all(dict(model.named_parameters())[name].grad is None for name in frozen), "no gradient reaches them"
    assert any(name.startswith("field.") for name in changed), "the edit moved the field"
    for group in ("fields", "proposal_networks"):
        stepped = [after - was for after, was in zip(adam_steps(group), steps_before[group], strict=True)]
        assert 1 in stepped, f"{group} took a step"
    assert adam_steps("camera_opt") == steps_before["camera_opt"], "the camera optimizer took no step"


def test_a_prompt_changed_in_the_viewer_takes_effect_at_the_next_step(edit_pipeline, monkeypatch):
    seen = []
    original = edit_pipeline.guidance.forward

    def spy(z_trg, z_src, prompt_trg, prompt_src, **kwargs):
        seen.append((prompt_src, prompt_trg))
        return original(z_trg, z_src, prompt_trg, prompt_src, **kwargs)

    monkeypatch.setattr(edit_pipeline.guidance, "forward", spy)
    edit_pipeline.viewer_prompt_trg.value = "a photo of lemons"  # what typing in the viewer's text box does
    edit_pipeline.viewer_prompt_trg.cb_hook(edit_pipeline.viewer_prompt_trg)
    edit_pipeline.edit_step(int(edit_pipeline.edit_start_step) + 9)
    assert seen == [("a photo of balls", "a photo of lemons")]


def test_a_prompt_typed_in_the_viewer_that_the_text_encoder_cuts_is_named(edit_pipeline):
    box, kept = edit_pipeline.viewer_prompt_src, edit_pipeline.config.prompt_src
    box.value = "a photo of " + "ripe oranges " * 40  # what typing in the viewer's box does
    with pytest.warns(UserWarning, match=r"viewer: Source prompt: prompt .* is cut"):
        box.cb_hook(box)
    assert edit_pipeline.config.prompt_src == box.value, "taken, with the warning"
    box.value = kept
    box.cb_hook(box)


def test_viewer_boxes_refuse_bad_values_and_keep_the_edit_going(edit_pipeline):
    guidance = edit_pipeline.guidance.config
    scale, fpr_scale, prompt = guidance.guidance_scale, guidance.fpr_scale, edit_pipeline.config.prompt_trg
    for box, bad in [(edit_pipeline.viewer_guidance_scale, -3.0), (edit_pipeline.viewer_guidance_scale, math.nan),
                     (edit_pipeline.viewer_fpr_scale, math.inf), (edit_pipeline.viewer_prompt_trg, "  ")]:  # fmt: skip
        box.value = bad  # what typing in the viewer's box does
        with pytest.warns(UserWarning, match=f"viewer: {box.name}: refused"):
            box.cb_hook(box)
    assert (guidance.guidance_scale, guidance.fpr_scale, edit_pipeline.config.prompt_trg) == (scale, fpr_scale, prompt)
    assert edit_pipeline.viewer_guidance_scale.value == scale, "the box shows the value in use again"
    assert edit_pipeline.viewer_prompt_trg.value == prompt
    edit_pipeline.viewer_guidance_scale.value = 12.5
    edit_pipeline.viewer_guidance_scale.cb_hook(edit_pipeline.viewer_guidance_scale)
    assert guidance.guidance_scale == 12.5
    edit_pipeline.viewer_guidance_scale.value = scale
    edit_pipeline.viewer_guidance_scale.cb_hook(edit_pipeline.viewer_guidance_scale)


def test_the_viewer_pause_box_pauses_the_training_loop(edit_trainer):
    pause = edit_trainer.pipeline.viewer_pause
    pause.value = True
    pause.cb_hook(pause)
    assert edit_trainer.training_state == "paused"
    pause.value = False
    pause.cb_hook(pause)
    assert edit_trainer.training_state == "training"


# ------------------------------------------------------------------------------------------------- ids-eval


def test_ids_eval_writes_metrics_table_and_contact_sheet(edit_run):
    from ids_nerfstudio.nerf.evaluate import EvalArgs, evaluate

    (config,) = edit_run.rglob("config.yml")
    before = {p: p.stat().st_mtime_ns for p in config.parent.rglob("*") if p.is_file()}
    run_dir = evaluate(EvalArgs(load_config=config, max_views=3, path_steps=2, sheet_views=2))
    report = json.loads((run_dir / "metrics.json").read_text())
    assert report["prompt_trg"] == "a photo of oranges" and len(report["views"]) == report["mean"]["views"] == 3
    for key in ("clip_score", "clip_directional_similarity", "lpips_to_source", "psnr_to_source",
                "background_psnr", "consistency_clip", "consistency_lpips"):  # fmt: skip
        assert math.isfinite(report["mean"][key]), key
    assert "**mean**" in (run_dir / "metrics.md").read_text()
    from PIL import Image

    from ids_nerfstudio.sheets import LABEL_HEIGHT

    sheet = Image.open(run_dir / "contact_sheet.png")
    # 2 views x (source image | reconstruction | edit | depth | gradient), 24 px renders enlarged 8x, titles
    assert sheet.height == LABEL_HEIGHT + 2 * 192 and 5 * 192 < sheet.width < 5 * 192 + 100
    assert report["reference"] == "reconstruction", "measured against the reconstruction the edit started from"
    after = {p: p.stat().st_mtime_ns for p in config.parent.rglob("*") if p.is_file()}
    changed = {p.name for p in after if before.get(p) != after[p]}
    assert changed <= {"metrics.json", "metrics.md", "contact_sheet.png"}, changed


def test_ids_eval_with_a_source_run_reports_depth_change(stock_run, scene, workspace):
    from ids_nerfstudio.nerf.evaluate import EvalArgs, evaluate

    output = workspace / "eval-pds"
    result = ns_train("pds-edit", scene, output, *PROMPTS, *EDIT, "--load-dir", str(stock_run),
                      "--max-num-iterations", "1", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (config,) = output.rglob("config.yml")
    (source_config,) = stock_run.parent.rglob("config.yml")
    run_dir = evaluate(EvalArgs(load_config=config, source_config=source_config, max_views=2, gradient=False))
    report = json.loads((run_dir / "metrics.json").read_text())
    for row in [report["mean"], *report["views"]]:  # a mean absolute change: finite and >= 0 (NaN fails)
        assert row["depth_change_edited"] >= 0 and row["depth_change_background"] >= 0, row
    views = report["views"]
    assert report["mean"]["depth_change_background"] == pytest.approx(
        np.mean([row["depth_change_background"] for row in views])
    )
    assert not (source_config.parent / "metrics.json").exists(), "the source run is not written to"


def test_ids_eval_bad_input_is_one_line(stock_run, edit_run, tmp_path):
    (stock_config,) = stock_run.parent.rglob("config.yml")
    result = run([sys.executable, "-m", "ids_nerfstudio.scripts.eval", "--load-config", str(stock_config)],
                 tmp=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "is a nerfacto run, not an edit run" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr

    (config,) = edit_run.rglob("config.yml")
    import yaml

    moved_config = yaml.load(config.read_text(), Loader=yaml.Loader)
    moved_config.output_dir = tmp_path / "elsewhere"  # a run folder without checkpoints
    moved = tmp_path / "config.yml"
    moved.write_text(yaml.dump(moved_config))
    result = run([sys.executable, "-m", "ids_nerfstudio.scripts.eval", "--load-config", str(moved)], tmp=tmp_path)
    assert result.returncode == 2 and "has no checkpoint" in result.stderr

    from ids_nerfstudio.nerf.evaluate import _load_config

    not_configs = {"transforms.json": json.dumps({"frames": []}), "broken.yml": "a: [1\n", "image.png": b"\x89PNG\r\n"}
    for name, content in not_configs.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(UserError, match=f"--load-config: {path} is not a nerfstudio config.yml"):
            _load_config(path, "--load-config")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ids_compare_runs_two_methods_and_tabulates(stock_run, scene, workspace):
    """With the viewer on (which keeps a plain ns-train waiting for ctrl+c), the children still exit."""
    output = workspace / "compare"
    command = [sys.executable, "-m", "ids_nerfstudio.scripts.compare", "--data", str(scene), *PROMPTS,
               "--methods", "ids-edit", "dds-edit", "--load-dir", str(stock_run), "--max-num-iterations", "1",
               "--output-dir", str(output), "--", *EDIT, *SMALL_NERFACTO,
               "--vis", "viewer", "--viewer.websocket-port", str(free_port())]  # fmt: skip
    result = run(command, tmp=workspace, timeout=300)  # a child waiting on its viewer fails this by the timeout
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((output / "comparison.json").read_text())
    assert list(table) == ["ids-edit", "dds-edit"]
    assert all(math.isfinite(row["clip_score"]) for row in table.values())
    assert "| ids-edit |" in (output / "comparison.md").read_text() and (output / "comparison.png").exists()


def test_ids_compare_dry_run_and_bad_methods(scene, tmp_path):
    base = [sys.executable, "-m", "ids_nerfstudio.scripts.compare", "--data", str(scene), *PROMPTS,
            "--output-dir", str(tmp_path / "c")]  # fmt: skip
    dry = run([*base, "--methods", "ids-edit", "pds-edit", "--dry-run"], tmp=tmp_path)
    assert dry.returncode == 0 and dry.stdout.count("nerfstudio.scripts.train") == 2
    assert "pds-edit" in dry.stdout and not (tmp_path / "c").exists()
    bad = run([*base, "--methods", "ids-edit", "magic-edit"], tmp=tmp_path)
    assert bad.returncode == 2 and "unknown magic-edit" in bad.stderr


def test_ids_eval_rejects_a_source_run_of_another_scene(edit_run, workspace):
    from ids_nerfstudio.errors import UserError
    from ids_nerfstudio.nerf.evaluate import EvalArgs, evaluate

    other_scene = write_demo_scene(workspace / "other-scene", size=24, views=5)
    other = workspace / "other-run"
    result = ns_train("ids-edit", other_scene, other, *PROMPTS, *EDIT, "--reconstruction-steps", "1",
                      "--max-num-iterations", "1", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (config,) = edit_run.rglob("config.yml")
    (other_config,) = other.rglob("config.yml")
    with pytest.raises(UserError, match="cameras differ"):
        evaluate(EvalArgs(load_config=config, source_config=other_config, gradient=False))


# ------------------------------------------------------------------------------------ faults and few views


def checksums(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_resume_skips_a_truncated_newest_checkpoint_and_leaves_the_source_run_alone(edit_run, scene, workspace):
    source = workspace / "crashed-run"
    shutil.copytree(edit_run, source)
    (readable,) = checkpoints(source)
    whole = readable.read_bytes()  # as a kill during nerfstudio's in-place save leaves it
    truncated = readable.with_name(f"step-{step_of(readable) + 2:09d}.ckpt")
    truncated.write_bytes(whole[: len(whole) // 3])
    before = checksums(source)
    output = workspace / "resumed-after-crash"
    result = ns_train("ids-edit", scene, output, *PROMPTS, *EDIT, "--load-dir", str(readable.parent),
                      "--max-num-iterations", "4", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping unreadable checkpoint {truncated}" in result.stderr
    (checkpoint,) = checkpoints(output)
    assert step_of(checkpoint) == 5, "continues from the readable step-3 (editing started at 2): steps 4 and 5"
    assert checksums(source) == before, "no file of the source run changed"


def test_ids_eval_uses_the_newest_readable_checkpoint_and_works_with_one_view(edit_run, workspace, capsys):
    from ids_nerfstudio.nerf.evaluate import EvalArgs, evaluate

    run_copy = workspace / "eval-one-view"
    shutil.copytree(edit_run, run_copy)
    (readable,) = checkpoints(run_copy)
    readable.with_name(f"step-{step_of(readable) + 1:09d}.ckpt").write_bytes(b"PK truncated")
    import yaml

    (config,) = run_copy.rglob("config.yml")
    copied = yaml.load(config.read_text(), Loader=yaml.Loader)
    copied.output_dir = run_copy  # the copy's own checkpoints, not the original run's
    config.write_text(yaml.dump(copied))
    run_dir = evaluate(EvalArgs(load_config=config, max_views=1, gradient=False))
    report = json.loads((run_dir / "metrics.json").read_text())
    assert report["mean"]["views"] == 1 and math.isfinite(report["mean"]["clip_score"])
    assert report["mean"]["consistency_clip"] is None, "a camera path needs two views: n/a"
    assert "CLIP n/a" in (run_dir / "metrics.md").read_text()
    captured = capsys.readouterr()
    assert "skipping unreadable checkpoint" in captured.err and "ids-eval: 1 " in captured.out, "says what it used"


def test_ns_viewer_of_a_finished_run_shows_no_editing_controls(edit_run):
    from nerfstudio.viewer.viewer_elements import ViewerElement

    (config,) = edit_run.rglob("config.yml")
    _, pipeline, _, _ = eval_setup(config, test_mode="test")  # what ns-viewer and ns-render do
    assert not [name for name, value in vars(pipeline).items() if isinstance(value, ViewerElement)]


def check_live_viewer(trainer, scene: Path, monkeypatch, tmp_path: Path) -> None:
    """nerfstudio's viewer of a running edit: the pipeline's editing controls are shown, and every editing step is
    (nerfstudio alone waits for a re-render)."""
    from nerfstudio.configs.base_config import ViewerConfig
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.viewer.viewer import Viewer
    from nerfstudio.viewer.viewer_elements import ViewerElement

    viewer = Viewer(ViewerConfig(websocket_host="127.0.0.1", websocket_port=free_port()),
                    log_filename=tmp_path / "viewer_log.txt", datapath=scene, pipeline=trainer.pipeline,
                    trainer=trainer, train_lock=trainer.train_lock)  # fmt: skip
    try:
        controls = [v for v in vars(trainer.pipeline).values() if isinstance(v, ViewerElement)]
        assert controls and all(control.gui_handle is not None for control in controls), "editing controls shown"
        monkeypatch.setattr(trainer.config, "vis", "viewer")
        monkeypatch.setattr(trainer, "viewer_state", viewer, raising=False)
        first = int(trainer.pipeline.edit_start_step) + 5
        Trainer._update_viewer_state(trainer, first)
        assert viewer.stats_markdown.content.startswith("Step: 0"), "nerfstudio alone waits for a re-render"
        for step in (first, first + 1):
            trainer._update_viewer_state(step)
            assert viewer.stats_markdown.content.split()[:2] == ["Step:", str(step)], viewer.stats_markdown.content
    finally:
        viewer.viser_server.stop()


def test_a_live_viewer_shows_every_editing_step_and_the_editing_controls(edit_trainer, scene, monkeypatch, tmp_path):
    check_live_viewer(edit_trainer, scene, monkeypatch, tmp_path)


def test_the_atomic_save_writes_what_nerfstudios_own_save_writes(edit_trainer, tmp_path, monkeypatch):
    """EditTrainer.save_checkpoint types nerfstudio's checkpoint dictionary again: an upgrade changing it fails here."""
    from nerfstudio.engine.trainer import Trainer

    step = int(edit_trainer.pipeline.edit_start_step) + 1
    saved = {}
    for name, save in (("ours", type(edit_trainer).save_checkpoint), ("nerfstudio", Trainer.save_checkpoint)):
        monkeypatch.setattr(edit_trainer, "checkpoint_dir", tmp_path / name)
        save(edit_trainer, step)
        saved[name] = torch.load(tmp_path / name / f"step-{step:09d}.ckpt")
    ours, theirs = saved["ours"], saved["nerfstudio"]
    assert ours.keys() == theirs.keys() and ours["step"] == theirs["step"] == step
    for key in ("pipeline", "optimizers", "schedulers", "scalers"):
        assert ours[key].keys() == theirs[key].keys(), key
    assert all(torch.equal(ours["pipeline"][k], theirs["pipeline"][k]) for k in theirs["pipeline"])


def test_the_edit_learning_rate_applies_from_the_first_editing_step(edit_trainer, monkeypatch):
    monkeypatch.setattr(edit_trainer.config, "edit_learning_rate", 3e-4)
    monkeypatch.setattr(edit_trainer, "_editing", False)
    camera_lrs = list(edit_trainer.optimizers.schedulers["camera_opt"].base_lrs)
    edit_trainer.train_iteration(int(edit_trainer.pipeline.edit_start_step) + 3)
    for group in ("fields", "proposal_networks"):
        assert edit_trainer.optimizers.schedulers[group].base_lrs == [3e-4]
        assert 2.9e-4 < edit_trainer.optimizers.optimizers[group].param_groups[0]["lr"] <= 3e-4
    assert edit_trainer.optimizers.schedulers["camera_opt"].base_lrs == camera_lrs, "cameras keep theirs"


def test_an_edit_run_killed_with_sigkill_resumes_from_its_newest_checkpoint(scene, workspace):
    import signal
    import time

    output = workspace / "killed"
    command = [sys.executable, "-m", "nerfstudio.scripts.train", "ids-edit", "--data", str(scene),
               "--output-dir", str(output), *SMALL_NERFACTO, *PROMPTS, *EDIT, "--reconstruction-steps", "2",
               "--max-num-iterations", "10000", "--steps-per-save", "1"]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300

    def newest_step() -> int:
        saved = checkpoints(output)  # nerfstudio keeps only the latest checkpoint
        return step_of(saved[-1]) if saved else -1

    while newest_step() < 4 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)  # wherever it is: often in the middle of a save (one per step)
    child.wait(timeout=60)
    saved = checkpoints(output)
    assert saved and step_of(saved[-1]) >= 4, "the run got into its editing steps"
    assert all(torch.load(path)["step"] == step_of(path) for path in saved), "every checkpoint left is whole"
    (config,) = output.rglob("config.yml")
    assert eval_setup(config, test_mode="test")[3] == step_of(saved[-1]), "ns-render and ns-viewer load it too"
    before = checksums(output)
    resumed = workspace / "killed-resumed"
    result = ns_train("ids-edit", scene, resumed, *PROMPTS, *EDIT, "--load-dir", str(saved[-1].parent),
                      "--max-num-iterations", str(step_of(saved[-1]) + 1), tmp=workspace)  # fmt: skip
    # editing started at step 2, so S + 1 editing steps in all end at step S + 2: two more after the newest, S
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_of(checkpoints(resumed)[-1]) == step_of(saved[-1]) + 2, "two more editing steps after the newest"
    assert checksums(output) == before, "the killed run is not touched"


def test_a_mask_folder_masks_each_views_guidance_gradient_and_is_read_once(edit_pipeline, tmp_path, monkeypatch):
    """Each view's mask file (white on the left, a different width per view) reaches the guidance at latent size as
    the area share of its pixels rounded (then grown and feathered by the config), paired with its own view; a
    second step reads no file."""
    from PIL import Image

    from ids_nerfstudio.guidance.relevance import soften

    pipeline, dataset = edit_pipeline, edit_pipeline.datamanager.train_dataset
    for index, name in enumerate(dataset.image_filenames):
        mask = np.zeros((24, 24), dtype=np.uint8)
        mask[:, : 4 + 3 * index] = 255
        Image.fromarray(mask).save(tmp_path / f"{Path(name).stem}.png")
    seen: dict = {}
    spy = fixed_guidance(seen)
    monkeypatch.setattr(pipeline.guidance, "forward", lambda *a, mask=None, **k: seen.update(mask=mask) or spy(*a, **k))
    monkeypatch.setattr(pipeline.config.mask, "source", str(tmp_path))
    monkeypatch.setattr(pipeline.config, "regularizer_rays", 0)
    monkeypatch.setattr(pipeline.datamanager.config, "views_per_step", 2)
    monkeypatch.setattr(pipeline.datamanager.config, "change_view_every", 100)
    pipeline.datamanager.edit_masks.clear()
    pipeline.edit_step(int(pipeline.edit_start_step))
    indices, mask = pipeline.datamanager._current, seen["mask"]
    latent = seen["z_src"].shape[-2:]
    assert mask.shape == (2, 1, *latent)
    for k, index in enumerate(indices):
        share = torch.zeros(1, 1, *latent)
        width = 4 + 3 * index  # the white columns, at the latent's 1/2 (tiny VAE) of the 16 px render of 24 px
        scale = latent[1] / 24
        for column in range(latent[1]):
            covered = min(max(width * scale - column, 0.0), 1.0)  # the column's covered share
            share[..., column] = float(round(covered + 1e-9))
        assert_close(mask[k : k + 1], soften(share, pipeline.config.mask), atol=1e-5, rtol=0)
    monkeypatch.setattr(pipeline.config.mask, "source", str(tmp_path / "gone"))  # a read now would fail
    pipeline.edit_step(int(pipeline.edit_start_step) + 1)
    assert torch.equal(seen["mask"], mask), "the cached masks of the same views"


def test_the_auto_mask_is_computed_once_per_view_and_again_when_a_prompt_changes(edit_pipeline, monkeypatch):
    from ids_nerfstudio.nerf import pipeline as pipeline_module

    pipeline, calls = edit_pipeline, []
    real = pipeline_module.auto_mask
    monkeypatch.setattr(pipeline_module, "auto_mask", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    monkeypatch.setattr(pipeline.guidance, "forward", fixed_guidance({}))
    monkeypatch.setattr(pipeline.config.mask, "source", "auto")
    monkeypatch.setattr(pipeline.config, "regularizer_rays", 0)
    monkeypatch.setattr(pipeline.datamanager.config, "views_per_step", 1)
    monkeypatch.setattr(pipeline.datamanager.config, "change_view_every", 100)
    pipeline.datamanager.edit_masks.clear()
    start = int(pipeline.edit_start_step)
    pipeline.edit_step(start)
    pipeline.edit_step(start + 1)
    assert calls == [pipeline.config.prompt_src], "one view, two steps: one mask"
    monkeypatch.setattr(pipeline.config, "prompt_trg", pipeline.config.prompt_trg + " and limes")  # as the viewer's box
    pipeline.edit_step(start + 2)
    assert len(calls) == 2
