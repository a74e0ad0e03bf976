"""Where replicas run on a cluster: will the graph fit (`preflight`), replicas spread again
when a machine returns (`respread`), torch threads that follow the load (`cores`), and the
settings every replica needs wherever Ray places it (`environment`), and the processes
behind them: signals, a local Ray, a local `serve run` (`process`).

Its public surface is below, imported on first use (some of it needs Ray)."""

from importlib import import_module
from typing import Any

_SURFACE = {
    "CoreShare": "cores",
    "machine_cores": "cores",
    "sharing_on": "cores",
    "cluster_from_ray": "preflight",
    "deployments": "preflight",
    "LocalRay": "process",
    "StopSignals": "process",
    "stop_local_serve_run": "process",
    "wait_until_stopped": "process",
    "claimed": "respread",
}
__all__ = sorted(_SURFACE)


def __getattr__(name: str) -> Any:
    if name not in _SURFACE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_SURFACE[name]}"), name)
