"""A short NeRF edit of the demo scene with the demo prior: the ball changes colour, the floor stays.

One reconstruction (``ns-train ids-edit-demo`` with no editing steps), then two editing runs from it, on the demo
prior and on the control: the demo prior with a random UNet of the same architecture (same VAE, text encoder,
steps and step per latent element; helpers.write_random_unet_demo). Each run's training views are rendered and
compared with the reconstruction's: the ball's colour inside its ray-traced mask, and the PSNR of everything else.
The control must fail the thresholds the demo prior passes, so they measure what the UNet learned.

Dataset-update editing from the same reconstruction and edit (in this file so that one pytest-xdist worker builds
them once): PDS's refinement stage after the IDS edit (SDEdits of the renders stored at the stage's start replace the
training views one every 10 steps; the ball must stay blue in most views and the rest be kept; the control prior
must fail that), and CSD's dataset update from the reconstruction (the DDS form on the text-only demo prior; the
control prior must fail the edit's thresholds).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nerfstudio")


from helpers import (  # noqa: E402
    DEMO_EDIT_STEPS,
    NERFSTUDIO_IMPORT_TIME_WARNINGS,
    blue_shift,
    demo_ns_train,
    describe,
    edit_results,
    passes,
    printed_warnings,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_scene, random_unet_demo, demo_reconstruction, demo_edit):
    """The scene, the reconstruction's config and the edit runs' configs (the demo prior's is shared: conftest)."""
    scene, workspace, reconstruction = demo_scene, tmp_path_factory.mktemp("demo-nerf"), demo_reconstruction
    models = reconstruction.parent / "nerfstudio_models"
    edit_flags = ["--data", scene, "--load-dir", models, "--max-num-iterations", DEMO_EDIT_STEPS]
    runs = {"random-unet": ["--pipeline.prior.model", random_unet_demo],
            "demo-auto-mask": ["--pipeline.prior.model", "demo", "--pipeline.mask.source", "auto"]}  # fmt: skip
    edits = {name: demo_ns_train(*edit_flags, "--output-dir", workspace / name, *flags) for name, flags in runs.items()}
    return scene, reconstruction, {"demo": demo_edit, **edits}


def test_the_runs_print_only_warnings_a_user_can_act_on(runs):
    """Python's default warning filters (demo_ns_train does not silence them): the reconstruction, the edit and the
    masked edit print no warning except the deprecations nerfstudio's own imports print before the plugin loads
    (the third-party ones raised later are filtered by module; a logged scalar carries no graph)."""
    _, reconstruction, edits = runs
    for config in (reconstruction, edits["demo"], edits["demo-auto-mask"]):
        (stderr,) = [parent / "stderr.txt" for parent in config.parents if (parent / "stderr.txt").is_file()][:1]
        printed = printed_warnings(stderr.read_text())
        unexpected = [warning for warning in printed if warning[:2] not in NERFSTUDIO_IMPORT_TIME_WARNINGS]
        assert not unexpected, f"{config}: {unexpected}"


def test_a_nerf_edit_on_the_demo_prior_recolours_the_ball_and_keeps_the_floor(runs):
    results = edit_results(runs, "demo")
    print("demo prior:", describe(results))  # shown by pytest -rA
    assert all(r.before == "red" for r in results), "the reconstruction shows the red ball"
    assert passes(results), describe(results)


def test_the_same_nerf_edit_with_a_random_unet_fails_those_thresholds(runs):
    results = edit_results(runs, "random-unet")
    print("random UNet:", describe(results))
    assert not passes(results), describe(results)


def keeps_the_rest_locally(results) -> bool:
    """The ball is blue in 3 of 4 views and the rest is kept to MASKED_REST_DB on average and in every view."""
    blue = np.mean([r.after == "blue" and blue_shift(r) > 0.2 for r in results])
    rest = [r.background_psnr for r in results]
    return bool(blue >= 0.75 and np.mean(rest) >= MASKED_REST_DB and min(rest) >= MASKED_REST_DB)


MASKED_REST_DB = 35.0
"""What a masked edit keeps outside the ball, on average and in its worst view (measured on 2 CPU cores with the
masks at the view's pixels, their edges following the view, the demo's 2^17 table and lr 6e-4: auto mask 38.2 dB,
worst view 35.9, ball blue in 11 of 11 views; no mask 27.0 dB, worst view 26.7, 11 of 11)."""


def test_the_auto_mask_keeps_the_rest_of_the_scene_where_the_unmasked_edit_does_not(runs):
    masked, unmasked = edit_results(runs, "demo-auto-mask"), edit_results(runs, "demo")
    print("auto mask:", describe(masked), "| no mask:", describe(unmasked))
    assert keeps_the_rest_locally(masked), describe(masked)
    assert not keeps_the_rest_locally(unmasked), describe(unmasked)


# ------------------------------------------------------------------------------------ dataset-update editing

REFINEMENT_STEPS = 120  # one SDEdit of each of the 11 training views (every 10 steps), then 10 steps on them
CSD_UPDATE = ["--max-num-iterations", 60, "--pipeline.dataset-update.mode", "csd"]
"""One joint CSD-Edit of every training view (the csd mode's defaults: 16 views a update, more than the 11, every
2000 steps, the demo methods' 20 iterations at CSD-Edit's lr 2.0), then 60 steps of training on them with fresh
optimizers. Measured (2-core CPU shared with 2 other jobs): 34 s a run; ball blue in 11 of 11 views, rest 33.8 dB;
the random-UNet control 0 of 11, 11.8 dB. Before the fix of the CSD step (the DDS editor's, 1/41 of CSD-Edit's), two
updates of 100 iterations were needed and took 3.7 min."""


@pytest.fixture(scope="module")
def refinement_runs(tmp_path_factory, demo_scene, random_unet_demo, demo_reconstruction, demo_edit):
    """The scene, the reconstruction's config and the edit and refinement runs' configs."""
    workspace = tmp_path_factory.mktemp("demo-dataset-update")
    refine = ["--data", demo_scene, "--load-dir", demo_edit.parent / "nerfstudio_models", "--max-num-iterations",
              DEMO_EDIT_STEPS, "--refinement-steps", REFINEMENT_STEPS]  # fmt: skip
    runs = {
        "edit": demo_edit,
        "refined": demo_ns_train(*refine, "--output-dir", workspace / "refined", "--pipeline.prior.model", "demo"),
        "refined-random-unet": demo_ns_train(*refine, "--output-dir", workspace / "refined-random-unet",
                                             "--pipeline.prior.model", random_unet_demo),
    }  # fmt: skip
    return demo_scene, demo_reconstruction, runs


REST_KEPT_DB = 2.0
"""How much of the rest's PSNR (to the reconstruction) a refinement may lose against the edit it refines. Measured
(2-core CPU, one run, 2^14 hash table and lr 3e-4): edit 33.3 dB, refined 33.3 dB, the random-UNet control 28.7 dB;
the control's SDEdits (the render plus structured noise from t <= 151) keep the ball's colour, so only the rest tells
it apart."""
REFINED_WORST_DB = 30.0
"""The rest a refinement keeps in its worst view. Measured (2-core CPU, one run, 2^17 table and lr 6e-4, whose
unmasked edit tints the floor: rest 27.0 dB, worst 26.7): refined 33.9 dB, worst 32.1; the random-UNet control
30.6 dB, worst 27.9 (its SDEdits remove the tint too, so REST_KEPT_DB alone no longer tells it apart)."""


def refinement_passes(results, edit) -> bool:
    """The edit's thresholds (``passes``), the rest kept to within REST_KEPT_DB of the edit's on average and to
    REFINED_WORST_DB in every view."""
    rest = [r.background_psnr for r in results]
    kept = np.mean(rest) >= np.mean([r.background_psnr for r in edit]) - REST_KEPT_DB
    return passes(results) and kept and min(rest) >= REFINED_WORST_DB


def test_refinement_of_a_demo_edit_keeps_the_ball_blue_and_the_rest(refinement_runs):
    edit, refined = edit_results(refinement_runs, "edit"), edit_results(refinement_runs, "refined")
    print("edit:", describe(edit), "| refined:", describe(refined))
    assert refinement_passes(refined, edit), describe(refined)


def test_the_same_refinement_with_a_random_unet_fails_those_thresholds(refinement_runs):
    edit, results = edit_results(refinement_runs, "edit"), edit_results(refinement_runs, "refined-random-unet")
    print("edit:", describe(edit), "| random UNet:", describe(results))
    assert not refinement_passes(results, edit), describe(results)


@pytest.fixture(scope="module")
def csd_update(tmp_path_factory, demo_scene, random_unet_demo, demo_reconstruction):
    """CSD's dataset update of the reconstruction on the demo prior and on the random-UNet control: (scene,
    reconstruction, {"csd-update": its config, "csd-update-random-unet": the control's})."""
    workspace = tmp_path_factory.mktemp("demo-csd-update")
    flags = ["--data", demo_scene, "--load-dir", demo_reconstruction.parent / "nerfstudio_models", *CSD_UPDATE]
    runs = {name: demo_ns_train(*flags, "--output-dir", workspace / name, "--pipeline.prior.model", model,
                                method="csd-edit-demo")
            for name, model in (("csd-update", "demo"), ("csd-update-random-unet", random_unet_demo))}  # fmt: skip
    return demo_scene, demo_reconstruction, runs


def test_a_csd_dataset_update_turns_the_ball_blue(csd_update):
    results = edit_results(csd_update, "csd-update")
    print("CSD dataset update:", describe(results))
    assert passes(results), describe(results)


def test_the_same_csd_update_with_a_random_unet_fails_those_thresholds(csd_update):
    results = edit_results(csd_update, "csd-update-random-unet")
    print("CSD dataset update, random UNet:", describe(results))
    assert not passes(results), describe(results)
