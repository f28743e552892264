"""The package's layers, read from its imports (every import, lazy ones in functions included):

- no import cycle between modules;
- ``core`` imports only ``core`` and ``errors``: never pytest, the plugin, measuring, engines or reports;
- ``engines`` never import reports or verdicts (``core.verdict``, ``core.check``, ``core.record``);
- ``measure``, ``engines``, ``reports`` and ``assets`` never import pytest or the plugin;
- only ``plugin``, ``fixtures`` and ``hooks`` import pytest, and they stay small.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_llmperf"
PYTEST_LAYER = {"pytest_llmperf.plugin", "pytest_llmperf.fixtures", "pytest_llmperf.hooks"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of this package (and pytest) that ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in modules or name == "pytest" or name.startswith("_pytest"):
                found.add("pytest" if name.split(".")[0] in ("pytest", "_pytest") else name)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


GRAPH = _graph()


def test_the_graph_is_read() -> None:
    assert "pytest_llmperf.core.record" in GRAPH["pytest_llmperf.measure.calls"]
    assert "pytest" in GRAPH["pytest_llmperf.plugin"]


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH:
                continue
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) == "core"))
def test_core_imports_only_core(module: str) -> None:
    allowed = {"core", "errors"}
    bad = sorted(t for t in GRAPH[module] if t == "pytest" or _layer(t) not in allowed)
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) == "engines"))
def test_engines_import_no_reports_or_verdicts(module: str) -> None:
    verdicts = {"pytest_llmperf.core.verdict", "pytest_llmperf.core.outcome", "pytest_llmperf.core.record"}
    bad = sorted(t for t in GRAPH[module] if _layer(t) in ("reports", "measure") or t in verdicts or t == "pytest")
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m not in PYTEST_LAYER))
def test_only_the_pytest_layer_imports_pytest_or_the_plugin(module: str) -> None:
    bad = sorted(t for t in GRAPH[module] if t == "pytest" or t in PYTEST_LAYER)
    assert not bad, f"{module} imports {bad}"


def test_the_pytest_layer_is_small() -> None:
    lines = {name: len((PACKAGE / f"{name.rsplit('.', 1)[1]}.py").read_text().splitlines()) for name in PYTEST_LAYER}
    # 360 until studies and progress added their wiring (markers, collection counts, the session's verdict).
    assert sum(lines.values()) <= 400, lines
