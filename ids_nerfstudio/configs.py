"""The config pattern shared by priors and guidance: a dataclass that knows the class it builds.

This mirrors nerfstudio's ``InstantiateConfig`` without importing nerfstudio, so that ``prior/`` and
``guidance/`` stay usable (and testable) on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tyro.conf import Suppress


@dataclass
class InstantiateConfig:
    """A config whose ``setup`` builds the object named by its ``_target`` field."""

    _target: Suppress[type]

    def setup(self, **kwargs: Any) -> Any:
        """Build the target object from this config."""
        return self._target(self, **kwargs)
