"""The entry points: console scripts, and nerfstudio's methods derived from the guidance registry.

Everything else is in pyproject.toml (setuptools takes entry points from one place only, so the scripts are here too).

nerfstudio finds a method through one ``nerfstudio.method_configs`` entry point per method, so they are
generated here from the names in ``GUIDANCE_METHODS`` (read from the source, without importing torch):
every guidance NAME registers ``NAME-edit`` and ``NAME-edit-demo``. Re-install (``pip install -e .``) after
adding a guidance so that ns-train sees it.
"""

import ast
from pathlib import Path

from setuptools import setup

REGISTRY = Path(__file__).parent / "ids_nerfstudio" / "guidance" / "__init__.py"


def guidance_names() -> list[str]:
    """The keys of the ``GUIDANCE_METHODS`` dict literal."""
    for node in ast.parse(REGISTRY.read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "GUIDANCE_METHODS":
            return [key.value for key in node.value.keys]
    raise RuntimeError(f"GUIDANCE_METHODS not found in {REGISTRY}")


methods = [f"{name}-edit{variant}" for name in guidance_names() for variant in ("", "-demo")]
SCRIPTS = {
    "ids-edit-image": "ids_nerfstudio.image_edit:entrypoint",
    "ids-demo-scene": "ids_nerfstudio.scenes:entrypoint",
    "ids-eval": "ids_nerfstudio.nerf.evaluate:entrypoint",
    "ids-compare": "ids_nerfstudio.nerf.compare:entrypoint",
}

setup(
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in SCRIPTS.items()],
        "nerfstudio.method_configs": [
            f"{method} = ids_nerfstudio.method_configs:{method.replace('-', '_')}" for method in methods
        ]
    }
)
