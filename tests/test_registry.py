"""One owner for each thing: the method registry, the prompts and the error contract."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import tyro

from ids_nerfstudio.errors import UserError, exit_on_user_error
from ids_nerfstudio.guidance import GUIDANCE_METHODS, nerfstudio_method_names

pytest.importorskip("nerfstudio")

from ids_nerfstudio.method_configs import METHOD_SPECIFICATIONS  # noqa: E402
from ids_nerfstudio.models.splatfacto import EditSplatfactoModelConfig  # noqa: E402
from ids_nerfstudio.prior import StableDiffusionPriorConfig  # noqa: E402


def test_every_registered_guidance_is_a_nerfstudio_method_with_an_installed_entry_point():
    variants = ("-edit", "-edit-demo", "-splat-edit", "-splat-edit-demo")
    expected = {f"{name}{variant}" for name in GUIDANCE_METHODS for variant in variants}
    assert set(METHOD_SPECIFICATIONS) == expected == set(nerfstudio_method_names())
    installed = entry_points(group="nerfstudio.method_configs")
    ours = {ep.name for ep in installed if ep.value.startswith("ids_nerfstudio.")}
    assert ours == expected, "re-install (pip install -e .) after changing GUIDANCE_METHODS"
    for name, method in GUIDANCE_METHODS.items():
        spec = installed[f"{name}-edit"].load()
        assert spec is METHOD_SPECIFICATIONS[f"{name}-edit"] and spec.config.method_name == f"{name}-edit"
        assert type(spec.config.pipeline.guidance) is method.config
        assert spec.config.pipeline.datamanager.views_per_step == method.views_per_step
        assert type(spec.config.pipeline.prior) is method.prior, "the registry entry owns the prior choice"
        demo = installed[f"{name}-edit-demo"].load().config
        assert demo.pipeline.prior.model == "demo" and type(demo.pipeline.guidance) is method.config
        for variant, prior in (("-splat-edit", method.prior), ("-splat-edit-demo", StableDiffusionPriorConfig)):
            splat = installed[f"{name}{variant}"].load().config
            assert isinstance(splat.pipeline.model, EditSplatfactoModelConfig), variant
            assert type(splat.pipeline.guidance) is method.config and type(splat.pipeline.prior) is prior
            assert splat.pipeline.datamanager.views_per_step == method.views_per_step


def test_every_registered_guidance_is_a_2d_editor_subcommand(monkeypatch):
    import ids_nerfstudio.scripts.edit_image as image_edit

    seen = []
    monkeypatch.setattr(image_edit, "edit_image", lambda args, config: seen.append((args.guidance, type(config))))
    for name in GUIDANCE_METHODS:
        image_edit.main([name, "--image", "x.png", "--prompt-trg", "a dog"])
        image_edit.main(["--image", "x.png", "--prompt-trg", "a dog", "--guidance", name])  # the older spelling
    image_edit.main(["--image", "x.png", "--prompt-trg", "a dog"])
    expected = [(name, method.config) for name, method in GUIDANCE_METHODS.items() for _ in range(2)]
    assert seen == [*expected, ("ids", GUIDANCE_METHODS["ids"].config)]


@pytest.mark.parametrize("flag", ["--prompt-trg", "--pipeline.prompt-trg"])
def test_the_target_prompt_has_one_owner_whichever_flag_sets_it(flag):
    from nerfstudio.configs.method_configs import all_methods

    if "ids-edit" not in all_methods:
        pytest.skip("the plugin's entry points are not installed")
    command = tyro.extras.subcommand_type_from_defaults({"ids-edit": all_methods["ids-edit"]})
    config = tyro.cli(command, args=["ids-edit", flag, "a photo of a grizzly bear", "--prompt-src", "a bear statue"])
    assert config.pipeline.prompt_trg == "a photo of a grizzly bear"
    assert config.pipeline.prompt_src == "a bear statue"
    assert not hasattr(config, "prompt_trg"), "no second copy on the trainer config"


def test_a_user_error_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info, exit_on_user_error("ids-tool"):
        raise UserError("--flag: bad value; pass a good one")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "ids-tool: error: --flag: bad value; pass a good one\n"
    with pytest.raises(ValueError), exit_on_user_error("ids-tool"):  # anything else is a bug: a traceback
        raise ValueError("not a user error")
