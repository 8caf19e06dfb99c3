"""Warnings that third-party code prints on every nerfstudio run and that no user can act on, filtered narrowly.

Each filter names the category, the message and the module that raises it, so the same words from any other module
(or from the user's own code) still print. Installed where our code starts: the edit trainer and the edit pipeline
(``ns-train``, ``ns-render``, ``ns-viewer`` and ``ids-eval`` of our runs). What stays, and why:
docs/scene-editing.md#what-a-run-prints.
"""

from __future__ import annotations

import warnings

# (category, message regex, module regex): each printed by stock `ns-train nerfacto` runs too.
THIRD_PARTY_DEPRECATIONS: tuple[tuple[type[Warning], str, str], ...] = (
    # nerfstudio indexes camera tensors with lists of index tensors (16 lines per run in its cameras).
    (UserWarning, r"Using a non-tuple sequence for multidimensional indexing", r"nerfstudio\.cameras\.cameras"),
    # nerfstudio's camera path helpers build tensors from tensors.
    (UserWarning, r"To copy construct from a tensor", r"nerfstudio\.cameras\.camera_utils"),
    # nerfstudio's trainer builds its grad scaler through the deprecated torch.cuda.amp name.
    (FutureWarning, r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"nerfstudio\.engine\.trainer"),
    # nerfacto's evaluation calls SSIM through torchmetrics.functional's deprecated root names (torchmetrics raises
    # it from its own prints module, whoever the caller).
    (FutureWarning, r"Importing `\w+` from `torchmetrics\.functional` was deprecated", r"torchmetrics\.utilities"),
)


def filter_third_party_deprecations() -> None:
    """Add the filters of ``THIRD_PARTY_DEPRECATIONS`` once per process (filters are process-wide)."""
    installed = {(f[0], getattr(f[1], "pattern", None), f[2], getattr(f[3], "pattern", None)) for f in warnings.filters}
    for category, message, module in THIRD_PARTY_DEPRECATIONS:
        if ("ignore", message, category, module) not in installed:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
