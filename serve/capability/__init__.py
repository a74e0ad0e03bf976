"""The HTTP capability: the ingress (`ingress`) and its app (`routes`), the wire format
(`http`, `wire`), errors (`errors`), health (`health`, `incidents`), live figures
(`traffic`), the console (`console`, `static/`) and a run's HTML report (`report`).

Its public surface is below, imported on first use (some of it needs Ray)."""

from importlib import import_module
from typing import Any

_SURFACE = {
    "RETRY_AFTER_S": "errors",
    "retry_headers": "errors",
    "check_params": "http",
    "render_json": "http",
    "request_schema": "http",
    "route_path": "http",
    "Capability": "ingress",
    "Settings": "ingress",
    "run_report": "report",
    "MAX_BODY_BYTES": "wire",
    "media_type": "wire",
    "read_body": "wire",
    "read_form": "wire",
    "read_job": "wire",
}
__all__ = sorted(_SURFACE)


def __getattr__(name: str) -> Any:
    if name not in _SURFACE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_SURFACE[name]}"), name)
