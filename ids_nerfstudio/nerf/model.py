"""The editing model: nerfacto, constructible offline, with the pieces that must stay fixed during editing frozen."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from torch import Tensor

logger = logging.getLogger(__name__)


class LazyLPIPS:
    """torchmetrics' LPIPS built on first use (evaluation only): building it downloads AlexNet weights.

    Not an ``nn.Module``, so it adds nothing to checkpoints. Offline, evaluation reports NaN instead of failing.
    """

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.metric = None
        self.failed = False

    def __call__(self, predicted: Tensor, target: Tensor) -> Tensor:
        if self.metric is None and not self.failed:
            try:
                from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

                self.metric = LearnedPerceptualImagePatchSimilarity(**self.kwargs).to(predicted.device)
            except Exception as error:  # noqa: BLE001 - any download failure
                self.failed = True
                logger.warning("LPIPS is unavailable (%s); reporting NaN", str(error).splitlines()[0][:120])
        if self.metric is None:
            return torch.tensor(math.nan)
        return self.metric(predicted, target)


@contextlib.contextmanager
def lazy_lpips() -> Iterator[None]:
    """Make nerfacto's ``populate_modules`` create a LazyLPIPS instead of downloading AlexNet.

    nerfstudio 1.1.5 imports torchmetrics' LPIPS class inside ``NerfactoModel.populate_modules``, so replacing the
    module attribute for the duration of that call is enough; ``EditNerfactoModel`` checks that it worked.
    """
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = LazyLPIPS
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original


@dataclass
class EditNerfactoModelConfig(NerfactoModelConfig):
    """nerfacto for editing: same fields and checkpoints as stock nerfacto."""

    _target: type = field(default_factory=lambda: EditNerfactoModel)


class EditNerfactoModel(NerfactoModel):
    """A ``NerfactoModel`` that builds offline and can be put into editing mode.

    In editing mode the camera poses and the appearance embedding are frozen and the guidance renders use the
    average appearance embedding (what ``ns-render`` shows), so that an edit lands in the radiance field
    instead of in per-view appearance codes or camera tweaks.
    """

    config: EditNerfactoModelConfig

    def populate_modules(self) -> None:
        with lazy_lpips():
            super().populate_modules()
        if not isinstance(self.lpips, LazyLPIPS):  # fail loudly if a nerfstudio upgrade moved that import
            raise RuntimeError(
                "nerfacto built its LPIPS metric outside ids_nerfstudio's lazy_lpips(): this nerfstudio version "
                "imports it differently from 1.1.5; update EditNerfactoModel.populate_modules"
            )

    def set_editing(self, editing: bool) -> None:
        """Freeze (editing) or unfreeze the camera optimizer and the appearance embedding."""
        for module in (self.camera_optimizer, self.field.embedding_appearance):
            if module is not None:
                module.requires_grad_(not editing)

    @contextlib.contextmanager
    def average_appearance(self) -> Iterator[None]:
        """Render with the average appearance embedding (the field's inference behaviour), keeping gradients."""
        was_training = self.field.training
        self.field.train(False)
        try:
            yield
        finally:
            self.field.train(was_training)
