"""The helpers package's import graph: no module imports one that imports it back (lazy imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

HELPERS = Path(__file__).resolve().parent.parent / "helpers"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The helpers modules that ``path`` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "helpers":
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("helpers.")}
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in HELPERS.glob("*.py")}
    modules |= {p.name for p in HELPERS.iterdir() if (p / "__init__.py").is_file()}  # subpackages
    graph = {}
    for path in HELPERS.rglob("*.py"):
        name = path.parent.name if path.parent != HELPERS else path.stem
        graph.setdefault(name, set()).update(imports_of(path, modules) - {name})
    return graph


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
    assert {"assets", "grounding", "fonts", "server", "engine"} <= set(graph)
    assert "fonts" in graph["grounding"] and "assets" not in graph["grounding"]
    assert cycles(graph) == [], [" -> ".join(c) for c in cycles(graph)]
