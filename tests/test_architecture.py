"""The layers of DESIGN.md, read from the source: who imports whom, where the model names are understood."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ids_nerfstudio"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def imports(name: str, *, top_level_only: bool) -> list[tuple[str, int]]:
    """(imported module, line) of every import in a module; ``from X import Y`` names X.Y when that is a module."""
    tree = TREES[name]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule if submodule in MODULES else node.module, node.lineno))
    return found


def project_imports(name: str, *, top_level_only: bool = False) -> set[str]:
    return {module for module, _ in imports(name, top_level_only=top_level_only) if module in MODULES}


def test_no_module_imports_a_project_module_inside_a_function():
    """An import inside a function is how a cycle gets dodged; third-party lazy imports (heavy libraries) are fine."""
    hidden = []
    for name in MODULES:
        top_level = {line for _, line in imports(name, top_level_only=True)}
        hidden += [f"{name}:{line} imports {module}" for module, line in imports(name, top_level_only=False)
                   if module.startswith("ids_nerfstudio") and line not in top_level]  # fmt: skip
    assert not hidden


def layer(name: str) -> str:
    """The package or top-level module a module belongs to: ``ids_nerfstudio.prior.loading`` is ``prior``."""
    return name.split(".")[1] if "." in name else ""


def assert_acyclic(graph: dict[str, set[str]]) -> None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(child) :], child]))
            if child not in state:
                visit(child, [*path, child])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_project_import_graph_has_no_cycle_between_modules_or_between_layers():
    """Modules, and layers (prior/, guidance/, editing/, models/, demo/, ..., each top-level module): an edge
    prior -> demo with one demo -> prior is a cycle of the layers even when no two modules import each other."""
    assert_acyclic({name: project_imports(name, top_level_only=True) - {name} for name in MODULES})
    layers: dict[str, set[str]] = {layer(name): set() for name in MODULES}
    for name in MODULES:
        layers[layer(name)] |= {layer(module) for module in project_imports(name)} - {layer(name), ""}
    assert_acyclic(layers)


SCENE = ("ids_nerfstudio.editing", "ids_nerfstudio.models", "ids_nerfstudio.data", "ids_nerfstudio.engine",
         "ids_nerfstudio.tools", "ids_nerfstudio.method_configs")
"""The scene half: nerfstudio's roles (editing step, representations, data, engine, scene CLI libraries)."""


@pytest.mark.parametrize(
    ("layer_name", "forbidden"),
    [
        ("guidance", (*SCENE, "ids_nerfstudio.demo", "ids_nerfstudio.scripts", "ids_nerfstudio.images",
                      "nerfstudio", "PIL")),
        ("prior", ("ids_nerfstudio.guidance", *SCENE, "ids_nerfstudio.demo", "ids_nerfstudio.scripts",
                   "nerfstudio", "PIL")),
        ("eval", (*SCENE, "ids_nerfstudio.demo", "ids_nerfstudio.scripts", "nerfstudio")),
        ("model_names", ("ids_nerfstudio",)),
        ("editing", ("ids_nerfstudio.models", "ids_nerfstudio.engine", "ids_nerfstudio.tools",
                     "nerfstudio.models.nerfacto", "nerfstudio.models.splatfacto")),
        ("data", ("ids_nerfstudio.editing", "ids_nerfstudio.models", "ids_nerfstudio.engine", "ids_nerfstudio.tools")),
        ("models", ("ids_nerfstudio.engine", "ids_nerfstudio.tools", "ids_nerfstudio.data")),
        ("vector", ("ids_nerfstudio.prior", "ids_nerfstudio.guidance", *SCENE, "ids_nerfstudio.demo",
                    "ids_nerfstudio.scripts", "ids_nerfstudio.eval", "ids_nerfstudio.image_editor", "nerfstudio",
                    "diffusers", "transformers")),
    ],
)  # fmt: skip
def test_the_layers_import_only_downwards(layer_name, forbidden):
    crossing = [f"{name} imports {module}" for name in MODULES if layer(name) == layer_name
                for module, _ in imports(name, top_level_only=False)
                if module.startswith(forbidden) and not module.startswith(f"ids_nerfstudio.{layer_name}")]  # fmt: skip
    assert not crossing


def test_only_the_scripts_import_the_scripts_and_only_the_demo_and_scripts_import_the_demo_world():
    for name in MODULES:
        used = project_imports(name)
        if layer(name) != "scripts":
            assert not {m for m in used if m.startswith("ids_nerfstudio.scripts")}, name
        if layer(name) not in ("scripts", "demo"):
            assert not {m for m in used if m.startswith("ids_nerfstudio.demo")}, name


def test_the_packaged_model_names_are_compared_with_in_one_module_only():
    """``tiny`` and ``demo`` are understood in model_names.py; every other module asks it."""
    special = {"tiny", "demo"}
    found = []
    for name, tree in TREES.items():
        if name == "ids_nerfstudio.model_names":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]  # a name, or a tuple / list / set of names
                literals = [c for o in operands for c in [o, *getattr(o, "elts", [])] if isinstance(c, ast.Constant)]
                if any(c.value in special for c in literals):
                    found.append(f"{name}:{node.lineno}")
    assert not found


def test_importing_the_guidance_loads_neither_images_nor_nerfstudio_nor_the_demo_world_nor_a_cli():
    """What ``import ids_nerfstudio.guidance`` adds to what torch, tyro and jaxtyping load themselves
    (torch imports tqdm on its own)."""
    probe = """
import sys
import jaxtyping, torch, tyro
before = set(sys.modules)
import ids_nerfstudio.guidance
print("\\n".join(sorted(set(sys.modules) - before)))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    added = result.stdout.split()
    assert "ids_nerfstudio.guidance" in added, "the probe measures something"
    roots = {module.split(".")[0] for module in added}
    assert not roots & {"PIL", "tqdm", "nerfstudio", "diffusers", "transformers"}, sorted(roots)
    ours = [m for m in added if m.startswith("ids_nerfstudio.")]
    assert not [m for m in ours if m.startswith(("ids_nerfstudio.demo", "ids_nerfstudio.scripts", *SCENE,
                                                  "ids_nerfstudio.images", "ids_nerfstudio.sheets"))], ours  # fmt: skip


def test_the_editing_step_imports_only_the_contract_of_the_representations():
    """editing/ speaks to a model through editing/contract.py: no module of models/ (ours), and of nerfstudio's
    models only the base classes (no nerfacto, no splatfacto)."""
    editing = [name for name in MODULES if layer(name) == "editing"]
    assert {"ids_nerfstudio.editing.pipeline", "ids_nerfstudio.editing.masks"} <= set(editing)
    crossing = [f"{name} imports {module}" for name in editing for module, _ in imports(name, top_level_only=False)
                if module.startswith("ids_nerfstudio.models")
                or (module.startswith("nerfstudio.models") and module != "nerfstudio.models.base_model")]  # fmt: skip
    assert not crossing


def test_only_the_representations_import_nerfacto_splatfacto_or_gsplat():
    """nerfstudio's nerfacto and splatfacto modules and gsplat are imported in models/ only, and gsplat in one
    adapter module there."""
    internals = ("nerfstudio.models.nerfacto", "nerfstudio.models.splatfacto", "gsplat")
    found = {name: module for name in MODULES for module, _ in imports(name, top_level_only=False)
             if module.startswith(internals)}  # fmt: skip
    assert found, "the rule checks something"
    assert all(layer(name) == "models" for name in found), found
    assert {name for name, module in found.items() if module.startswith("gsplat")} == {
        "ids_nerfstudio.models.gsplat_adapter"
    }


def closure(name: str) -> set[str]:
    """The project modules ``name`` imports at top level, directly or through others (itself included)."""
    seen, todo = set(), [name]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += project_imports(module, top_level_only=True)
    return seen


def test_the_demo_world_writes_its_point_cloud_without_importing_nerfstudio():
    modules = closure("ids_nerfstudio.demo.scene")
    assert "ids_nerfstudio.data.ply" in modules, "the demo scene writes its PLY with data/ply.py"
    third_party = {module for name in modules for module, _ in imports(name, top_level_only=False)}
    assert not {module for module in third_party if module.split(".")[0] in ("nerfstudio", "open3d")}
