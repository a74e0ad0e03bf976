"""The commands that operate a capability: `capgraph serve` (`run`), several graphs together
(`together`), `capgraph tune` (`tune`), KubeRay manifests (`kuberay`); they lean on process control:
signals and a local Ray (`serve.cluster.process`).

Its public surface is below, imported on first use (some of it needs Ray)."""

from importlib import import_module
from typing import Any

_SURFACE = {
    "Shape": "kuberay",
    "check_name": "kuberay",
    "memory_bytes": "kuberay",
    "rayservice": "kuberay",
    "serve_graph": "run",
    "serve_config": "together",
    "tune_graph": "tune",
}
__all__ = sorted(_SURFACE)


def __getattr__(name: str) -> Any:
    if name not in _SURFACE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_SURFACE[name]}"), name)
