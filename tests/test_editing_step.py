"""The editing step in process, against oracles: nerfstudio's training loop applies it (autocast, grad scaler,
gradient accumulation), its gradients equal the formulas written out, its regularizers, masks and viewer controls."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("nerfstudio")

from helpers import (  # noqa: E402
    check_live_viewer,
    feathered_left_half,
    fixed_guidance,
    parameter_grads,
)  # fmt: skip
from torch.testing import assert_close  # noqa: E402

from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints  # noqa: E402
from ids_nerfstudio.models.nerfacto_rendering import backpropagate_rgb, render_rgb, view_rays  # noqa: E402

allow_nerfstudio_checkpoints()  # the tests read nerfstudio checkpoints with torch.load, as ns-render does


def _edit_step_grads(pipeline, step, render_mode):
    """Parameter gradients of one editing step, with the view and guidance draws reset to the same seeds."""
    pipeline.config.render_mode = render_mode
    pipeline.datamanager.reset_edit_views(seed=0)
    pipeline.generator.manual_seed(0)
    pipeline.model.zero_grad()
    torch.manual_seed(0)  # the regularizer ray batch
    assert pipeline.edit_step(step) is not None
    return {name: p.grad.clone() for name, p in pipeline.model.named_parameters() if p.grad is not None}


def nerfacto_losses_of_the_first_rays(pipeline, step: int, count: int):
    """nerfstudio's own outputs and get_loss_dict on the first ``count`` rays of the step's training batch (drawn
    under seed 0, as the tests draw the step's), with the model's gradients zeroed first."""
    pipeline.model.zero_grad()
    torch.manual_seed(0)
    ray_bundle, batch = pipeline.datamanager.next_train(step)
    batch = {key: value[:count] if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    outputs = pipeline.model(ray_bundle[:count])
    return outputs, batch, pipeline.model.get_loss_dict(outputs, batch, pipeline.model.get_metrics_dict(outputs, batch))


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


def test_pipeline_edit_step_is_the_same_with_deferred_and_full_graph_rendering(edit_pipeline):
    edit_pipeline.model.set_editing(True)
    step = int(edit_pipeline.edit_start_step) + 7
    full = _edit_step_grads(edit_pipeline, step, "full-graph")
    deferred = _edit_step_grads(edit_pipeline, step, "deferred")
    assert full.keys() == deferred.keys() and any(g.abs().sum() > 0 for g in full.values())
    for name in full:
        assert_close(deferred[name], full[name], rtol=1e-3, atol=1e-6, msg=name)
    assert not any("camera_optimizer" in name or "embedding_appearance" in name for name in full), "frozen"


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
            pipeline.datamanager.reset_edit_views(seed=0)  # the same two views in both modes
            model.zero_grad()
            assert pipeline.edit_step(int(pipeline.edit_start_step) + 3) is not None
            views = pipeline.datamanager.current_edit_views
            results[mode] = (views, parameter_grads(model), seen["z_src"], seen["grad"])

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


@pytest.mark.parametrize("grow", [0, 2])
def test_with_a_mask_the_regularizer_rays_also_fit_their_images_outside_it(edit_pipeline, tmp_path, monkeypatch, grow):
    """Masks white on each view's left half, zero guidance: the step applies the gradient of interlevel +
    distortion + w * mean_i((1 - m_i) * mean_c (rgb_ic - image_ic)^2) on the first 32 rays, m_i written here as the
    value of the ray's view's mask at its pixel, grown by --pipeline.mask.view-dilation (0 or 2 pixels) and its edge
    feathered by --pipeline.mask.view-feather (1 pixel)."""
    from PIL import Image

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
    monkeypatch.setattr(pipeline.config.mask, "view_dilation", grow)
    pipeline.masks.clear()
    model.set_editing(True)
    step = int(pipeline.edit_start_step) + 7
    model.zero_grad()
    torch.manual_seed(0)
    scalars = pipeline.edit_step(step)
    ours = parameter_grads(model)
    assert "keep_rgb_loss" in scalars

    outputs, batch, losses = nerfacto_losses_of_the_first_rays(pipeline, step, 32)
    weights = 0.6 * (1 - feathered_left_half(white=12 + grow)[batch["indices"][:, 2]])
    assert (weights < 0.01).any() and (weights > 0.5).any(), "rays inside and outside the masks"
    error = (outputs["rgb"] - batch["image"][..., :3]).pow(2).mean(-1)
    (losses["interlevel_loss"] + losses["distortion_loss"] + (weights * error).mean()).backward()
    expected = parameter_grads(model)
    for name, value in ours.items():
        assert_close(value, expected.get(name, torch.zeros_like(value)), rtol=1e-4, atol=1e-7, msg=name)


def test_keep_target_reconstruction_fits_the_rays_outside_the_mask_to_the_scene_as_the_edit_started(
    edit_pipeline, tmp_path, monkeypatch
):
    """--pipeline.keep-target reconstruction: the colour loss of the test above with each ray's image colour
    replaced by the render of the same ray (same mode, drawn right after the model's own) by the model as it was in
    the run's reconstruction.ckpt, written here before the model is changed; the kept copy is not the model (the
    step leaves it as it was) and the loss's target differs from both the images and the model's render."""
    from PIL import Image

    pipeline, model = edit_pipeline, edit_pipeline.model
    original = {name: value.clone() for name, value in model.state_dict().items()}
    mask = np.zeros((24, 24), dtype=np.uint8)
    mask[:, :12] = 255
    for name in pipeline.datamanager.train_dataset.image_filenames:
        Image.fromarray(mask).save(tmp_path / f"{Path(name).stem}.png")
    monkeypatch.setattr(pipeline.guidance, "forward", fixed_guidance({"scale": 0.0}))
    monkeypatch.setattr(pipeline.config.mask, "source", str(tmp_path))
    monkeypatch.setattr(pipeline.config, "regularizer_rays", 32)
    monkeypatch.setattr(pipeline.config, "keep_outside_mask", 0.6)
    monkeypatch.setattr(pipeline.config, "keep_target", "reconstruction")
    monkeypatch.setattr(pipeline.config.mask, "view_dilation", 0)
    pipeline.masks.clear()
    model.set_editing(True)
    checkpoint = tmp_path / "reconstruction.ckpt"
    torch.save({"step": 0, "pipeline": {f"_model.{k}": v for k, v in original.items()}}, checkpoint)
    try:
        with torch.no_grad():  # the scene moves on after the reconstruction was kept
            for parameter in model.field.mlp_head.parameters():
                parameter.add_(0.2 * torch.randn_like(parameter))
        pipeline.freeze_reconstruction(checkpoint)
        kept = pipeline.reconstruction
        assert kept is not model and not any(p.requires_grad for p in kept.parameters())
        step = int(pipeline.edit_start_step) + 7
        model.zero_grad()
        torch.manual_seed(0)
        scalars = pipeline.edit_step(step)
        ours = parameter_grads(model)
        for name, value in kept.state_dict().items():
            assert_close(value, original[name], msg=name)

        model.zero_grad()
        torch.manual_seed(0)
        ray_bundle, batch = pipeline.datamanager.next_train(step)
        batch = {key: value[:32] if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        outputs = model(ray_bundle[:32])
        losses = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
        with torch.no_grad():
            target = kept(ray_bundle[:32])["rgb"]  # its state is the checkpoint's (checked above)
        weights = 0.6 * (1 - feathered_left_half()[batch["indices"][:, 2]])
        assert (target - batch["image"][..., :3]).abs().max() > 0.05, "the render is not the image"
        assert (target - outputs["rgb"]).abs().max() > 0.05, "the kept scene is not the changed one"
        error = (outputs["rgb"] - target).pow(2).mean(-1)
        assert_close(scalars["keep_rgb_loss"], (weights * error).mean().detach())
        (losses["interlevel_loss"] + losses["distortion_loss"] + (weights * error).mean()).backward()
        expected = parameter_grads(model)
        for name, value in ours.items():
            assert_close(value, expected.get(name, torch.zeros_like(value)), rtol=1e-4, atol=1e-7, msg=name)
    finally:
        model.load_state_dict(original)
        pipeline.__dict__["reconstruction"] = None


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
    monkeypatch.setattr(edit_trainer, "editing", False)
    camera_lrs = list(edit_trainer.optimizers.schedulers["camera_opt"].base_lrs)
    edit_trainer.train_iteration(int(edit_trainer.pipeline.edit_start_step) + 3)
    for group in ("fields", "proposal_networks"):
        assert edit_trainer.optimizers.schedulers[group].base_lrs == [3e-4]
        assert 2.9e-4 < edit_trainer.optimizers.optimizers[group].param_groups[0]["lr"] <= 3e-4
    assert edit_trainer.optimizers.schedulers["camera_opt"].base_lrs == camera_lrs, "cameras keep theirs"


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
    pipeline.masks.clear()
    pipeline.edit_step(int(pipeline.edit_start_step))
    indices, mask = pipeline.datamanager.current_edit_views, seen["mask"]
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
    from ids_nerfstudio.editing import masks as masks_module

    pipeline, calls = edit_pipeline, []
    real = masks_module.view_mask
    monkeypatch.setattr(masks_module, "view_mask", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    monkeypatch.setattr(pipeline.guidance, "forward", fixed_guidance({}))
    monkeypatch.setattr(pipeline.config.mask, "source", "auto")
    monkeypatch.setattr(pipeline.config, "regularizer_rays", 0)
    monkeypatch.setattr(pipeline.datamanager.config, "views_per_step", 1)
    monkeypatch.setattr(pipeline.datamanager.config, "change_view_every", 100)
    pipeline.masks.clear()
    start = int(pipeline.edit_start_step)
    pipeline.edit_step(start)
    pipeline.edit_step(start + 1)
    assert calls == [pipeline.config.prompt_src], "one view, two steps: one mask"
    monkeypatch.setattr(pipeline.config, "prompt_trg", pipeline.config.prompt_trg + " and limes")  # as the viewer's box
    pipeline.edit_step(start + 2)
    assert len(calls) == 2


# ----------------------------------------------------------------------------------- nerfstudio's training loop


class ScalerSpy:
    """nerfstudio's grad scaler, recording every loss it is asked to scale."""

    def __init__(self, scaler) -> None:
        self.scaler, self.scaled = scaler, []

    def scale(self, loss):
        self.scaled.append(loss.detach().clone())
        return self.scaler.scale(loss)

    def __getattr__(self, name):
        return getattr(self.scaler, name)


def test_mixed_precision_runs_an_editing_step_under_autocast_and_through_the_grad_scaler(edit_trainer, monkeypatch):
    """nerfstudio turns mixed precision off on a CPU at construction; set after it, its ``train_iteration`` enters
    autocast: the editing losses are computed inside it, the model's own backward (the deferred re-render) runs
    under it too, and the loss the grad scaler scales is the sum of the editing losses."""
    trainer, pipeline = edit_trainer, edit_trainer.pipeline
    seen = {"losses": [], "backward": []}
    edit_losses, backpropagate = pipeline.edit_losses, pipeline.model.backpropagate_edit_views

    def losses_spy(step):
        seen["losses"].append(torch.is_autocast_enabled("cpu"))
        result = edit_losses(step)
        seen["sum"] = sum(result[0].values()).detach().float()
        return result

    def backward_spy(views, image_grad):
        seen["backward"].append(torch.is_autocast_enabled("cpu"))
        return backpropagate(views, image_grad)

    monkeypatch.setattr(pipeline, "edit_losses", losses_spy)
    monkeypatch.setattr(pipeline.model, "backpropagate_edit_views", backward_spy)
    monkeypatch.setattr(pipeline.config, "render_mode", "deferred")
    monkeypatch.setattr(trainer, "mixed_precision", True)
    monkeypatch.setattr(trainer, "grad_scaler", ScalerSpy(trainer.grad_scaler))
    trainer.train_iteration(int(pipeline.edit_start_step) + 13)
    assert seen["losses"] == [True] and seen["backward"] == [True]
    assert len(trainer.grad_scaler.scaled) == 1
    assert_close(trainer.grad_scaler.scaled[0].float(), seen["sum"])

    monkeypatch.setattr(trainer, "mixed_precision", False)
    trainer.train_iteration(int(pipeline.edit_start_step) + 14)
    assert seen["losses"] == [True, False] and seen["backward"] == [True, False], "the flag is what decides"


def test_gradient_accumulation_accumulates_editing_steps_as_it_does_reconstruction_steps(edit_trainer, monkeypatch):
    """With --gradient-accumulation-steps fields 2 the fields' optimizer steps every second editing step, on the sum
    of the two steps' gradients: the gradient after the second equals the first's plus the second step computed
    alone (learning rates 0, so the parameters, and with them each step's gradient, stay put)."""
    trainer, pipeline = edit_trainer, edit_trainer.pipeline
    model, optimizers = pipeline.model, trainer.optimizers
    monkeypatch.setitem(trainer.gradient_accumulation_steps, "fields", 2)
    monkeypatch.setattr(pipeline.datamanager.config, "change_view_every", 1000)  # one view for the test
    monkeypatch.setattr(pipeline.config, "regularizer_rays", 0)
    for name, optimizer in optimizers.optimizers.items():
        for group in optimizer.param_groups:
            monkeypatch.setitem(group, "lr", 0.0)
        scheduler = optimizers.schedulers.get(name)
        if scheduler is not None:
            monkeypatch.setattr(scheduler, "base_lrs", [0.0] * len(scheduler.base_lrs))
    field = dict(model.named_parameters())
    names = [name for name, p in field.items() if name.startswith("field.mlp_head") and p.requires_grad]
    fields_optimizer = optimizers.optimizers["fields"]

    def adam_steps() -> list[int]:
        return [int(fields_optimizer.state[field[n]].get("step", 0)) if field[n] in fields_optimizer.state else 0
                for n in names]  # fmt: skip

    step = int(pipeline.edit_start_step) + 20  # even: nerfstudio zeroes the fields' gradients before it
    steps_before = adam_steps()
    trainer.train_iteration(step)
    first = {n: field[n].grad.clone() for n in names}
    assert adam_steps() == steps_before, "no optimizer step after the first of two"
    assert any(g.abs().sum() > 0 for g in first.values())

    generator, torch_rng = pipeline.generator.get_state(), torch.get_rng_state()
    trainer.train_iteration(step + 1)
    accumulated = {n: field[n].grad.clone() for n in names}
    assert adam_steps() == [s + 1 for s in steps_before], "one optimizer step for two editing steps"

    pipeline.generator.set_state(generator)
    torch.set_rng_state(torch_rng)
    model.zero_grad()
    assert pipeline.edit_step(step + 1) is not None
    for name in names:
        assert_close(accumulated[name], first[name] + field[name].grad, rtol=1e-4, atol=1e-8, msg=name)


def test_the_mask_cache_is_bounded_and_keeps_the_newest(edit_pipeline, monkeypatch):
    """A viewer session that tries many prompt pairs: the cache never holds more than its capacity and drops the
    least recently used first."""
    masks = edit_pipeline.masks
    monkeypatch.setattr(masks, "capacity", 3)
    monkeypatch.setattr(edit_pipeline.config.mask, "source", "auto")
    masks.clear()
    z_src = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for k in range(5):
        masks.latent_masks([0], z_src, f"a photo of {k} oranges", "a photo of balls")
        assert len(masks) == min(k + 1, 3)
    computed = []
    monkeypatch.setattr(masks, "view_mask", lambda *args: computed.append(args[3]) or torch.zeros(1, 1, 8, 8))
    masks.latent_masks([0], z_src, "a photo of 4 oranges", "a photo of balls")
    masks.latent_masks([0], z_src, "a photo of 0 oranges", "a photo of balls")
    assert computed == ["a photo of 0 oranges"], "the newest are cached, the oldest was dropped"
    masks.clear()


def test_a_save_that_fails_midway_is_one_line_leaves_no_partial_file_and_keeps_the_older_checkpoint(
    edit_trainer, capsys, tmp_path, monkeypatch
):
    """A real write failure: the file-size limit (RLIMIT_FSIZE) set below the checkpoint's size makes torch.save
    fail halfway, as a full disk does."""
    import resource
    import signal

    trainer = edit_trainer
    monkeypatch.setattr(trainer, "checkpoint_dir", tmp_path / "run" / "nerfstudio_models")
    step = int(trainer.pipeline.edit_start_step) + 30
    trainer.save_checkpoint(step)
    older = trainer.checkpoint_dir / f"step-{step:09d}.ckpt"
    failing = trainer.checkpoint_dir / f"step-{step + 1:09d}.ckpt"
    capsys.readouterr()
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (older.stat().st_size // 2, hard))
    try:
        with pytest.raises(SystemExit) as exited:
            trainer.save_checkpoint(step + 1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"could not save {failing}" in lines[0] and "older checkpoints are kept" in lines[0]
    assert not failing.exists() and not list(trainer.checkpoint_dir.parent.rglob("*.partial*"))
    assert torch.load(older, map_location="cpu")["step"] == step, "the older checkpoint loads"


def test_view_points_lie_on_each_pixels_ray_at_nerfstudios_rendered_depth(edit_pipeline):
    """nerfacto's ``view_points`` (the contract's, for fused masks): each point projects back into its own pixel and
    lies at the distance nerfstudio's own evaluation render of the camera gives as its depth."""
    from ids_nerfstudio.editing.masks import project_points

    model = edit_pipeline.model
    camera = edit_pipeline.datamanager.train_dataset.cameras[1:2].to(model.device)
    points = model.view_points(camera)
    assert model.training, "view_points leaves the model in training mode"
    height, width = int(camera.height), int(camera.width)
    assert points.shape == (height, width, 3)
    row, column, inside = project_points(points.reshape(-1, 3), camera)
    assert inside.all() and torch.equal(row * width + column, torch.arange(height * width))
    model.eval()
    try:
        with torch.no_grad():
            depth = model.get_outputs_for_camera(camera)["depth"][..., 0]
    finally:
        model.train()
    origin = camera.camera_to_worlds[0, :, 3]
    assert_close((points - origin).norm(dim=-1), depth, rtol=1e-4, atol=1e-5)
