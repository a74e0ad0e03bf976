"""Who may import whom, read from the source: the engine imports neither the Serve layer nor
the CLI; node families import neither, nor the catalogue (the engine finds them through the
one list `nodes.BUILTIN`, never the other way round)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "engine": ("serve", "cli"),
    "nodes": ("serve", "cli", "engine.registry"),
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(package: str):
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported(path):
            if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[package]):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not found, "\n".join(found)
