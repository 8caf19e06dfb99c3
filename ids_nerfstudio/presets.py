"""Named settings of the 2D editor: ``--preset paper`` is the IDS paper's setting (its Sec. 5 and supp. C).

The paper edits with Stable Diffusion v1.4, FPR lambda = 1 and N = 3, CFG 7.5, t in [50, 948], SGD with lr 0.1
for 200 steps, the score scaled by 2000 / (h w) of the latent, at 512 px; its baselines keep their own official
settings. So the preset sets the editor's settings for every guidance and IDS's guidance settings for ``ids``.
A flag given together with the preset must agree with it (else one line names both and the run stops).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ids_nerfstudio.errors import UserError

Preset = Literal["none", "paper"]

PAPER_MODEL = "CompVis/stable-diffusion-v1-4"
"""The IDS paper's diffusion model."""
PAPER_EDITOR: dict[str, Any] = {"model": PAPER_MODEL, "steps": 200, "lr": 0.1, "grad_scale": 2000.0, "size": 512}
"""The paper's editor settings (ImageEditSettings fields)."""
PAPER_IDS: dict[str, Any] = {
    "guidance_scale": 7.5, "t_min": 0.05, "t_max": 0.948, "fpr_iters": 3, "fpr_scale": 1.0, "fpr_distance": "l2",
    "fpr_jacobian": "exact", "fpr_guidance_scale": None,
}  # fmt: skip
"""The paper's IDS settings (GuidanceConfig fields), applied to the ``ids`` guidance only."""


def _override(obj: Any, values: dict[str, Any], preset: str) -> Any:
    """``obj`` with ``values``; a field the user changed from its default to something else is refused."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(obj) if f.name in values}  # fmt: skip
    for name, value in values.items():
        given = getattr(obj, name)
        if given != defaults[name] and given != value:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"--preset {preset} sets {flag} {value}; you gave {flag} {given}: drop one of the two")
    return dataclasses.replace(obj, **values)


def apply_preset(preset: Preset, guidance: str, settings: Any, guidance_config: Any) -> tuple[Any, Any]:
    """The editor settings and guidance config with ``preset`` applied (``none``: unchanged)."""
    if preset == "none":
        return settings, guidance_config
    if preset != "paper":
        raise UserError(f"--preset: unknown preset {preset!r}; choose none or paper")
    settings = _override(settings, PAPER_EDITOR, preset)
    if guidance == "ids":
        guidance_config = _override(guidance_config, PAPER_IDS, preset)
    return settings, guidance_config
