"""Model names: the one place where ``tiny`` and ``demo`` are understood. Imports nothing of the project.

- ``tiny``: seeded random-weight models built in code (diffusion, InstructPix2Pix, CLIP, LPIPS): wiring tests
  and smoke runs only, their outputs mean nothing.
- ``demo``: the demo prior learned on the demo world (a diffusers Stable Diffusion folder and a CLIP folder),
  shipped in the package under ``demo/weights``.
- anything else: a local folder or a hub id, loaded with the ecosystem's ``from_pretrained``.

Every loader asks ``resolve_model`` what a name is; no other module compares a name with ``tiny`` or ``demo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ModelKind = Literal["diffusion", "instruct-pix2pix", "clip", "lpips"]

TINY = "tiny"
"""The random-weight test models, built in code for every kind."""
DEMO = "demo"
"""The packaged demo prior (diffusion and CLIP)."""
DEMO_WEIGHTS = Path(__file__).parent / "demo" / "weights"
"""Folder of the packaged demo weights: ``diffusion/`` (a diffusers Stable Diffusion folder) and ``clip/``."""
DEMO_KINDS: tuple[ModelKind, ...] = ("diffusion", "clip")
"""The kinds of model the demo prior has (it is a text-to-image model: no InstructPix2Pix, no LPIPS)."""

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_IP2P_MODEL = "timbrooks/instruct-pix2pix"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_LPIPS_NET = "alex"


@dataclass(frozen=True)
class ModelSource:
    """Where the weights of a named model come from."""

    name: str
    """The name as the user gave it."""
    location: str | None
    """What ``from_pretrained`` gets (a folder or a hub id); None for a model built in code with random weights."""
    packaged: bool
    """Needs no download: built in code (``tiny``) or shipped in the package (``demo``)."""

    @property
    def random_weights(self) -> bool:
        """Built in code with seeded random weights (``tiny``): wiring only, no meaningful output."""
        return self.location is None


def is_packaged(name: str | None) -> bool:
    """Whether ``name`` is a model that needs no download (``tiny`` or ``demo``): offline defaults apply."""
    return name in (TINY, DEMO)


def has_random_weights(name: str | None) -> bool:
    """Whether ``name`` is the random-weight test model (``tiny``)."""
    return name == TINY


def has_closed_vocabulary(name: str | None) -> bool:
    """Whether the model knows only the words of its tokenizer (the demo prior: its world's words, each one token)."""
    return name == DEMO


def has_model_kind(name: str | None, kind: ModelKind) -> bool:
    """Whether ``name`` (None: the default) names a model of ``kind`` (the demo prior has no InstructPix2Pix)."""
    return name != DEMO or kind in DEMO_KINDS


def resolve_model(name: str, kind: ModelKind) -> ModelSource:
    """What ``name`` means for a model of ``kind``.

    Raises ``FileNotFoundError`` when the packaged demo weights are missing and ``LookupError`` when the demo prior
    has no model of that kind; both messages say what to do.
    """
    if name == TINY:
        return ModelSource(name, None, packaged=True)
    if name == DEMO:
        if kind not in DEMO_KINDS:
            kinds = ", ".join(DEMO_KINDS)
            raise LookupError(f"the demo prior has no {kind} model (only {kinds}): use {TINY} or a real one")
        folder = DEMO_WEIGHTS / kind
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the demo {kind} weights are missing from {folder}: reinstall ids-nerfstudio or train them with "
                "`python -m ids_nerfstudio.demo.train`"
            )
        return ModelSource(name, str(folder), packaged=True)
    return ModelSource(name, name, packaged=False)


def metric_models(prior: str | None, clip: str | None, lpips: str | None) -> tuple[str, str]:
    """The CLIP and LPIPS names that measure edits made with ``prior``: given names win; a packaged prior brings
    its own CLIP (the demo's, or tiny's random one), and ``tiny`` the random LPIPS; else CLIP ViT-L/14 and alex."""
    packaged = prior if is_packaged(prior) else None
    random_lpips = TINY if has_random_weights(prior) else DEFAULT_LPIPS_NET
    return clip or packaged or DEFAULT_CLIP_MODEL, lpips or random_lpips
