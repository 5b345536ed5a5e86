"""The package's layers read top-down: every import between sub-packages points to a lower layer,
and no module imports take part in a circle (imports inside functions count too)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bundle
import pytest

PACKAGE = Path(bundle.__file__).resolve().parent

#: the layers, lowest first; a sub-package may import only from layers below its own
LAYERS: dict[str, int] = {
    "utils": 0,
    "networks": 1,
    "metrics": 1,
    "visualize": 1,
    "data": 2,
    "registration": 3,
    "transforms": 4,
    "losses": 5,
    "optimizers": 5,
    "handlers": 6,
    "engines": 7,
    "tools": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The ``bundle...`` modules ``path`` imports, at any depth of its code (relative ones resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names]
                found |= {target, *names}
            elif node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name == "bundle" or name.startswith("bundle.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # keep only names that are modules (``from bundle.data import split_records`` names a function)
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs of different sub-packages where the imported one is not lower."""
    bad = []
    for importer, targets in graph.items():
        own = _layer(importer)
        for target in targets:
            other = _layer(target)
            if own is None or other is None or other == own:
                continue
            if LAYERS[other] >= LAYERS[own]:
                bad.append((importer, target))
    return sorted(bad)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles between modules (strongly connected components of more than one module)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_subpackage_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert packages | modules == set(LAYERS)


def test_no_upward_imports() -> None:
    assert upward_imports(_graph()) == []


def test_no_import_circles() -> None:
    assert circles(_graph()) == []


def test_the_checks_find_what_they_look_for() -> None:
    graph = {
        "bundle.data.slices": {"bundle.engines.inference"},
        "bundle.engines.inference": {"bundle.data.slices"},
        "bundle.utils.io": set(),
    }
    assert upward_imports(graph) == [("bundle.data.slices", "bundle.engines.inference")]
    assert circles(graph) == [["bundle.data.slices", "bundle.engines.inference"]]


@pytest.mark.parametrize("name", ["utils", "networks", "data"])
def test_a_layer_loads_no_layer_above_it(name: str) -> None:
    """At run time too: importing a layer in a fresh interpreter loads no module of a higher layer
    (``import bundle`` itself loads nothing: sub-packages are imported on first access)."""
    code = (
        f"import sys, bundle.{name}; "
        "print(' '.join(sorted({m.split('.')[1] for m in sys.modules if m.startswith('bundle.')})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(done.stdout.split())
    assert name in loaded
    assert {layer for layer in loaded if LAYERS[layer] > LAYERS[name]} == set()
