"""LPIPS built on first use: nerfacto and splatfacto build torchmetrics' LPIPS in ``populate_modules``, which
downloads AlexNet weights; a model built for editing (or for ns-render) must not need the network."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ids_nerfstudio.errors import first_line

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
                logger.warning("LPIPS is unavailable (%s); reporting NaN", first_line(error, 120))
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
