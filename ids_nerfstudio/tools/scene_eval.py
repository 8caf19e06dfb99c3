"""Measure an edited nerfstudio run with the metrics of the papers (the library behind ``ids-eval``)::

    ids-eval --load-config outputs/scene/ids-edit/<timestamp>/config.yml [--source-config SOURCE/config.yml]

``evaluate(EvalArgs(...))`` writes ``metrics.json``, ``metrics.md`` and ``contact_sheet.png`` (source image |
reconstruction | edit | mask | depth | guidance gradient | a dataset-update run's edited training image) into the run
folder; nothing else there is touched, and each file is written atomically. The edit is measured against the
reconstruction it started from (``reconstruction.ckpt``, kept by ns-train), or against ``--source-config``'s run, or
else against the dataset's images.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from jaxtyping import Float
from nerfstudio.cameras.camera_paths import get_interpolated_camera_path
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.eval_utils import eval_setup
from torch import Tensor
from tqdm.auto import tqdm

from ids_nerfstudio.checkpoints import (
    UnreadableCheckpoint,
    checkpoint_step,
    latest_checkpoint,
    newest_readable_checkpoint,
    read_checkpoint,
    reconstruction_path,
)
from ids_nerfstudio.editing.dataset_update import EDITED_IMAGES
from ids_nerfstudio.editing.pipeline import EditPipeline, EditPipelineConfig
from ids_nerfstudio.errors import UserError, first_line
from ids_nerfstudio.eval.edit_metrics import EditMetrics
from ids_nerfstudio.eval.metrics import background_mask, consecutive_similarity, depth_change, psnr
from ids_nerfstudio.files import write_atomic
from ids_nerfstudio.images import as_batch, load_image, resize_images, to_pil, to_tensor
from ids_nerfstudio.models.lpips import lazy_lpips
from ids_nerfstudio.sheets import labelled_grid


@dataclass
class EvalArgs:
    """Measure an edited run: CLIP score and direction, LPIPS/PSNR/background PSNR to the source, consistency."""

    load_config: Path
    """config.yml of the edit run (ns-train ids-edit, dds-edit, ...)."""
    source_config: Path | None = None
    """config.yml of the source reconstruction (default: the reconstruction the edit started from, which ns-train
    keeps as reconstruction.ckpt beside the run's checkpoints; the dataset's images if there is none)."""
    clip_model: str | None = None
    """CLIP hub id or local folder, or demo / tiny (default openai/clip-vit-large-patch14; the demo or tiny CLIP when
    the run used that prior)."""
    lpips_net: str | None = None
    """LPIPS network: alex, vgg or squeeze (default alex; tiny when the run used the tiny prior)."""
    split: Literal["eval", "train"] = "eval"
    """Views measured and shown: nerfstudio's held-out evaluation views (the training views when there are none),
    or the training views, those the scene was reconstructed from (a small scene's held-out views can be
    reconstructed poorly, and the edit inherits that)."""
    max_views: int = 8
    """Views rendered, spread evenly over the split."""
    path_steps: int = 3
    """Frames per transition of the camera path through those views (multi-view consistency)."""
    sheet_views: int = 3
    """Views shown in the contact sheet."""
    gradient: bool = True
    """Show the guidance gradient magnitude in the contact sheet (loads the run's diffusion model)."""


def _load_config(path: Path, flag: str):
    """The run's config, with ``load_step`` pinned to its newest readable checkpoint."""
    if not path.is_file():
        raise UserError(f"{flag}: {path} does not exist")
    try:
        config = yaml.load(path.read_text(), Loader=yaml.Loader)
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        reason = first_line(error)
        raise UserError(f"{flag}: {path} is not a nerfstudio config.yml ({type(error).__name__}: {reason})") from error
    if not isinstance(config, TrainerConfig):
        raise UserError(f"{flag}: {path} is not a nerfstudio config.yml (outputs/<scene>/<method>/<time>/config.yml)")
    checkpoint_dir = config.get_checkpoint_dir()
    if not checkpoint_dir.is_dir() or latest_checkpoint(checkpoint_dir) is None:
        raise UserError(f"{flag}: {path} has no checkpoint in {checkpoint_dir} (did the run save one?)")
    found = newest_readable_checkpoint(checkpoint_dir)  # a truncated newest one is skipped with a warning
    if found is None:
        raise UserError(f"{flag}: no checkpoint in {checkpoint_dir} is readable (all truncated?)")
    config.load_step = checkpoint_step(found[0])
    return config


def _setup(path: Path, config) -> Any:
    """nerfstudio's eval_setup of a run, loading the checkpoint ``_load_config`` chose."""
    _, pipeline, _, _ = eval_setup(path, test_mode="test", update_config_callback=lambda c: _pin_step(c, config))
    return pipeline


def _pin_step(loaded, checked):
    loaded.load_step = checked.load_step
    return loaded


def _reconstruction(path: Path, config) -> Any | None:
    """The edit run's pipeline with the state its edit started from (``reconstruction.ckpt``), or None."""
    saved = reconstruction_path(config.get_checkpoint_dir())
    if not saved.is_file():
        return None
    try:
        state = read_checkpoint(saved)
    except UnreadableCheckpoint as error:
        print(f"warning: ignoring unreadable {saved} ({error})", file=sys.stderr, flush=True)
        return None
    pipeline = _setup(path, config)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    return pipeline


def _views(pipeline: EditPipeline, max_views: int, split: str = "eval") -> tuple[InputDataset, list[int]]:
    """The views to evaluate, spread evenly over the split (the training views when the evaluation split is empty)."""
    dataset = pipeline.datamanager.eval_dataset
    if split == "train" or dataset is None or len(dataset) == 0:
        dataset = pipeline.datamanager.train_dataset
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(max_views, len(dataset))).round().astype(int))
    return dataset, [int(i) for i in indices]


@torch.no_grad()
def _render(pipeline: EditPipeline, camera: Cameras) -> tuple[Tensor, Tensor]:
    """(1, 3, H, W) rgb and (1, H, W) expected depth of a camera."""
    outputs = pipeline.model.get_outputs_for_camera(camera.to(pipeline.device))
    return outputs["rgb"].permute(2, 0, 1)[None].clamp(0, 1).cpu(), outputs["depth"][..., 0][None].cpu()


def _depth_image(depth: Float[Tensor, "1 H W"]) -> Float[Tensor, "1 3 H W"]:
    """Expected depth as a (1, 3, H, W) image of inverse depth (bright = near), from black to yellow between its
    1st and 99th percentile: far floaters in the sky would otherwise take the whole range and flatten the floor."""
    inverse = 1 / depth.float().clamp(min=1e-6)
    low, high = torch.quantile(inverse.flatten(), torch.tensor([0.01, 0.99]))
    return _colormap(torch.maximum(torch.minimum(inverse, high), low))


def _colormap(values: Float[Tensor, "1 H W"]) -> Float[Tensor, "1 3 H W"]:
    """Values to a grey-to-yellow image, normalised to their own range."""
    v = (values - values.min()) / (values.max() - values.min()).clamp(min=1e-12)
    return torch.stack([v, v, v * 0.3], dim=1)


def number(value: float | None) -> str:
    """A metric for a table: 4 significant digits, or n/a."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _markdown(summary: dict[str, float | None], per_view: list[dict]) -> str:
    keys = [k for k in per_view[0] if k != "view"]
    lines = ["| view | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in per_view:
        lines.append(f"| {row['view']} | " + " | ".join(number(row[k]) for k in keys) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{number(summary[k])}**" for k in keys) + " |")
    lines.append("")
    lines.append(f"Multi-view consistency along the camera path: CLIP {number(summary['consistency_clip'])}, "
                 f"LPIPS {number(summary['consistency_lpips'])} (consecutive frames; n/a with one view).")  # fmt: skip
    return "\n".join(lines) + "\n"


@dataclass
class SheetRow:
    """One view of the contact sheet: its tiles by column name, and the camera they were rendered from."""

    view: int
    camera: Cameras
    tiles: dict[str, Tensor]

    @property
    def title(self) -> str:
        """``view N``, and how far the reconstruction is from the image (its PSNR) when the row shows both."""
        if "reconstruction" not in self.tiles:
            return f"view {self.view}"
        fidelity = float(psnr(self.tiles["reconstruction"], self.tiles["source image"])[0])
        return f"view {self.view}, {fidelity:.1f} dB"


def evaluate(args: EvalArgs) -> Path:
    """Run the evaluation; returns the run folder that received metrics.json, metrics.md and contact_sheet.png."""
    config = _load_config(args.load_config, "--load-config")
    if not isinstance(config.pipeline, EditPipelineConfig):
        raise UserError(f"--load-config: {args.load_config} is a {config.method_name} run, not an edit run")
    source_config = _load_config(args.source_config, "--source-config") if args.source_config else None
    metrics = EditMetrics.for_prior(config.pipeline.prior.model, args.clip_model, args.lpips_net)  # before rendering

    pipeline: EditPipeline = _setup(args.load_config, config)
    dataset, indices = _views(pipeline, args.max_views, args.split)
    split = "evaluation" if dataset is pipeline.datamanager.eval_dataset else "training"
    print(f"ids-eval: {len(indices)} {split} view(s) of {len(dataset)}: {indices}")
    source_pipeline, reference = _source(args, config, source_config, dataset)
    print(f"ids-eval: the edit is compared with {reference}")

    per_view, sheet = _measure_views(pipeline, source_pipeline, dataset, indices, metrics, args.sheet_views)
    summary = {key: float(np.nanmean([row.get(key, math.nan) for row in per_view])) for key in per_view[0]}
    summary.pop("view")
    summary.update(_consistency(pipeline, dataset, indices, metrics, args.path_steps))
    summary["views"] = len(per_view)
    if args.gradient:
        for row in sheet:
            before = row.tiles.get("reconstruction", row.tiles["source image"])
            row.tiles["guidance gradient"] = _gradient_image(pipeline, row.camera, before, row.tiles["edit"])
    edited = sorted((args.load_config.parent / EDITED_IMAGES).glob("[0-9]*.png"))
    if edited:  # a dataset-update run: the edited training image nearest each sheet view (the same view if trained)
        for row in sheet:
            row.tiles["edited training image"] = _nearest_edited_image(pipeline, edited, row)
    columns = list(sheet[0].tiles)
    contact = labelled_grid([[to_pil(row.tiles[c]) for c in columns] for row in sheet], columns,
                            [row.title for row in sheet])  # fmt: skip

    run_dir = args.load_config.parent
    report = {"prompt_src": config.pipeline.prompt_src, "prompt_trg": config.pipeline.prompt_trg,
              "reference": reference, "mean": summary, "views": per_view}  # fmt: skip
    write_atomic(run_dir / "metrics.json", lambda p: p.write_text(json.dumps(report, indent=2)))
    write_atomic(run_dir / "metrics.md", lambda p: p.write_text(_markdown(summary, per_view)))
    write_atomic(run_dir / "contact_sheet.png", lambda p: contact.save(p, format="PNG"))
    return run_dir


def _source(args: EvalArgs, config, source_config, dataset: InputDataset) -> tuple[EditPipeline | None, str]:
    """The pipeline the edit is compared with (--source-config's run, else the run's reconstruction, else none:
    the dataset images) and how to name it."""
    if source_config is None:
        source_pipeline = _reconstruction(args.load_config, config)
        return source_pipeline, "reconstruction" if source_pipeline is not None else "dataset images"
    with lazy_lpips():  # a stock nerfacto source run would download AlexNet for a metric we do not use
        source_pipeline = _setup(args.source_config, source_config)
    source_dataset, _ = _views(source_pipeline, args.max_views, args.split)
    if len(source_dataset) != len(dataset) or not torch.allclose(
        source_dataset.cameras.camera_to_worlds, dataset.cameras.camera_to_worlds, atol=1e-4
    ):
        raise UserError("--source-config: its dataset's cameras differ from the edit run's (another scene?)")
    return source_pipeline, f"the run {args.source_config}"


def _measure_views(
    pipeline: EditPipeline, source_pipeline: EditPipeline | None, dataset: InputDataset, indices: list[int],
    metrics: EditMetrics, sheet_views: int,
) -> tuple[list[dict[str, float]], list[SheetRow]]:  # fmt: skip
    """The metrics row of each view (edit against the source render, or the image), and the first views' tiles."""
    prompts = (pipeline.config.prompt_src, pipeline.config.prompt_trg)
    per_view, sheet = [], []
    for index in tqdm(indices, desc="evaluating views", unit="view"):
        camera = dataset.cameras[index : index + 1]
        edit, edit_depth = _render(pipeline, camera)
        image = resize_images(as_batch(dataset[index]["image"]), *edit.shape[-2:])
        source, source_depth = _render(source_pipeline, camera) if source_pipeline is not None else (image, None)
        row = {"view": index, **metrics(source, edit, *prompts)[0]}
        if source_depth is not None:
            inside, outside = depth_change(source_depth, edit_depth, ~background_mask(source, edit))
            row.update(depth_change_edited=float(inside[0]), depth_change_background=float(outside[0]))
        per_view.append(row)
        if len(sheet) < sheet_views:
            tiles = {"source image": image}
            if source_pipeline is not None:
                tiles["reconstruction"] = source
            tiles["edit"] = edit
            if pipeline.config.mask.enabled:
                tiles["mask"] = _mask_image(pipeline, dataset, index, image)
            tiles["inverse depth (edit)"] = _depth_image(edit_depth)
            sheet.append(SheetRow(index, camera, tiles))
    return per_view, sheet


def _nearest_edited_image(pipeline: EditPipeline, edited: list[Path], row: SheetRow) -> Float[Tensor, "1 3 H W"]:
    """The edited training image (of the files ``edited``) whose camera is nearest the row's, at the edit's size."""
    centres = pipeline.datamanager.train_dataset.cameras.camera_to_worlds[:, :3, 3]
    views = [int(path.stem) for path in edited]
    distances = (centres[views] - row.camera.camera_to_worlds[0, :3, 3].to(centres)).norm(dim=-1)
    image = to_tensor(load_image(edited[int(distances.argmin())]))
    return resize_images(image, *row.tiles["edit"].shape[-2:])


def _consistency(
    pipeline: EditPipeline, dataset: InputDataset, indices: list[int], metrics: EditMetrics, path_steps: int
) -> dict[str, float | None]:
    """Multi-view consistency along a camera path through the views: consecutive frames' CLIP similarity and LPIPS
    (n/a with one view)."""
    if len(indices) < 2:
        return {"consistency_clip": None, "consistency_lpips": None}
    path = get_interpolated_camera_path(dataset.cameras[torch.tensor(indices)], steps=path_steps, order_poses=False)
    frames = torch.cat([_render(pipeline, path[i : i + 1])[0] for i in tqdm(range(len(path)), desc="camera path")])
    return {"consistency_clip": float(consecutive_similarity(metrics.clip.images(frames)).mean()),
            "consistency_lpips": float(metrics.lpips(frames[:-1], frames[1:]).mean())}  # fmt: skip


def _mask_image(pipeline: EditPipeline, dataset: InputDataset, index: int, image: Tensor) -> Tensor:
    """The run's mask of a view at the view's pixels (the colour loss keeps what lies outside it; the guidance takes it
    to the latent; not fused across views), enlarged to the image (nearest), as an RGB tile."""
    prior, config = pipeline.prior, pipeline.config
    width, height = pipeline.guidance_size(dataset.cameras[index])
    with torch.no_grad():
        z_src = prior.encode_images(resize_images(image, height, width).to(prior.device)).float()
        mask = pipeline.masks.view_mask(dataset, index, z_src, config.prompt_trg, config.prompt_src).cpu()
    return F.interpolate(mask, size=image.shape[-2:], mode="nearest").expand(-1, 3, -1, -1)


def _gradient_image(pipeline: EditPipeline, camera: Cameras, source: Tensor, edit: Tensor) -> Tensor:
    """Magnitude of the run's guidance gradient on the edit at the size the run edits the view at (the pipeline's
    guidance size, not the image's), upsampled to the image (fixed seed)."""
    prior = pipeline.prior
    width, height = pipeline.guidance_size(camera)
    with torch.no_grad():
        z_trg, z_src = (
            prior.encode_images(resize_images(x, height, width).to(prior.device)).float() for x in (edit, source)
        )
    prompts = (pipeline.config.prompt_trg, pipeline.config.prompt_src)
    out = pipeline.guidance(z_trg, z_src, *prompts, generator=torch.Generator().manual_seed(0))
    magnitude = out.grad.norm(dim=1).cpu()
    magnitude = F.interpolate(magnitude[:, None], size=edit.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _colormap(magnitude)
