"""The packages outside the engine import one way (docs/architecture.md): ``train`` and ``bench`` share ``data`` and
never import each other, ``data`` and ``filter`` depend on nothing above them, and none of them is in an import
circle. Read from the source (every import statement, function-local ones included), nothing is executed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dlm"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The dlm modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in out if m.split(".")[0] == "dlm"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("source,target", [("dlm.train", "dlm.bench"), ("dlm.bench", "dlm.train")])
def test_train_and_bench_are_independent(graph, source, target):
    bad = sorted(f"{m} -> {i}" for m, deps in graph.items() if under(m, source) for i in deps if under(i, target))
    assert not bad, bad


@pytest.mark.parametrize("package,allowed", [
    ("dlm.data", ("dlm.data", "dlm.errors")),
    ("dlm.filter", ("dlm.filter", "dlm.errors", "dlm.assets")),
])
def test_lower_packages_import_nothing_above_them(graph, package, allowed):
    bad = sorted(f"{m} -> {i}" for m, deps in graph.items() if under(m, package) for i in deps
                 if not any(under(i, a) for a in allowed))
    assert not bad, bad


def test_no_import_circle_through_train_bench_data_filter_or_the_command(graph):
    ours = ("dlm.train", "dlm.bench", "dlm.data", "dlm.filter", "dlm.cli", "dlm.kvargs",
            "dlm.schedulers.learned_filter")
    circles = []
    for start in (m for m in graph if any(under(m, p) for p in ours)):
        # a path from a module of ours back to itself, through any module
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    circles.append(" -> ".join(path + [start]))
                elif nxt not in seen and nxt in graph:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not circles, circles[:5]
