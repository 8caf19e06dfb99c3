"""Whole-view rendering of a ray-marched nerfstudio model for the guidance, and back-propagation into it.

``render_views`` and ``backpropagate_views`` implement the editing contract's render and backward (editing/contract.py)
for any model that renders ray bundles (nerfacto's ``EditNerfactoModel`` wraps them in its average appearance).

Deferred back-propagation (as in ARF / DreamFusion-style NeRF editing): render the view without a graph,
get the image gradient from the guidance (through the VAE encoder), then re-render the view chunk by chunk
with a graph and back-propagate each chunk's slice of the image gradient. Peak memory is that of one chunk.
Each chunk is rendered under its own fixed random seed in both passes, so the stochastic proposal sampling
sees exactly the same ray samples and the gradients equal those of a full-graph render.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.models.base_model import Model
from torch import Tensor

from ids_nerfstudio.editing.contract import RenderedViews, RenderOptions
from ids_nerfstudio.models.cameras import resize_camera


def view_rays(camera: Cameras, camera_index: int) -> RayBundle:
    """All rays of one camera (H, W), tagged with its training index (for the camera optimizer)."""
    bundle = camera.generate_rays(camera_indices=0, keep_shape=True)
    bundle.camera_indices = torch.full_like(bundle.camera_indices, camera_index)
    return bundle


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _chunks(num_rays: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, num_rays, chunk_size):
        yield start, min(start + chunk_size, num_rays)


def _render_chunk(model: Model, rays: RayBundle, start: int, end: int, seed: int) -> Float[Tensor, "N 3"]:
    chunk = rays.get_row_major_sliced_ray_bundle(start, end).to(model.device)
    if model.collider is not None:  # near/far bounds, as Model.forward sets them
        chunk = model.collider(chunk)
    with _seeded(seed + start, model.device):
        return model.get_outputs(chunk)["rgb"]


def render_rgb(model: Model, rays: RayBundle, chunk_size: int, seed: int, *, graph: bool) -> Float[Tensor, "H W 3"]:
    """Render a (H, W) ray bundle chunk by chunk; with ``graph=True`` the result keeps the autograd graph."""
    height, width = rays.shape
    with torch.set_grad_enabled(graph):
        rgb = [_render_chunk(model, rays, start, end, seed) for start, end in _chunks(height * width, chunk_size)]
    return torch.cat(rgb).view(height, width, 3)


def backpropagate_rgb(
    model: Model, rays: RayBundle, rgb_grad: Float[Tensor, "H W 3"], chunk_size: int, seed: int
) -> None:
    """Re-render chunk by chunk with a graph and back-propagate ``rgb_grad`` (deferred back-propagation)."""
    flat_grad = rgb_grad.reshape(-1, 3)
    for start, end in _chunks(flat_grad.shape[0], chunk_size):
        with torch.enable_grad():
            rgb = _render_chunk(model, rays, start, end, seed)
        rgb.backward(flat_grad[start:end].to(rgb))


@dataclass
class RayReplay:
    """What a deferred backward pass re-renders: each view's rays and sampling seed, and the options used."""

    rays: list[RayBundle]
    seeds: list[int]
    options: RenderOptions


def render_views(
    model: Model, cameras: Sequence[Cameras], indices: Sequence[int], width: int, height: int, seed: int,
    options: RenderOptions,
) -> RenderedViews:  # fmt: skip
    """Render each camera at ``width`` x ``height``; view k samples its rays under ``seed + k``.

    ``full-graph`` keeps one autograd graph over each whole view (memory grows with the view); ``deferred``
    renders without a graph and ``backpropagate_views`` re-renders chunk by chunk (memory of one chunk), with
    the same seeds, so both give the same parameter gradients.
    """
    rays = [view_rays(resize_camera(c, width, height), i) for c, i in zip(cameras, indices, strict=True)]
    seeds = [seed + k for k in range(len(rays))]
    full_graph = options.mode == "full-graph"
    rgb = [render_rgb(model, r, options.chunk_size, s, graph=full_graph) for r, s in zip(rays, seeds, strict=True)]
    images = torch.stack(rgb).permute(0, 3, 1, 2)
    if not full_graph:
        images = images.detach().requires_grad_(True)
    return RenderedViews(images=images, replay=RayReplay(rays, seeds, options))


def backpropagate_views(model: Model, views: RenderedViews, image_grad: Float[Tensor, "B 3 H W"]) -> None:
    """Accumulate the parameter gradients of ``sum(views.images * image_grad)`` into the model."""
    replay: RayReplay = views.replay
    if replay.options.mode == "full-graph":
        views.images.backward(image_grad.to(views.images))
        return
    for rays, seed, grad in zip(replay.rays, replay.seeds, image_grad, strict=True):
        backpropagate_rgb(model, rays, grad.permute(1, 2, 0), replay.options.chunk_size, seed)
