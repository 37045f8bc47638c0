"""The house rules that keep the code readable, checked rather than remembered: modules under
500 lines, functions under 80, no import cycle at run time, and no import of another
subpackage's private module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "fastbridge"
CHECKED = [PACKAGE, ROOT / "benches", ROOT / "examples"]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _files() -> list[Path]:
    return sorted(p for root in CHECKED for p in root.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_modules_and_functions_stay_short():
    long = []
    for path in _files():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size}")
    assert not long, "too long:\n" + "\n".join(long)


def _runtime_imports(path: Path, module: str) -> set[str]:
    """The fastbridge modules ``module`` imports when it is imported: module-level imports,
    not those inside functions or under ``if TYPE_CHECKING:``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("fastbridge"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.startswith("fastbridge"):
                    found.add(base)
                    found.update(f"{base}.{a.name}" for a in node.names)

    visit(ast.parse(path.read_text()).body)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        module: {m for m in _runtime_imports(path, module) if m in paths and m != module}
        for module, path in paths.items()
    }


def test_no_import_cycle_at_run_time():
    graph = _graph()
    # A package's __init__ importing its own modules is how Python packages work, not a cycle.
    edges = {
        m: {d for d in deps if not (m.startswith(d + ".") and d in graph)}
        for m, deps in graph.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in sorted(edges[module]):
            if state.get(dep) == 1:
                cycles.append([*trail[trail.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*trail, dep])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_of_another_subpackages_private_module():
    graph = _graph()
    bad = []
    for module, deps in graph.items():
        for dep in deps:
            parent, _, leaf = dep.rpartition(".")
            if leaf.startswith("_") and parent != "fastbridge" and not module.startswith(parent):
                bad.append(f"{module} imports {dep}")
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.parametrize("rule", ["cycle", "private"])
def test_the_import_checks_see_what_they_look_for(tmp_path, rule):
    """Negative control: the parser finds a relative import, and one under TYPE_CHECKING is
    left out, or the checks above prove nothing."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from ._stream import Stream\n"
        "from .convert import _npy\n"
        "if TYPE_CHECKING:\n    from ._options import StreamOptions\n"
    )
    found = _runtime_imports(source, "fastbridge.doctor.mod")
    if rule == "cycle":
        assert "fastbridge.doctor._stream" in found
        assert not any("_options" in m for m in found)
    else:
        assert "fastbridge.doctor.convert._npy" in found
