"""The contract between the editing step and a scene representation: what the pipeline asks of the model.

The editing step (``EditPipeline.edit_losses``) is render -> encode -> guide -> scale, whatever the scene is made of;
nerfstudio's training loop back-propagates its losses. Following nerfstudio's convention that a model owns its
outputs, it asks the model for six things:

- ``edited_param_groups``: the optimizer groups an editing step updates (the others, e.g. ``camera_opt``, stay);
- ``set_editing(True)``: freeze what an edit must not move (camera poses, per-view appearance codes);
- ``set_appearance_off(True)``: train and render every view with one appearance (a dataset-update stage that turns
  the per-view appearance off, as PDS's refinement does);
- ``render_edit_views(...)``: whole views at a given size as one differentiable (B, 3, H, W) batch in [0, 1];
- ``backpropagate_edit_views(views, image_grad)``: accumulate the parameter gradients of ``sum(images * image_grad)``;
- ``editing_regularizer_losses(...)``: its own losses kept while editing, on a training batch of the data manager,
  and a colour loss weighted per pixel of the training views (what a local edit keeps); whether the batch holds rays
  or whole images is the model's business;
- ``view_points(camera)``: the point of the scene each pixel of a view sees (from its rendered depth), with which a
  local edit's per-view masks are checked against each other (``editing/masks.py``).

``models/nerfacto.py`` and ``models/splatfacto.py`` implement it. A new representation is a model config and class
implementing these, a data manager with ``EditViewsMixin`` (data/datamanagers.py) over the nerfstudio data manager
it trains with, and its entries in method_configs.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor

RenderMode = Literal["deferred", "full-graph"]

KeepWeights = Callable[[int], Float[Tensor, "H W"]]
"""The weight of each pixel of a training view (by its index) in the colour loss that keeps the rest of a local edit."""


@dataclass(frozen=True)
class RenderOptions:
    """How the pipeline wants its guidance views rendered (a representation ignores what does not apply to it)."""

    chunk_size: int
    """Rays per chunk of a ray-marched render."""
    mode: RenderMode
    """deferred: render without a graph, re-render for the backward (memory of one chunk); full-graph: one graph."""


@dataclass
class RenderedViews:
    """Views rendered for the guidance."""

    images: Float[Tensor, "B 3 H W"]
    """The renders in [0, 1]; differentiable (a leaf whose gradient is replayed, or a render graph's output)."""
    replay: Any = None
    """What the representation needs to back-propagate into itself (nerfacto: the rays, seeds and options)."""


@runtime_checkable
class EditableModel(Protocol):
    """A nerfstudio model the editing step can edit (see the module docstring)."""

    edited_param_groups: tuple[str, ...]
    """Optimizer groups stepped while editing."""
    checkpoint_key_prefix: str
    """A state-dict key prefix that every checkpoint of this model has (a --load-dir of another model is refused)."""

    def set_editing(self, editing: bool) -> None:
        """Freeze (editing) or unfreeze what an edit must not move."""

    def set_appearance_off(self, off: bool) -> None:
        """Turn per-view appearance off (True: every view, in training batches and renders, gets the appearance
        the model renders new views with) or back on; a model without per-view appearance does nothing."""

    def render_edit_views(
        self, cameras: Sequence[Cameras], indices: Sequence[int], width: int, height: int, seed: int,
        options: RenderOptions,
    ) -> RenderedViews:  # fmt: skip
        """Render each camera (training index ``indices[k]``) at ``width`` x ``height``, view k under ``seed + k``."""

    def backpropagate_edit_views(self, views: RenderedViews, image_grad: Float[Tensor, "B 3 H W"]) -> None:
        """Accumulate the parameter gradients of ``sum(views.images * image_grad)``."""

    def editing_regularizer_losses(
        self, train_input: RayBundle | Cameras, batch: dict[str, Any], budget: int, keep: KeepWeights | None = None,
        reference: EditableModel | None = None,
    ) -> dict[str, Tensor]:  # fmt: skip
        """The representation's own losses kept while editing, on (at most ``budget`` rays or samples of) a
        training batch as its data manager's ``next_train`` returns it; with ``keep`` also ``keep_rgb_loss``, a
        colour loss to the batch's images, each ray or pixel weighted by ``keep(its training view)`` at its pixel;
        with ``reference`` (a frozen model of the same kind), to its render of the same rays or pixels instead."""

    def view_points(self, camera: Cameras) -> Float[Tensor, "H W 3"]:
        """The scene point each pixel of ``camera``'s view (one camera, its own resolution) sees: its ray's origin
        plus its direction times the rendered depth, in the cameras' world frame, without a graph."""
