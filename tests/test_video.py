"""The video editor: frames as particles (against the guidance's batched call), the CLI, bad input, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from helpers import make_latents
from PIL import Image

from ids_nerfstudio.demo.scoring import measure_colour_edit
from ids_nerfstudio.demo.wide import render_orbit
from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance import CSDConfig
from ids_nerfstudio.guidance.formulas import random_normal_like
from ids_nerfstudio.prior import StableDiffusionPriorConfig
from ids_nerfstudio.scripts.edit_video import main
from ids_nerfstudio.video_editor import optimise_frames

BLUE = "a photo of a blue ball on a grey floor"


@pytest.mark.parametrize("prior_name", ["sd_prior", "ip2p_prior"])
def test_a_step_over_all_frames_is_the_guidance_batched_call(prior_name, request):
    """z_1 = z_0 - lr * CSD(z_0 frames, their source frames; t, noise) with the draws of the step's generator."""
    prior = request.getfixturevalue(prior_name)
    z_src, _, _ = make_latents(4, height=8, width=8)
    guidance = CSDConfig().setup(prior=prior)
    z_1 = optimise_frames(guidance, z_src, BLUE, "a photo", steps=1, lr=0.5, grad_scale=64.0,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    t = guidance.sample_timesteps(1, z_src.device, generator)
    noise = random_normal_like(z_src, generator)
    reference = guidance(z_src, z_src, BLUE, "a photo", t=t, noise=noise)
    assert reference.extras["kernel"].shape == (4, 4), "one SVGD over all four frames"
    torch.testing.assert_close(z_1, z_src - 0.5 * reference.grad)
    assert not torch.equal(z_1, z_src)


def test_frames_per_step_moves_only_the_drawn_frames_by_their_joint_call(sd_prior):
    z_src, z_trg, _ = make_latents(5, height=8, width=8)
    guidance = CSDConfig().setup(prior=sd_prior)
    z_1 = optimise_frames(guidance, z_src, BLUE, "a photo", steps=1, lr=1.0, grad_scale=64.0, frames_per_step=2,
                          generator=torch.Generator().manual_seed(2))  # fmt: skip
    generator = torch.Generator().manual_seed(2)
    t = guidance.sample_timesteps(1, z_src.device, generator)
    chosen = torch.randperm(5, generator=generator)[:2]
    noise = random_normal_like(z_src[chosen], generator)
    reference = guidance(z_src[chosen], z_src[chosen], BLUE, "a photo", t=t, noise=noise)
    expected = z_src.clone()
    expected[chosen] -= reference.grad
    torch.testing.assert_close(z_1, expected)
    assert sorted(i for i in range(5) if not torch.equal(z_1[i], z_src[i])) == sorted(chosen.tolist())


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def cli(output, *source, extra=()):
    return main([*source, "--prompt-src", "a photo of a cat", "--prompt-trg", "a photo of a dog", "--model", "tiny",
                 "--device", "cpu", "--size", "16", "--steps", "2", "--output", str(output), *extra])  # fmt: skip


@pytest.mark.parametrize("guidance", ["csd", "dds"])
def test_a_frames_folder_is_edited_into_a_video_a_grid_and_metrics(frames_dir, tmp_path, guidance):
    output = cli(tmp_path / "out", guidance, "--frames", str(frames_dir),
                 extra=["--frames-per-step", "2", "--mask.source", "auto", "--fpr-iters", "1"])  # fmt: skip
    video = imageio.mimread(output / "edit.mp4")
    assert len(video) == 3 and video[0].shape == (16, 24, 3)
    assert sorted(p.name for p in (output / "frames").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert Image.open(output / "grid.png").width > 3 * 24
    summary = json.loads((output / "metrics.json").read_text())["summary"]
    assert {"clip_directional_similarity", "edit_consecutive_clip", "edit_consecutive_lpips",
            "source_consecutive_lpips"} <= summary.keys() and summary["frames"] == 3  # fmt: skip


def test_a_video_file_is_read(frames_dir, tmp_path):
    video = tmp_path / "clip.mp4"
    imageio.mimwrite(video, [np.asarray(Image.open(p)) for p in sorted(frames_dir.iterdir())], fps=5,
                     macro_block_size=1)  # fmt: skip
    output = cli(tmp_path / "out", "--video", str(video), extra=["--no-eval"])
    assert len(imageio.mimread(output / "edit.mp4")) == 3 and not (output / "metrics.json").exists()


def bad_inputs(tmp_path, frames_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (16, 16)).save(mixed / "0.png")
    Image.new("RGB", (24, 16)).save(mixed / "1.png")
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    return {
        "no frames": (["--frames", str(empty)], "--frames: no image files"),
        "sizes": (["--frames", str(mixed)], "all frames must have one size"),
        "unreadable": (["--video", str(broken)], "--video: cannot read"),
        "neither": ([], "one of them"),
        "both": (["--frames", str(frames_dir), "--video", str(broken)], "one of them"),
    }


@pytest.mark.parametrize("case", ["no frames", "sizes", "unreadable", "neither", "both"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, frames_dir, case):
    source, message = bad_inputs(tmp_path, frames_dir)[case]
    with pytest.raises(UserError, match=message):
        cli(tmp_path / "out", *source)
    assert not (tmp_path / "out").exists()


def test_the_console_script_exits_2_with_one_line(tmp_path, frames_dir):
    source, _ = bad_inputs(tmp_path, frames_dir)["sizes"]
    command = [sys.executable, "-m", "ids_nerfstudio.scripts.edit_video", *source, "--prompt-trg", "x", "--model",
               "tiny", "--output", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "ids-edit-video: error: --frames" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- demo prior


def orbit_edit(prior, svgd: bool = True):
    """CSD (SVGD over the frames) recolours an 8-frame demo orbit: (source, edit, masks), frames F H W 3."""
    frames, masks, caption = render_orbit(8)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        z_src = prior.encode_images(pixels)
    z = optimise_frames(CSDConfig(svgd=svgd).setup(prior=prior), z_src, BLUE, caption, steps=40, lr=1.0,
                        grad_scale=256.0, lr_decay=0.9, generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        edit = prior.decode_latents(z).permute(0, 2, 3, 1).numpy()
    return frames, edit, masks


def orbit_outcome(prior) -> tuple[int, float, float]:
    """(frames turned blue, mean background PSNR, consecutive-frame change of the edit / of the source)."""
    source, edit, masks = orbit_edit(prior)
    results = [measure_colour_edit(a, b, mask) for a, b, mask in zip(source, edit, masks, strict=True)]
    change = np.mean((edit[1:] - edit[:-1]) ** 2) / np.mean((source[1:] - source[:-1]) ** 2)
    return sum(r.after == "blue" for r in results), float(np.mean([r.background_psnr for r in results])), change


def test_a_demo_orbit_turns_blue_and_stays_consistent():
    prior = StableDiffusionPriorConfig(model="demo", device="cpu").setup()
    blue, background, change = orbit_outcome(prior)
    print(f"demo: {blue}/8 blue, background {background:.1f} dB, consecutive change x{change:.2f}")
    assert blue == 8 and background >= 30.0 and change <= 1.3, (blue, background, change)


def test_a_random_unet_fails_those_thresholds(random_unet_demo):
    prior = StableDiffusionPriorConfig(model=str(random_unet_demo), device="cpu").setup()
    blue, background, change = orbit_outcome(prior)
    print(f"random UNet: {blue}/8 blue, background {background:.1f} dB, consecutive change x{change:.2f}")
    assert not (blue == 8 and background >= 30.0 and change <= 1.3)
