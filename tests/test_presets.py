"""``--preset paper``: the IDS paper's setting, and a conflicting flag refused before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.guidance import DDSConfig, IDSConfig, PDSConfig
from ids_nerfstudio.image_editor import ImageEditSettings
from ids_nerfstudio.presets import apply_preset
from ids_nerfstudio.scripts import edit_image


def settings(**kw):
    return ImageEditSettings(image=Path("x.png"), prompt_trg="a dog", prompt_src="a cat", preset="paper", **kw)


def test_paper_preset_is_the_papers_setting():
    s, g = apply_preset("paper", "ids", settings(), IDSConfig())
    assert (s.model, s.steps, s.lr, s.grad_scale, s.size) == ("CompVis/stable-diffusion-v1-4", 200, 0.1, 2000.0, 512)
    assert (g.guidance_scale, g.t_min, g.t_max, g.fpr_iters, g.fpr_scale) == (7.5, 0.05, 0.948, 3, 1.0)
    assert (g.fpr_distance, g.fpr_jacobian) == ("l2", "exact")


def test_paper_preset_keeps_a_baselines_own_guidance_settings():
    s, g = apply_preset("paper", "pds", settings(), PDSConfig())
    assert g == PDSConfig() and s.steps == 200 and s.grad_scale == 2000.0


def test_paper_preset_accepts_a_flag_that_agrees_and_none_changes_nothing():
    s, g = apply_preset("paper", "ids", settings(steps=200), IDSConfig(fpr_iters=3))
    assert s.steps == 200 and g.fpr_iters == 3
    plain = settings(steps=7)
    assert apply_preset("none", "dds", plain, DDSConfig()) == (plain, DDSConfig())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "100"], "--preset paper sets --steps 200; you gave --steps 100"),
        (["--fpr-jacobian", "identity"], "--preset paper sets --fpr-jacobian exact; you gave --fpr-jacobian identity"),
        (["--model", "demo"], "--preset paper sets --model CompVis/stable-diffusion-v1-4; you gave --model demo"),
    ],
)
def test_paper_preset_refuses_a_conflicting_flag(tmp_path, argv, message):
    image = tmp_path / "x.png"
    image.write_bytes(b"")  # never read: the preset is checked first
    base = ["ids", "--image", str(image), "--prompt-src", "a cat", "--prompt-trg", "a dog", "--preset", "paper"]
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        edit_image.main([*base, *argv])
