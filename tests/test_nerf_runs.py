"""ns-train of the editing methods on the CPU, offline, with the tiny prior and a tiny demo scene: from images, from a
stock nerfacto run, resumed, interrupted, and refusing bad input in one line."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch
from PIL import Image

pytest.importorskip("nerfstudio")

from helpers import (  # noqa: E402
    EDIT,
    PROMPTS,
    SMALL_NERFACTO,
    checkpoints,
    checksums,
    ns_train,
    run,
    step_of,
)  # fmt: skip
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig  # noqa: E402
from nerfstudio.utils.eval_utils import eval_setup  # noqa: E402

from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints  # noqa: E402
from ids_nerfstudio.errors import UserError  # noqa: E402
from ids_nerfstudio.tools.before_after import BeforeAfterArgs, before_after  # noqa: E402

allow_nerfstudio_checkpoints()  # the tests read nerfstudio checkpoints with torch.load, as ns-render does


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


def test_demo_scene_is_a_nerfstudio_dataset(scene, tmp_path):
    outputs = NerfstudioDataParserConfig(data=scene, eval_mode="all").setup().get_dataparser_outputs("train")
    assert len(outputs.image_filenames) == 6
    transforms = json.loads((scene / "transforms.json").read_text())
    assert transforms["w"] == transforms["h"] == 24 and len(transforms["frames"]) == 6
    result = run([sys.executable, "-m", "ids_nerfstudio.scripts.demo_scene", str(scene)], tmp=tmp_path)
    assert result.returncode == 2 and "not an empty folder" in result.stderr


def render_path(config: Path, video: Path, workspace: Path) -> Path:
    """``ns-render interpolate`` of a run's config through its training cameras, small."""
    result = run([sys.executable, "-m", "nerfstudio.scripts.render", "interpolate", "--load-config", str(config),
                  "--output-path", str(video), "--pose-source", "train", "--interpolation-steps", "1",
                  "--downscale-factor", "2"],
                 tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return video


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

    video = render_path(config, workspace / "edit.mp4", workspace)
    assert video.stat().st_size > 0

    # The scene before the edit, along the same path: ns-render of reconstruction.yml loads reconstruction.ckpt.
    (shown,) = edit_run.rglob("reconstruction.yml")
    _, before_pipeline, _, _ = eval_setup(shown, test_mode="inference")
    loaded = before_pipeline.state_dict()
    assert all(torch.equal(loaded[key].cpu(), kept["pipeline"][key]) for key in field), "the reconstruction's state"
    before = render_path(shown, workspace / "before.mp4", workspace)
    animation = before_after(BeforeAfterArgs(before, video, output=workspace / "before-after.gif", min_side=24))
    frames = imageio.mimread(video)
    with Image.open(animation) as gif:
        assert gif.n_frames == len(frames) and gif.width >= 2 * frames[0].shape[1]


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
    assert not list(output.rglob("*.partial*")), "a save cut short by the second signal leaves no temporary file"


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
        (["--prompt-trg", "x", "--data", "{scene}", "--output-dir", "{scene}/transforms.json/runs"],
         "is a file, not a folder"),
    ],
)  # fmt: skip
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


def test_stock_checkpoints_load_with_weights_only_thanks_to_the_numpy_allow_list(stock_run, tmp_path):
    checkpoint = checkpoints(stock_run)[0]
    load = f"import torch; torch.load({str(checkpoint)!r}, map_location='cpu', weights_only=True)"
    without = run([sys.executable, "-c", load], tmp=tmp_path)
    assert without.returncode != 0 and "Weights only load failed" in without.stderr, "the problem is real"
    allow = "from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints; allow_nerfstudio_checkpoints()"
    with_plugin = run([sys.executable, "-c", f"{allow}; {load}"], tmp=tmp_path)
    assert with_plugin.returncode == 0, with_plugin.stderr[-2000:]


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


def read_only_folder(tmp_path: Path) -> Path | None:
    """A read-only tmpfs mounted in ``tmp_path`` (None where this process may not mount one)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    return folder if mounted.returncode == 0 else None


def test_an_output_folder_on_a_read_only_file_system_is_named_before_anything_loads(scene, tmp_path, monkeypatch):
    from ids_nerfstudio.engine.trainer import check_output_folder

    folder = read_only_folder(tmp_path)
    if folder is None:  # no mount permission: the same check, with the OS's answer injected
        folder = tmp_path / "read-only"
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder)
        with pytest.raises(UserError, match="is not writable"):
            check_output_folder(folder / "runs")
        return
    try:
        command = [sys.executable, "-m", "nerfstudio.scripts.train", "ids-edit", "--data", str(scene), "--output-dir",
                   str(folder / "runs"), "--prompt-trg", "x", *SMALL_NERFACTO]  # fmt: skip
        result = run(command, tmp=tmp_path)
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if "error" in line]
    assert len(lines) == 1 and f"--output-dir {folder / 'runs'}" in lines[0] and "not writable" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_splat_method_given_a_nerfacto_checkpoint_names_the_method_that_reads_it(edit_run, scene, tmp_path):
    """The reverse (a splat checkpoint given to a nerfacto method) is in test_splat.py."""
    (models,) = {path.parent for path in checkpoints(edit_run)}
    output = tmp_path / "out"
    command = [sys.executable, "-m", "nerfstudio.scripts.train", "ids-splat-edit-demo", "--data", str(scene),
               "--output-dir", str(output), "--load-dir", str(models), "--prompt-trg", "x",
               "--machine.device-type", "cpu", "--vis", "tensorboard"]  # fmt: skip
    result = run(command, tmp=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "holds a nerfacto checkpoint, which ids-splat-edit-demo cannot load: edit it with ids-edit-demo" in (
        result.stdout
    )
    assert "Traceback" not in result.stdout + result.stderr and not output.exists()
