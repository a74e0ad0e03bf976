"""What a graph compiles to, as plain data (no Ray calls): the deployment units
(`compiler`), the planner's choices (`planner`), tuned overlays (`overlay`), models shared
between graphs (`sharing`) and the graph file's Serve half (`config_check`).

Its public surface is below, imported on first use (some of it needs Ray)."""

from importlib import import_module
from typing import Any

_SURFACE = {
    "Compiled": "compiler",
    "GIB": "compiler",
    "INGRESS": "compiler",
    "Remote": "compiler",
    "Unit": "compiler",
    "compile_plan": "compiler",
    "application": "config_check",
    "check_deployment_sections": "config_check",
    "OVERLAY_FORMAT": "overlay",
    "Overlay": "overlay",
    "default_path": "overlay",
    "find_overlay": "overlay",
    "fingerprint": "overlay",
    "measured_costs": "overlay",
    "overlay_yaml": "overlay",
    "write_measured": "overlay",
    "Cost": "planner",
    "machine_for": "planner",
    "Alias": "sharing",
    "MODEL_APP_PREFIX": "sharing",
}
__all__ = sorted(_SURFACE)


def __getattr__(name: str) -> Any:
    if name not in _SURFACE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_SURFACE[name]}"), name)
