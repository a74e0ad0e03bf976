"""capgraph's Ray Serve layer: the builder (`app`), the node replica (`replica`), and four
sub-packages by concern: `compile` (what a graph compiles to), `cluster` (where replicas
run), `capability` (the HTTP capability) and `operate` (the commands that run it)."""

from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any


def surface(package: str, names: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """A sub-package's public surface, module -> names: its `__all__` and a module
    `__getattr__` that imports each name's module on first use (some of them need Ray)."""
    home = {name: module for module, listed in names.items() for name in listed}

    def getattr_(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{home[name]}"), name)

    return sorted(home), getattr_
