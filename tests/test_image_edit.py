"""The 2D editor end to end on the tiny prior, and its handling of bad input."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_latents
from PIL import Image

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance import GUIDANCE_METHODS
from ids_nerfstudio.image_editor import optimise_latent
from ids_nerfstudio.scripts.edit_image import main


@pytest.fixture()
def source_image(tmp_path):
    path = tmp_path / "source.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(path)  # non-square, 3:2
    return path


def edit(source_image, output, *extra):
    return main([
        "--image", str(source_image), "--prompt-src", "a photo of a cat", "--prompt-trg", "a photo of a dog",
        "--model", "tiny", "--device", "cpu", "--size", "16", "--steps", "2", "--output", str(output), *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("guidance", ["sds", "dds", "cds", "pds", "ids", "csd"])
def test_every_guidance_edits_a_non_square_image_offline(source_image, tmp_path, guidance):
    output = edit(source_image, tmp_path / "out", "--guidance", guidance, "--save-every", "1")
    edited = Image.open(output / "edit.png")
    assert edited.size == (24, 16), "short side 16, aspect ratio 3:2 kept"
    assert Image.open(output / "strip.png").size == (48, 16)
    assert sorted(p.name for p in (output / "frames").iterdir()) == ["step_00001.png", "step_00002.png"]
    assert Image.open(output / "progress.png").size == (72, 16)  # that each step moves the latent: below


@pytest.mark.parametrize(("guidance", "prior_name"), [*[(name, "sd_prior") for name in GUIDANCE_METHODS],
                                                      ("csd", "ip2p_prior")])  # fmt: skip
def test_every_guidance_step_of_the_2d_editor_moves_the_latent_along_its_scaled_gradient(guidance, prior_name, request):
    """z_k+1 = z_k - lr (2000 / (h w) (grad - reg) + reg) at every step, and it moves: the SGD of the official editors
    on the guidance's own output (reg: CDS's contrastive part, which the score scale leaves alone)."""
    prior = request.getfixturevalue(prior_name)
    z_src = make_latents(2, height=8, width=12)[0]
    config = GUIDANCE_METHODS[guidance].config()
    seen = []
    z = optimise_latent(config.setup(prior=prior), z_src, "a photo of a dog", "a photo of a cat", steps=3, lr=0.1,
                        grad_scale=2000.0, generator=torch.Generator().manual_seed(0),
                        after_step=lambda step, out, z: seen.append((out, z.detach().clone())))  # fmt: skip
    previous, scale = z_src, 2000.0 / (8 * 12)
    for out, z_k in seen:
        regularizer = out.regularizer_grad if out.regularizer_grad is not None else torch.zeros_like(out.grad)
        assert torch.allclose(z_k, previous - 0.1 * (scale * (out.grad - regularizer) + regularizer), atol=1e-6)
        assert (z_k - previous).abs().max() > 1e-4, "the step moved the latent"
        previous = z_k
    assert torch.equal(z, previous) and len(seen) == 3


def test_eval_writes_the_metrics_of_the_edit(source_image, tmp_path):
    import json

    output = edit(source_image, tmp_path / "out", "--guidance", "dds", "--eval")
    metrics = json.loads((output / "metrics.json").read_text())
    expected = {"lpips_to_source", "psnr_to_source", "background_psnr", "clip_score", "clip_directional_similarity",
                "seconds"}  # fmt: skip
    assert expected <= metrics.keys()
    assert metrics["lpips_to_source"] >= 0 and -1 <= metrics["clip_score"] <= 1 and metrics["seconds"] > 0
    finite = ("psnr_to_source", "background_psnr", "clip_directional_similarity")
    assert all(math.isfinite(metrics[key]) for key in finite)
    assert metrics["guidance"] == "dds" and metrics["steps"] == 2


def test_eval_with_a_missing_clip_model_fails_before_editing(source_image, tmp_path):
    from ids_nerfstudio.eval import MetricModelError

    with pytest.raises(MetricModelError, match="does not exist"):
        edit(source_image, tmp_path / "out", "--eval", "--clip-model", str(tmp_path / "no-clip"))
    assert not (tmp_path / "out").exists()


def test_guidance_flags_reach_the_guidance(source_image, tmp_path, monkeypatch):
    import ids_nerfstudio.scripts.edit_image as edit_image_cli
    from ids_nerfstudio.guidance import PDSConfig

    seen = {}
    monkeypatch.setattr(edit_image_cli, "edit_image", lambda args, config: seen.update(args=args, config=config))
    edit(source_image, tmp_path / "o", "--guidance", "pds", "--fpr-iters", "2", "--guidance-scale", "30")
    assert type(seen["config"]) is PDSConfig
    assert seen["config"].fpr_iters == 2 and seen["config"].guidance_scale == 30
    assert seen["args"].guidance == "pds" and seen["args"].steps == 2


def test_missing_image(tmp_path):
    with pytest.raises(UserError, match="--image: file not found"):
        edit(tmp_path / "nope.png", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(UserError, match="--image: cannot read"):
        edit(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_target_prompt(source_image, tmp_path):
    with pytest.raises(UserError, match="--prompt-trg is empty"):
        main(["--image", str(source_image), "--prompt-trg", "  ", "--model", "tiny", "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_unknown_guidance(source_image, tmp_path):
    with pytest.raises(UserError, match="--guidance: unknown guidance 'xds'"):
        edit(source_image, tmp_path / "out", "--guidance", "xds")


def test_output_not_writable(source_image, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="--output: cannot write"):
        edit(source_image, blocker / "out")


def test_identical_prompts_warn(source_image, tmp_path):
    with pytest.warns(UserWarning, match="no-op"):
        main(["--image", str(source_image), "--prompt-src", "x", "--prompt-trg", "x", "--model", "tiny",
              "--size", "8", "--steps", "1", "--guidance", "dds", "--output", str(tmp_path / "o")])  # fmt: skip


def test_words_the_demo_prior_never_saw_are_named_with_its_vocabulary(source_image, tmp_path, capsys):
    main(["--image", str(source_image), "--prompt-src", "a photo of a red ball on a grey floor", "--prompt-trg",
          "a photo of a dragon made of lava", "--model", "demo", "--device", "cpu", "--size", "16", "--steps", "1",
          "--output", str(tmp_path / "o")])  # fmt: skip
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "does not know" in line]
    assert line.startswith("ids-edit-image: warning: prompt 'a photo of a dragon made of lava': the demo prior does "
                           "not know dragon, made, lava; it knows a, and, ball, blue, cube")  # fmt: skip


def test_console_script_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ids_nerfstudio.scripts.edit_image", "--image", str(tmp_path / "missing.png"),
         "--prompt-trg", "a dog", "--model", "tiny"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ids-edit-image: error: --image: file not found: {tmp_path}/missing.png"
    ]


def test_editor_scales_only_the_score_of_cds_as_the_official_editor(sd_prior):
    """Official CDS editor: z <- z - lr (2000/(h w) w_dds delta + w_cut grad_cut); the cut term is not rescaled."""
    from ids_nerfstudio.guidance import CDSConfig, DDSConfig
    from ids_nerfstudio.image_editor import optimise_latent

    z_src = make_latents(2, height=8, width=8)[0]
    prompts = ("a photo of a dog", "a photo of a cat")
    cds = CDSConfig(n_patches=10_000).setup(prior=sd_prior)
    z_1 = optimise_latent(cds, z_src, *prompts, steps=1, lr=0.1, grad_scale=2000.0, generator=torch_seed(0))
    # the same draws (t, then noise) give DDS's delta; the rest of CDS's gradient is w_cut * grad_cut
    delta = DDSConfig().setup(prior=sd_prior)(z_src, z_src, *prompts, generator=torch_seed(0)).grad
    cut = cds(z_src, z_src, *prompts, generator=torch_seed(0)).grad - delta
    scale = 2000.0 / 64
    expected = z_src - 0.1 * (scale * delta + cut)
    assert torch.allclose(z_1, expected, rtol=1e-4, atol=1e-4)
    whole_scaled = z_src - 0.1 * scale * (delta + cut)  # our old editor: the cut term scaled too
    assert (whole_scaled - expected).norm() > 0.1 * (expected - z_src).norm()


def torch_seed(seed):
    return torch.Generator().manual_seed(seed)


def test_the_gradient_scale_defaults_to_the_official_step_per_latent_element(source_image, tmp_path, monkeypatch):
    """2000 / (64 * 64) for Stable Diffusion at 512 px; the same per-element step, 125 / (16 * 16), offline."""
    import ids_nerfstudio.scripts.edit_image as edit_image_cli
    from ids_nerfstudio.image_editor import effective_grad_scale

    seen = []
    monkeypatch.setattr(edit_image_cli, "edit_image", lambda args, config: seen.append(effective_grad_scale(args)))
    edit(source_image, tmp_path / "o")
    edit(source_image, tmp_path / "o", "--grad-scale", "500")
    edit(source_image, tmp_path / "o", "--model", "some/hub-model")
    assert seen == [125.0, 500.0, 2000.0]  # that 125 is the official per-element step: tests/test_demo.py
    monkeypatch.undo()
    with pytest.raises(UserError, match="--grad-scale: must be a finite number > 0, got -1"):
        edit(source_image, tmp_path / "out", "--grad-scale", "-1")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
        (["--lr", "inf"], "--lr: must be a finite number > 0, got inf"),
        (["--lr", "0"], "--lr: must be a finite number > 0, got 0"),
        (["--grad-scale", "inf"], "--grad-scale: must be a finite number > 0, got inf"),
        (["--image-guidance-scale", "nan"], "--image-guidance-scale: must be a finite number >= 0, got nan"),
        (["--fpr-scale", "-1"], "--fpr-scale: must be a finite number >= 0, got -1"),
        (["cds", "--cut-weight", "nan"], "--cut-weight: must be a finite number >= 0, got nan"),
        (["cds", "--dds-weight", "inf"], "--dds-weight: must be a finite number >= 0, got inf"),
    ],
)
def test_numbers_that_are_not_finite_or_out_of_range_are_named(flags, message, source_image, tmp_path):
    command = flags[:1] if flags[0] == "cds" else []  # a guidance subcommand goes first
    with pytest.raises(UserError, match=message):
        main([*command, "--image", str(source_image), "--prompt-trg", "a dog", "--model", "tiny",
              "--output", str(tmp_path / "out"), *flags[len(command):]])  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_folder_as_the_image_is_named(tmp_path):
    with pytest.raises(UserError, match="is a folder; pass one image file"):
        edit(tmp_path, tmp_path / "out")


def test_a_diverging_edit_stops_with_one_line_and_writes_nothing(source_image, tmp_path):
    with pytest.raises(UserError, match=r"the edit diverged: non-finite guidance gradient at step \d+ .* lower --lr"):
        edit(source_image, tmp_path / "out", "--lr", "1e30", "--steps", "5")
    assert not (tmp_path / "out").exists()
