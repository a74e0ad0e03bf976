"""Who may import whom, read from the source. Everything is imported under the `capgraph`
namespace (a bare `engine` or `serve` would be a second copy of a module, and the name of
someone else's package once installed); the engine imports neither the Serve layer nor the
CLI; node families import neither, nor the catalogue (the engine finds them through the one
list `capgraph.nodes.BUILTIN`, never the other way round)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("engine", "nodes", "serve", "cli", "capgraph", "tests", "benchmarks")
BARE = ("engine", "nodes", "serve", "cli")
FORBIDDEN = {
    "engine": ("capgraph.serve", "capgraph.cli"),
    "nodes": ("capgraph.serve", "capgraph.cli", "capgraph.engine.registry"),
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def importing(folders: tuple[str, ...], banned: tuple[str, ...]) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(imported(path))
                      if any(name == b or name.startswith(b + ".") for b in banned)]
    return found


def test_everything_is_imported_under_the_capgraph_namespace():
    assert not importing(FOLDERS, BARE), "\n".join(importing(FOLDERS, BARE))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(package: str):
    found = importing((package,), FORBIDDEN[package])
    assert not found, "\n".join(found)
