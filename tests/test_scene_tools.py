"""ids-eval and ids-compare on small edit runs, and ns-viewer of a finished run."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("nerfstudio")

from helpers import (  # noqa: E402
    EDIT,
    PROMPTS,
    SMALL_NERFACTO,
    checkpoints,
    free_port,
    ns_train,
    run,
    step_of,
)  # fmt: skip
from nerfstudio.utils.eval_utils import eval_setup  # noqa: E402

from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints  # noqa: E402
from ids_nerfstudio.demo.scene import write_demo_scene  # noqa: E402
from ids_nerfstudio.errors import UserError  # noqa: E402

allow_nerfstudio_checkpoints()  # the tests read nerfstudio checkpoints with torch.load, as ns-render does


def test_ids_eval_writes_metrics_table_and_contact_sheet(edit_run):
    from ids_nerfstudio.tools.scene_eval import EvalArgs, evaluate

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
    assert sheet.height == LABEL_HEIGHT + 2 * 192 and 5 * 192 < sheet.width < 5 * 192 + 160  # + titles
    assert report["reference"] == "reconstruction", "measured against the reconstruction the edit started from"
    after = {p: p.stat().st_mtime_ns for p in config.parent.rglob("*") if p.is_file()}
    changed = {p.name for p in after if before.get(p) != after[p]}
    assert changed <= {"metrics.json", "metrics.md", "contact_sheet.png"}, changed


def test_ids_eval_with_a_source_run_reports_depth_change(stock_run, scene, workspace):
    from ids_nerfstudio.tools.scene_eval import EvalArgs, evaluate

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

    from ids_nerfstudio.tools.scene_eval import _load_config

    not_configs = {"transforms.json": json.dumps({"frames": []}), "broken.yml": "a: [1\n", "image.png": b"\x89PNG\r\n"}
    for name, content in not_configs.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(UserError, match=f"--load-config: {path} is not a nerfstudio config.yml"):
            _load_config(path, "--load-config")


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
    from ids_nerfstudio.tools.scene_eval import EvalArgs, evaluate

    other_scene = write_demo_scene(workspace / "other-scene", size=24, views=5)
    other = workspace / "other-run"
    result = ns_train("ids-edit", other_scene, other, *PROMPTS, *EDIT, "--reconstruction-steps", "1",
                      "--max-num-iterations", "1", tmp=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (config,) = edit_run.rglob("config.yml")
    (other_config,) = other.rglob("config.yml")
    with pytest.raises(UserError, match="cameras differ"):
        evaluate(EvalArgs(load_config=config, source_config=other_config, gradient=False))


def test_ids_eval_uses_the_newest_readable_checkpoint_and_works_with_one_view(edit_run, workspace, capsys):
    from ids_nerfstudio.tools.scene_eval import EvalArgs, evaluate

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


def test_ids_compare_and_ids_eval_take_dataset_update_and_refinement_runs(stock_run, scene, workspace):
    """A --methods entry may carry its method's flags: a CSD dataset update and an edit followed by PDS's refinement
    run as two rows; ids-eval measures both and shows each run's edited training image in its contact sheet."""
    from PIL import Image

    from ids_nerfstudio.sheets import LABEL_HEIGHT

    update = ("ids-edit --pipeline.dataset-update.mode csd --pipeline.dataset-update.period 1 "
              "--pipeline.dataset-update.views-per-update 2 --pipeline.dataset-update.csd-iterations 1 "
              "--pipeline.dataset-update.size 16")  # fmt: skip
    refine = "ids-edit --refinement-steps 2 --pipeline.refinement.period 1 --pipeline.refinement.size 16"
    output = workspace / "compare-updates"
    base = [sys.executable, "-m", "ids_nerfstudio.scripts.compare", "--data", str(scene), *PROMPTS,
            "--load-dir", str(stock_run), "--max-num-iterations", "1", "--output-dir", str(output)]  # fmt: skip
    dry = run([*base, "--methods", update, refine, "--dry-run", "--", *EDIT, *SMALL_NERFACTO], tmp=workspace)
    assert dry.returncode == 0 and dry.stdout.count("--pipeline.dataset-update.mode csd") == 1, dry.stdout
    assert len({line.split("--output-dir ")[1].split()[0] for line in dry.stdout.splitlines()}) == 2
    twice = run([*base, "--methods", refine, refine], tmp=workspace)
    assert twice.returncode == 2 and "would share a run folder" in twice.stderr
    result = run([*base, "--methods", update, refine, "--", *EDIT, *SMALL_NERFACTO], tmp=workspace, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((output / "comparison.json").read_text())
    assert list(table) == [update, refine]
    assert all(math.isfinite(row["clip_score"]) and math.isfinite(row["background_psnr"]) for row in table.values())
    for run_dir in (config.parent for config in output.rglob("config.yml")):
        assert len(list((run_dir / "edited_images").glob("*.png"))) == 2
        sheet = Image.open(run_dir / "contact_sheet.png")
        # source image | reconstruction | edit | depth | gradient | edited training image, 24 px tiles enlarged 8x
        assert 6 * 192 < sheet.width < 6 * 192 + 160 and sheet.height > LABEL_HEIGHT + 192
