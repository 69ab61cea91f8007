"""The library is a stack of layers: a module imports only modules of its own layer or below, with no
cycle, also not inside a function. This reads every module's imports with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bmrs"

#: bottom to top; a module's layer is its subpackage (top-level modules sit above everything)
LAYERS = ["util", "core", "nn", "prune", "run", "report", "<top>"]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return LAYERS.index("<top>")


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported bmrs module, line) for every import in the file, function-level ones included."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "bmrs"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "bmrs":
                continue
            for a in node.names:  # "from bmrs.core import special" imports the module bmrs.core.special
                sub = f"{mod}.{a.name}"
                found.append((sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                              or (PACKAGE.parent / Path(*sub.split("."))).is_dir() else mod, node.lineno))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for path in MODULES:
        g[module_name(path)] = {m for m, _ in imports_of(path)} - {module_name(path)}
    return g


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_import_points_up_the_stack(path):
    me = module_name(path)
    if path.name == "__init__.py" and me == "bmrs":
        return  # the public API re-exports from every layer
    up = [(m, line) for m, line in imports_of(path) if m != "bmrs" and layer_of(m) > layer_of(me)]
    assert not up, f"{me} ({LAYERS[layer_of(me)]}) imports from a higher layer: " + ", ".join(
        f"{m} ({LAYERS[layer_of(m)]}) at line {line}" for m, line in up)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if nxt not in g:
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node != "bmrs" and not state.get(node):
            visit(node)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The guard itself can fail: a planted upward, function-level import is found."""
    fake = tmp_path / "bmrs"
    (fake / "core").mkdir(parents=True)
    (fake / "run").mkdir()
    for p in (fake / "__init__.py", fake / "core" / "__init__.py", fake / "run" / "__init__.py"):
        p.write_text("")
    (fake / "core" / "a.py").write_text("def f():\n    from bmrs.run import b\n")
    (fake / "run" / "b.py").write_text("from bmrs.core import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake, raising=False)
    globals()["PACKAGE"] = fake
    try:
        found = imports_of(fake / "core" / "a.py")
        assert ("bmrs.run.b", 2) in found
        assert layer_of("bmrs.run.b") > layer_of("bmrs.core.a")
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parent.parent / "bmrs"
