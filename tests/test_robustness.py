"""Faults and bad input: atomic checkpoints, image modes, settings checked before anything is written, labels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.image_editor import check_working_size
from ids_nerfstudio.images import load_image
from ids_nerfstudio.scripts.edit_image import main
from ids_nerfstudio.sheets import LABEL_HEIGHT, labelled_grid, stacked_with_titles
from ids_nerfstudio.third_party_warnings import THIRD_PARTY_DEPRECATIONS, filter_third_party_deprecations
from ids_nerfstudio.tools.before_after import BeforeAfterArgs, before_after

# ------------------------------------------------------------------------------------------ image modes


def test_a_16_bit_grayscale_png_reads_as_a_viewer_shows_it(tmp_path):
    path = tmp_path / "gray16.png"
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)  # mean 32767: mid grey
    Image.fromarray(ramp).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert abs(np.asarray(image, dtype=np.float64).mean() - 127.5) < 1.5  # convert("RGB") gave ~254


def test_transparency_is_composited_over_white_with_a_note(tmp_path, capsys):
    path = tmp_path / "alpha.png"
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red
    rgba[:4, ..., 3] = 255  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(path)
    image = np.asarray(load_image(path))
    assert (image[:4] == [200, 0, 0]).all() and (image[4:] == 255).all()
    assert "composited over white" in capsys.readouterr().err


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), "white").save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_a_panorama_at_the_default_size_is_refused_at_once(tmp_path):
    path = tmp_path / "panorama.png"
    Image.new("RGB", (4000, 100), "grey").save(path)
    started = time.perf_counter()
    with pytest.raises(UserError, match="--max-side 2048"):
        main(["--image", str(path), "--prompt-trg", "x", "--model", "tiny", "--output", str(tmp_path / "o")])
    assert time.perf_counter() - started < 30 and not (tmp_path / "o").exists()
    check_working_size(Image.open(path), 16, 2048)  # a small --size passes


# ------------------------------------------------------------------------------------------ checkpoints

KILLED_SAVER = """
import sys, torch
from pathlib import Path
from ids_nerfstudio.checkpoints import save_atomic
folder = Path(sys.argv[1])
state = {"weights": torch.randn(4_000_000)}  # 16 MB: a save takes long enough to be interrupted
for step in range(1000):
    save_atomic({**state, "step": step}, folder / f"step-{step:09d}.ckpt")
    print(step, flush=True)
"""


def test_a_sigkill_during_saves_never_leaves_a_truncated_checkpoint(tmp_path):
    folder = tmp_path / "run" / "nerfstudio_models"
    saver = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(folder)], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let a few saves complete, then kill in the middle of the next ones
        saver.stdout.readline()
    time.sleep(0.05)
    os.kill(saver.pid, signal.SIGKILL)
    saver.wait(timeout=30)
    saved = sorted(folder.glob("step-*.ckpt"))
    assert len(saved) >= 3 and all(p.name.startswith("step-") for p in folder.iterdir()), "no stray files there"
    for path in saved:
        assert int(torch.load(path)["step"]) == int(path.stem.split("-")[1]), f"{path.name} is whole"


def test_the_newest_readable_checkpoint_skips_a_truncated_one(tmp_path, capsys):
    from ids_nerfstudio.checkpoints import newest_readable_checkpoint, save_atomic

    folder = tmp_path / "nerfstudio_models"
    save_atomic({"step": 6}, folder / "step-000000006.ckpt")
    save_atomic({"step": 8, "weights": torch.randn(1000)}, folder / "step-000000008.ckpt")
    whole = (folder / "step-000000008.ckpt").read_bytes()
    (folder / "step-000000008.ckpt").write_bytes(whole[: len(whole) // 2])
    path, state = newest_readable_checkpoint(folder)
    assert path.name == "step-000000006.ckpt" and state["step"] == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipping unreadable checkpoint" in err and "step-000000008" in err
    (folder / "step-000000006.ckpt").write_bytes(b"")
    assert newest_readable_checkpoint(folder) is None


# ------------------------------------------------------------------------------------------ pictures


def test_contact_sheets_are_labelled_and_small_renders_enlarged():
    tiles = [[Image.new("RGB", (24, 24), colour) for colour in ("red", "green")] for _ in range(2)]
    sheet = labelled_grid(tiles, ["source", "edit"], ["view 0", "view 5"], min_tile=192)
    margin = sheet.width - 2 * 192
    assert sheet.height == LABEL_HEIGHT + 2 * 192 and margin > 20, "24 px tiles enlarged 8x, a label column"
    pixels = np.asarray(sheet)
    assert (pixels[:LABEL_HEIGHT, margin:] < 128).any(), "column titles are drawn"
    assert (pixels[LABEL_HEIGHT:, :margin] < 128).any(), "row titles are drawn"
    assert (pixels[LABEL_HEIGHT + 5, margin + 5] == [255, 0, 0]).all() and (pixels[-5, -5] == [0, 128, 0]).all()
    stacked = stacked_with_titles([sheet, sheet], ["ids-edit", "dds-edit"])
    assert stacked.height == 2 * (LABEL_HEIGHT + sheet.height)
    assert (np.asarray(stacked)[LABEL_HEIGHT + sheet.height : 2 * LABEL_HEIGHT + sheet.height] < 128).any()


# ------------------------------------------------------------------------------ ns-train settings, in process

nerfstudio = pytest.importorskip("nerfstudio")


def write_scene(folder: Path) -> Path:
    from ids_nerfstudio.demo.scene import write_demo_scene

    return write_demo_scene(folder, size=16, views=4)


def ns_train_main(args: list[str]) -> None:
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.scripts.train import main as train_main

    train_main(tyro.cli(AnnotatedBaseConfigUnion, args=args))


@pytest.fixture(scope="module")
def good_scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("scene") / "scene")


def truncated_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "step-000000004.ckpt").write_bytes(b"PK\x03\x04 truncated")
    return folder


def scene_without_transforms(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    return folder


def scene_missing_an_image(folder: Path) -> Path:
    scene = write_scene(folder)
    (scene / "images" / "frame_00002.png").unlink()
    return scene


def scene_with_a_broken_image(folder: Path) -> Path:
    scene = write_scene(folder)
    (scene / "images" / "frame_00001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return scene


def scene_with_masks(folder: Path, mask_size: int | None) -> Path:
    """The scene with a mask_path on every frame; the first frame's mask is missing (None) or of another size."""
    scene = write_scene(folder)
    transforms = json.loads((scene / "transforms.json").read_text())
    (scene / "masks").mkdir()
    for k, frame in enumerate(transforms["frames"]):
        frame["mask_path"] = f"masks/mask_{k:05d}.png"
        side = mask_size if k == 0 and mask_size is not None else 16
        if not (k == 0 and mask_size is None):
            Image.new("L", (side, side), 255).save(scene / frame["mask_path"])
    (scene / "transforms.json").write_text(json.dumps(transforms))
    return scene


BAD_SETTINGS = [
    (["--pipeline.render-size", "0"], "--pipeline.render-size must be between 8 and 2048"),
    (["--pipeline.render-size", "-5"], "--pipeline.render-size must be between 8 and 2048"),
    (["--pipeline.render-size", "100000"], "--pipeline.render-size must be between 8 and 2048"),
    (["--pipeline.guidance.fpr-iters", "-1"], "--pipeline.guidance.fpr-iters: fpr_iters must be >= 0"),
    (["--pipeline.guidance.t-min", "0.9", "--pipeline.guidance.t-max", "0.1"], "need 0 <= t_min <= t_max"),
    (["--pipeline.guidance.guidance-scale", "nan"], "--pipeline.guidance.guidance-scale: must be a finite"),
    (["--pipeline.datamanager.views-per-step", "0"], "--pipeline.datamanager.views-per-step must be >= 1"),
    (["--pipeline.prior.model", "/no/such/model"], "--pipeline.prior.model '/no/such/model' does not exist"),
    (["--pipeline.prior.device", "tpu:7"], "--pipeline.prior.device 'tpu:7'"),
    (["--data", "{no_transforms}"], "no transforms.json there"),
    (["--data", "{missing_image}"], "1 of 4 images are missing"),
    (["--data", "{broken_image}"], "images/frame_00001.png as an image"),
    (["--data", "{missing_mask}"], "the mask of images/frame_00000.png is missing"),
    (["--data", "{small_mask}"], "mask_00000.png is (8, 8) (width, height), its image (16, 16)"),
    (["nerfstudio-data", "--downscale-factor", "8"], "--downscale-factor 8: 4 of 4 images are missing from"),
    (["--load-dir", "{truncated}"], "no checkpoint there is readable"),
    (["--load-dir", "{truncated}", "--load-step", "9"], "--load-step 9: --load-dir"),
    (["--load-dir", "{truncated}", "--load-step", "4"], "step-000000004.ckpt is unreadable"),
    (["--max-num-iterations", "-1"], "--max-num-iterations must be >= 0"),
    (["--edit-learning-rate", "0"], "--edit-learning-rate: must be a finite number > 0"),
    (["--edit-learning-rate", "inf"], "--edit-learning-rate: must be a finite number > 0"),
    (["--pipeline.guidance.fpr-scale", "nan"], "--pipeline.guidance.fpr-scale: must be a finite number >= 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD_SETTINGS, ids=[m for _, m in BAD_SETTINGS])
def test_every_rejected_setting_is_one_line_exit_2_and_writes_nothing(args, message, good_scene, tmp_path, capsys):
    folders = {
        "{no_transforms}": lambda: scene_without_transforms(tmp_path / "empty-scene"),
        "{missing_image}": lambda: scene_missing_an_image(tmp_path / "holey-scene"),
        "{broken_image}": lambda: scene_with_a_broken_image(tmp_path / "broken-scene"),
        "{missing_mask}": lambda: scene_with_masks(tmp_path / "unmasked-scene", None),
        "{small_mask}": lambda: scene_with_masks(tmp_path / "small-mask-scene", 8),
        "{truncated}": lambda: truncated_checkpoint(tmp_path / "models"),
    }
    args = [str(folders[a]()) if a in folders else a for a in args]
    data = [] if "--data" in args else ["--data", str(good_scene)]
    output = tmp_path / "outputs"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        ns_train_main(["ids-edit-demo", *data, "--output-dir", str(output), "--prompt-trg", "a blue ball",
                       "--machine.device-type", "cpu", "--vis", "tensorboard", *args])  # fmt: skip
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert message in out and out.count("error:") == 1, out
    assert "Config" not in out, "checked before nerfstudio prints the config"
    assert not output.exists() and sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing written"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_the_default_device_says_to_pass_cpu(good_scene, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ns_train_main(["ids-edit-demo", "--data", str(good_scene), "--output-dir", str(tmp_path / "o"),
                       "--prompt-trg", "a blue ball", "--vis", "tensorboard"])  # fmt: skip
    assert exit_info.value.code == 2 and "add --machine.device-type cpu" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


def test_a_transforms_file_that_is_not_json_is_named(tmp_path):
    from ids_nerfstudio.engine.trainer import check_nerfstudio_dataset

    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(UserError, match="transforms.json: not a nerfstudio transforms file"):
        check_nerfstudio_dataset(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(UserError, match="no frames"):
        check_nerfstudio_dataset(tmp_path)


# ------------------------------------------------------------------------------------------ ids-demo-scene


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "0"], "--size must be between 8 and 4096 pixels, got 0"),
        (["--size", "100000"], "--size must be between 8 and 4096 pixels, got 100000"),
        (["--views", "1"], "--views must be between 2 and 10000, got 1"),
        (["{blocked}"], "cannot write to {blocked}"),
    ],
)
def test_ids_demo_scene_checks_its_flags_and_output_first(args, message, tmp_path, capsys, monkeypatch):
    from ids_nerfstudio.scripts.demo_scene import entrypoint

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    blocked = str(blocker / "scene")
    output = [] if args == ["{blocked}"] else [str(tmp_path / "scene")]
    monkeypatch.setattr(sys, "argv", ["ids-demo-scene", *output, *[a.replace("{blocked}", blocked) for a in args]])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ids-demo-scene: error: {message.replace('{blocked}', blocked)}") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"], "nothing written"


def test_ids_demo_scene_object_cube_puts_a_red_cube_where_the_ball_was(tmp_path, monkeypatch):
    from ids_nerfstudio.demo.scoring import saturated
    from ids_nerfstudio.demo.world import SceneObject, render_with_masks
    from ids_nerfstudio.scripts.demo_scene import entrypoint

    monkeypatch.setattr(sys, "argv", ["ids-demo-scene", str(tmp_path / "cube"), "--size", "32", "--views", "3",
                                      "--object", "cube"])  # fmt: skip
    entrypoint()
    transforms = json.loads((tmp_path / "cube" / "transforms.json").read_text())
    for frame in transforms["frames"]:
        red = saturated(np.asarray(Image.open(tmp_path / "cube" / frame["file_path"])) / 255.0)
        pose, size, focal = np.array(frame["transform_matrix"]), transforms["w"], transforms["fl_x"]
        cube, ball = (render_with_masks(pose, size, size, focal, (SceneObject(shape, "red", 0.0, 0.0, 0.34),))[1][0]
                      for shape in ("cube", "ball"))  # fmt: skip
        assert (red & cube).sum() / (red | cube).sum() > 0.95
        assert (red & ball).sum() / (red | ball).sum() < 0.9, "a cube, not the ball"


# ------------------------------------------------------------------------------------------ ffmpeg for ns-render


def test_ns_render_gets_the_packaged_ffmpeg_where_path_has_none_and_a_system_one_stays_first(tmp_path, monkeypatch):
    import shutil

    from ids_nerfstudio.ffmpeg import ensure_ffmpeg_on_path

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert shutil.which("ffmpeg") is None, "this PATH has no ffmpeg"
    found = ensure_ffmpeg_on_path()
    assert found == str(tmp_path / "cache" / "ids_nerfstudio" / "bin" / "ffmpeg") == shutil.which("ffmpeg")
    version = subprocess.run([found, "-version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("ffmpeg version")
    assert ensure_ffmpeg_on_path() == found and os.environ["PATH"].count("ids_nerfstudio") == 1, "PATH grows once"

    system = tmp_path / "system-bin"
    system.mkdir()
    (system / "ffmpeg").write_text("#!/bin/sh\n")
    (system / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", str(system))
    assert ensure_ffmpeg_on_path() == str(system / "ffmpeg"), "a system ffmpeg is used as it is"


def test_an_animated_image_says_its_first_frame_is_edited_and_a_tiny_one_is_refused(tmp_path, capsys):
    animated = tmp_path / "animated.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    image = np.asarray(load_image(animated))
    assert image[..., 0].mean() > 200 and image[..., 2].mean() < 50, "the first (red) frame"
    assert "is animated (3 frames): its first frame is edited" in capsys.readouterr().err
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), "grey").save(tiny)
    with pytest.raises(UserError, match=r"is 1x1 pixels; an edit needs at least 8 on each side"):
        main(["--image", str(tiny), "--prompt-trg", "x", "--model", "tiny", "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_the_third_party_filters_name_their_module_so_the_same_words_elsewhere_still_print():
    """Each filter silences its message from the module it names only: raised from the user's code it shows."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        filter_third_party_deprecations()
        filter_third_party_deprecations()  # twice: installed once
        for category, message, module in THIRD_PARTY_DEPRECATIONS:
            text = message.replace(r"\w+", "name").replace("\\", "")  # a message the pattern matches
            warnings.warn_explicit(text, category, "user_code.py", 1, module="user_code")
            warnings.warn_explicit(text, category, "third_party.py", 1, module=module.replace("\\", ""))
        installed = len(warnings.filters)
    assert [w.filename for w in caught] == ["user_code.py"] * len(THIRD_PARTY_DEPRECATIONS)
    assert installed == len(THIRD_PARTY_DEPRECATIONS) + 1  # + "always"


# ------------------------------------------------------------------------------------------------ ids-before-after
def _video(path: Path, colours: list[tuple[int, int, int]], size: int = 16) -> Path:
    imageio.mimwrite(path, [np.full((size, size, 3), colour, np.uint8) for colour in colours], fps=4,
                     macro_block_size=1)  # fmt: skip
    return path


def test_before_after_puts_each_frame_pair_side_by_side_in_a_looping_gif(tmp_path):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    before = _video(tmp_path / "before.mp4", colours)
    after = _video(tmp_path / "after.mp4", colours[::-1])
    output = before_after(BeforeAfterArgs(before, after, output=tmp_path / "out" / "ba.gif", min_side=32))
    with Image.open(output) as gif:
        assert gif.n_frames == 3 and gif.info.get("loop") == 0
        for k in range(3):
            gif.seek(k)
            frame = np.asarray(gif.convert("RGB")).astype(int)
            height = frame.shape[0]
            left = frame[height // 2, frame.shape[1] - 2 * 32 + 16]  # the middle of each 32 px column
            right = frame[height // 2, frame.shape[1] - 16]
            assert np.abs(left - colours[k]).max() < 24 and np.abs(right - colours[::-1][k]).max() < 24
    assert [p.name for p in output.parent.iterdir()] == ["ba.gif"], "no temporary file left"


@pytest.mark.parametrize("case", ["frames", "suffix", "missing"])
def test_before_after_refuses_what_it_cannot_pair_in_one_line(case, tmp_path):
    before = _video(tmp_path / "before.mp4", [(0, 0, 0)] * 3)
    after = _video(tmp_path / "after.mp4", [(0, 0, 0)] * (2 if case == "frames" else 3))
    output = tmp_path / ("ba.png" if case == "suffix" else "ba.gif")
    if case == "missing":
        before = tmp_path / "nothing.mp4"
    message = {"frames": "AFTER: 2 frames", "suffix": "--output:", "missing": "BEFORE: no file"}[case]
    with pytest.raises(UserError, match=message):
        before_after(BeforeAfterArgs(before, after, output=output))
    assert not output.exists()
