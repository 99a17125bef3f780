"""The package's layers: every import (module-level and function-local) points down.

A unit is a subpackage or a top-level module of ``changeseg``; ``models.presets``,
``models.weights_spec`` and ``models.registry`` are units of their own because the config
schema reads them without loading torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "changeseg"

# Lowest first; a unit may import only units of lower layers.
LAYERS: list[set[str]] = [
    {"models.presets", "models.weights_spec", "devices", "progress"},
    {"models.registry"},
    {"config", "metrics", "thresholds"},
    {"storage", "runtime"},
    {"data", "models"},
    {"inference", "export"},
    {"viz", "mlflow_pyfunc"},
    {"tracking"},
    {"training", "evaluation", "serving"},
    {"demo"},
    {"cli"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}
OWN_UNITS = {"models.presets", "models.weights_spec", "models.registry"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str | None:
    parts = module.split(".")[1:]
    if not parts:
        return None
    for own in OWN_UNITS:
        if ".".join(parts).startswith(own):
            return own
    return parts[0]


def _imported(path: Path, module: str) -> set[str]:
    """Every changeseg module ``path`` imports, at any depth of the file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from changeseg import tracking`` imports the module changeseg.tracking.
            found.update(
                f"{target}.{alias.name}"
                for alias in node.names
                if (PACKAGE.parent / target.replace(".", "/") / f"{alias.name}.py").exists()
                or (PACKAGE.parent / target.replace(".", "/") / alias.name).is_dir()
            )
    return {name for name in found if name == "changeseg" or name.startswith("changeseg.")}


def _unit_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the modules whose imports make that arrow."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        source = _unit(module)
        if source is None:
            continue
        for target in map(_unit, _imported(path, module)):
            if target is not None and target != source:
                graph.setdefault(source, {}).setdefault(target, set()).add(module)
    return graph


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    assert not units - set(LAYER_OF), f"place these in LAYERS: {sorted(units - set(LAYER_OF))}"


def test_no_import_cycles_between_units():
    graph = {unit: set(targets) for unit, targets in _unit_graph().items()}
    state: dict[str, int] = {}

    def visit(unit: str, trail: list[str]) -> None:
        state[unit] = 1
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == 1:
                cycle = trail[trail.index(target) :] + [unit, target] if target in trail else [unit, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [unit])
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_imports_point_down_the_layers():
    upward = [
        f"{source} (layer {LAYER_OF[source]}) -> {target} (layer {LAYER_OF[target]}) in {', '.join(sorted(modules))}"
        for source, targets in _unit_graph().items()
        for target, modules in targets.items()
        if LAYER_OF[target] >= LAYER_OF[source]
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    "module",
    [
        "changeseg.config",
        "changeseg.models.presets",
        "changeseg.models.registry",
        "changeseg.models.weights_spec",
        "changeseg.models.location",
    ],
)
def test_torch_free_modules(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch loaded'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _uncommented_local_imports(path: Path) -> list[str]:
    """Imports inside functions with no comment saying why: on their line, on the line
    before, or (a run of imports) on the line before the run."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    local = sorted(
        {
            node
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
            if isinstance(node, (ast.Import, ast.ImportFrom))
        },
        key=lambda node: node.lineno,
    )
    explained: dict[int, bool] = {}  # last line of an import -> it is explained
    bad = []
    for node in local:
        own = any("#" in lines[i - 1] for i in range(node.lineno, node.end_lineno + 1))
        above = node.lineno - 1
        ok = own or explained.get(above, False) or (above >= 1 and lines[above - 1].strip().startswith("#"))
        explained[node.end_lineno] = ok
        if not ok:
            bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return bad


def test_function_local_imports_say_why():
    bad = [line for path in sorted(PACKAGE.rglob("*.py")) for line in _uncommented_local_imports(path)]
    assert not bad, "import at module level, or say why it is lazy in a comment:\n" + "\n".join(bad)
