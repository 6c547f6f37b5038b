"""The helpers package's import graph: no module imports one that imports it back (lazy imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

HELPERS = Path(__file__).resolve().parent.parent / "helpers"


def module_name(path: Path) -> str:
    """``engine`` for helpers/engine.py, ``bench.run`` for helpers/bench/run.py, ``bench`` for __init__."""
    parts = path.relative_to(HELPERS).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The helpers modules that ``path`` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers"):
            base = node.module.removeprefix("helpers").lstrip(".")
            for alias in node.names:  # `from helpers.bench import run` names a module
                candidate = f"{base}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("helpers.") for a in node.names if a.name.startswith("helpers.")}
    return (found & modules) - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = list(HELPERS.rglob("*.py"))
    modules = {module_name(p) for p in paths} - {""}
    return {module_name(p): imports_of(p, modules) for p in paths if module_name(p)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each listed once from its alphabetically first module."""
    found = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for following in sorted(graph.get(node, ())):
            if following == start:
                found.append([*path, start])
            elif following > start and following not in path:
                walk(start, following, [*path, following])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"assets": {"grounding"}, "grounding": {"assets"}, "fonts": set()}) == [
        ["assets", "grounding", "assets"]
    ]


def test_no_helpers_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert {"assets", "grounding", "fonts", "server", "bench", "bench.run", "bench.common"} <= set(graph)
    assert "bench.common" in graph["bench.run"] and "bench.run" in graph["bench"]
    assert "fonts" in graph["grounding"] and "assets" not in graph["grounding"]
    assert cycles(graph) == [], [" -> ".join(c) for c in cycles(graph)]
