"""Who may import whom, read from the source. Everything is imported under the `capgraph`
namespace (a bare `engine` or `serve` would be a second copy of a module, and the name of
someone else's package once installed); the engine imports neither the node families, the
Serve layer nor the CLI (it reads the one list `capgraph.nodes.BUILTIN` by name, as it reads
plug-ins); node families import neither, nor the catalogue; no package imports another's
underscore names."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("engine", "nodes", "serve", "cli", "capgraph", "tests", "benchmarks")
BARE = ("engine", "nodes", "serve", "cli")
FORBIDDEN = {
    "engine": ("capgraph.serve", "capgraph.cli", "capgraph.nodes"),
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


def test_the_ingress_imports_no_model_library() -> None:
    """Cold start: the ingress replica unpickles the plan (every family's module) and builds
    its routes, and imports neither torch nor a model library: seconds it would add to the
    start of every capability, for nothing it runs."""
    import subprocess
    import sys

    code = ("import pickle, sys\nfrom capgraph.engine.validate import load_plan\nfrom capgraph.serve.compile.compiler import compile_plan\n"
            "import capgraph.serve.capability.ingress, capgraph.serve.capability.routes\n"
            "pickle.loads(pickle.dumps(compile_plan(load_plan(sys.argv[1]))))\n"
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'cv2') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code, str(ROOT / "graphs" / "hybrid.yaml")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_no_package_imports_another_packages_private_names() -> None:
    """`from capgraph.x._y import z` or `from capgraph.x import _z` from outside `capgraph.x`."""
    found = []
    for folder in ("engine", "nodes", "serve", "cli", "livepeer", "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                    continue
                parts = node.module.split(".")
                if parts[0] != "capgraph" or len(parts) < 2 or parts[1] == folder:
                    continue
                names = parts[2:] + [alias.name for alias in node.names]
                found += [f"{path.relative_to(ROOT)} imports {node.module}:{n}" for n in names if n.startswith("_")]
    assert not found, "\n".join(found)
