"""Who may import whom, read from the source. Everything is imported under the `capgraph`
namespace (a bare `engine` or `serve` would be a second copy of a module, and the name of
someone else's package once installed). The layers, bottom up: engine (the graph, the node
and weights contracts, the executor, the mount registry), nodes (families), serve (the Ray
Serve layer, which finds Livepeer and any other mount through `engine.mounts` only),
livepeer, cli. Node families do not import the catalogue (the engine finds them through the
one list `capgraph.nodes.BUILTIN`), and no package reaches into another's private names."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("engine", "nodes", "serve", "livepeer", "cli", "capgraph")
FOLDERS = (*PRODUCT, "tests", "benchmarks")
SUBS = ("compile", "cluster", "capability", "operate")
BARE = ("engine", "nodes", "serve", "livepeer", "cli")
FORBIDDEN = {
    "engine": ("capgraph.nodes", "capgraph.serve", "capgraph.livepeer", "capgraph.cli"),
    "nodes": ("capgraph.serve", "capgraph.livepeer", "capgraph.cli", "capgraph.engine.registry"),
    "serve": ("capgraph.livepeer", "capgraph.cli"),
    "livepeer": ("capgraph.cli",),
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
            found += [
                f"{path.relative_to(ROOT)} imports {name}"
                for name in sorted(imported(path))
                if any(name == b or name.startswith(b + ".") for b in banned)
            ]
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

    code = (
        "import pickle, sys\nfrom capgraph.engine.validate import load_plan\n"
        "from capgraph.serve.compile.compiler import compile_plan\n"
        "import capgraph.serve.capability.ingress, capgraph.serve.capability.routes\n"
        "pickle.loads(pickle.dumps(compile_plan(load_plan(sys.argv[1]))))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'cv2') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "graphs" / "hybrid.yaml")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def _package(module: str) -> str:
    """The folder or serve sub-package a module belongs to: `capgraph.serve.compile.planner`
    -> `capgraph.serve.compile`, `capgraph.engine.plan` -> `capgraph.engine`."""
    parts = module.split(".")
    return ".".join(parts[:3] if parts[1:2] == ["serve"] and len(parts) > 3 else parts[:2])


def test_no_package_imports_another_packages_private_names() -> None:
    found = []
    for folder in (*PRODUCT, "plugins"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            if "build" in rel.parts:  # a plug-in's build output, not its source
                continue
            here = (
                "plugins"
                if folder == "plugins"
                else _package(".".join(["capgraph", *rel.parts] if folder != "capgraph" else rel.parts))
            )
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.module
                    and node.module.startswith("capgraph.")
                    and node.level == 0
                ):
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    hidden = any(p.startswith("_") for p in node.module.split("."))
                    if _package(node.module) != here and (private or hidden):
                        found.append(
                            f"{path.relative_to(ROOT)}: from {node.module} import {', '.join(private) or '...'}"
                        )
    assert not found, "\n".join(found)


def test_serve_sub_packages_are_entered_through_their_surface() -> None:
    """Outside `serve/compile`, `serve/cluster`, `serve/capability` and `serve/operate`,
    product code imports what each names in its `__init__.py` (or a whole module), never
    a name from inside one of its modules."""
    subs = ("compile", "cluster", "capability", "operate")
    found = []
    for folder in PRODUCT:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    parts = node.module.split(".")
                    if (
                        parts[:2] == ["capgraph", "serve"]
                        and len(parts) > 3
                        and parts[2] in subs
                        and rel.parts[:2] != ("serve", parts[2])
                    ):
                        found.append(f"{rel}: from {node.module} import ...")
    assert not found, "\n".join(found)


def test_every_name_taken_from_a_serve_sub_package_is_on_its_surface() -> None:
    """An import inside a function runs only when it is called: check them all here."""
    import importlib.util

    missing = []
    for folder in (*PRODUCT, "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    parts = node.module.split(".")
                    if parts[:2] == ["capgraph", "serve"] and len(parts) == 3 and parts[2] in SUBS:
                        package = importlib.import_module(node.module)
                        missing += [
                            f"{path.relative_to(ROOT)}: {node.module} has no {a.name}"
                            for a in node.names
                            if a.name not in package.__all__
                            and importlib.util.find_spec(f"{node.module}.{a.name}") is None
                        ]
    assert not missing, "\n".join(missing)
