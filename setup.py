"""The entry points: console scripts, and nerfstudio's methods derived from the guidance registry.

Everything else is in pyproject.toml (setuptools takes entry points from one place only, so the scripts are here too).

nerfstudio finds a method through one ``nerfstudio.method_configs`` entry point per method, so they are
generated here from the names in ``GUIDANCE_METHODS`` and ``METHOD_VARIANTS`` (read from the source, without
importing torch): every guidance NAME registers ``NAME-edit``, ``NAME-edit-demo``, ``NAME-splat-edit`` and
``NAME-splat-edit-demo``. Re-install
(``pip install -e .``) after adding a guidance so that ns-train sees it.
"""

import ast
from pathlib import Path

from setuptools import setup

REGISTRY = Path(__file__).parent / "ids_nerfstudio" / "guidance" / "__init__.py"


def registry_literal(name: str) -> ast.expr:
    """The value of the top-level assignment ``name = ...`` (annotated or not) in the registry module."""
    for node in ast.parse(REGISTRY.read_text()).body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(getattr(target, "id", None) == name for target in targets):
            return node.value
    raise RuntimeError(f"{name} not found in {REGISTRY}")


guidance_names = [key.value for key in registry_literal("GUIDANCE_METHODS").keys]
variants = ast.literal_eval(registry_literal("METHOD_VARIANTS"))
methods = [f"{name}{variant}" for name in guidance_names for variant in variants]
SCRIPTS = {
    "ids-edit-image": "ids_nerfstudio.scripts.edit_image:entrypoint",
    "ids-demo-scene": "ids_nerfstudio.scripts.demo_scene:entrypoint",
    "ids-eval": "ids_nerfstudio.scripts.eval:entrypoint",
    "ids-compare": "ids_nerfstudio.scripts.compare:entrypoint",
    "ids-edit-svg": "ids_nerfstudio.scripts.edit_svg:entrypoint",
    "ids-edit-video": "ids_nerfstudio.scripts.edit_video:entrypoint",
    "ids-before-after": "ids_nerfstudio.scripts.before_after:entrypoint",
}

setup(
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in SCRIPTS.items()],
        "nerfstudio.method_configs": [
            f"{method} = ids_nerfstudio.method_configs:{method.replace('-', '_')}" for method in methods
        ]
    }
)
