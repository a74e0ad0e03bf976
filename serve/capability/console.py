"""The console: a page on the served capability for the people who run it (`GET /`,
`/console`, its static files and two JSON feeds): the graph in its deployments, each
node's live state and figures, and a form that runs one frame through the job route.
The page opens without the bearer token and runs under a strict CSP.
docs/serving.md ("The console") has its routes and security.
"""

import time
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from capgraph.engine.render import picture
from capgraph.serve.capability import http
from capgraph.serve.capability.http import route_path
from capgraph.serve.capability.traffic import RATE_S, WINDOW_S
from capgraph.serve.compile import Unit

if TYPE_CHECKING:
    from capgraph.serve.capability.ingress import Capability

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
"""On every answer of the console, feeds included."""
PAGES = ("/", "/console")
FILES = {"capgraph.js": "text/javascript", "console.js": "text/javascript", "console.css": "text/css"}
"""What `/console/static/` serves: the page's own files, nothing else from the folder."""


def static_text(name: str) -> str:
    """One of the console's files (`serve/capability/static/`), as text: also what `capgraph run --html` inlines."""
    return (resources.files("capgraph.serve.capability") / "static" / name).read_text(encoding="utf-8")


def mount(app: FastAPI, capability: "Capability") -> None:
    """Add the console's feeds to the capability's app and put `Shell` in front of it.
    Call it after every other middleware is added: `Shell` must be the outermost."""
    plan, compiled, health, traffic = capability.plan, capability.compiled, capability.health, capability.traffic
    graph = graph_feed(capability)

    @app.get("/console/api/graph", include_in_schema=False)
    async def graph_route() -> JSONResponse:
        return JSONResponse(graph, headers=HEADERS)

    @app.get("/console/api/live", include_in_schema=False)
    async def live_route() -> JSONResponse:
        ready, states = await health.check()
        figures = traffic.summary(plan.nodes)
        nodes: dict[str, Any] = {}
        for unit in compiled.units:
            report = health.reports.get(unit.name) or {}
            for node_id in unit.nodes:
                loaded = (report.get("nodes") or {}).get(node_id) or {}
                nodes[node_id] = figures[node_id] | {
                    "state": states.get(node_id, "loading"),
                    "queue": report.get("queued"),
                    "running": _running(report, node_id),
                    "device": loaded.get("device"),
                    "dtype": loaded.get("dtype"),
                    "models": loaded.get("models", []),
                    "models_mode": loaded.get("models_mode", ""),
                    "weight_bytes": loaded.get("weight_bytes"),
                    "load_s": loaded.get("load_s"),
                    "warmup_s": loaded.get("warmup_s"),
                }
        body = {
            "ready": ready,
            "in_flight": capability.in_flight,
            "max_in_flight": capability.max_in_flight,
            "failed_outside_nodes": traffic.failed.get("", 0),
            "replaced": health.replacements.recent(),
            "uptime_s": round(time.monotonic() - traffic.started, 1),
            "nodes": nodes,
            "frames_by_kind": _frames_by_kind(health.reports),
            "streams": capability.streams() if capability.streams is not None else [],
        }
        return JSONResponse(body, headers=HEADERS)

    app.add_middleware(Shell)


def _running(report: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    """What the node's replica runs now, where it is this node: seconds, and steps done of all."""
    running = report.get("running")
    return running if running and running.get("node") == node_id else None


def _frames_by_kind(reports: dict[str, Any]) -> dict[str, int]:
    """Live-stream frames and batch (request) frames the node replicas ran, over every unit:
    live frames go first, batch frames keep a share (`serve.replica.Batcher.take`)."""
    total = {"live": 0, "batch": 0}
    for report in reports.values():
        for kind, count in ((report or {}).get("taken") or {}).items():
            total[kind] = total.get(kind, 0) + int(count)
    return total


def graph_feed(capability: "Capability") -> dict[str, Any]:
    """What the page draws once: it does not change while the app runs."""
    plan, compiled, settings = capability.plan, capability.compiled, capability.settings
    return {
        "capability": plan.capability,
        "version": plan.spec.version,
        "description": plan.spec.description or "",
        "route": f"v1/{plan.capability}",
        "picture": picture(plan, {u.name: u.nodes for u in compiled.units}),
        "deployments": {u.name: unit_summary(u) for u in compiled.units},
        "schema": http.schema(plan),
        "limits": {
            "max_pixels": settings.max_pixels,
            "max_body_bytes": settings.max_body_bytes,
            "request_timeout_s": settings.request_timeout_s,
        },
        "window_s": WINDOW_S,
        "rate_s": RATE_S,
    }


def unit_summary(unit: Unit) -> dict[str, Any]:
    """A deployment's box label: what the planner chose for it."""
    replicas = unit.replicas if isinstance(unit.replicas, int) else {"min": unit.replicas.min, "max": unit.replicas.max}
    return {
        "replicas": replicas,
        "num_gpus": unit.num_gpus,
        "num_cpus": unit.num_cpus,
        "threads": unit.threads,
        "max_batch_size": unit.max_batch_size,
        "batch_wait_ms": round(unit.batch_wait_s * 1000, 2),
    }


class Shell:
    """ASGI middleware, outermost: answers `GET`/`HEAD` of the page and its files, which carry
    nothing of the capability, before the bearer check; passes every other request on. A
    page opened under a route prefix without its trailing slash is sent to it, so the page's
    relative URLs stay under the prefix."""

    def __init__(self, app: ASGIApp):
        self.app = app
        page = static_text("index.html").encode()
        self.files: Mapping[str, tuple[bytes, str]] = {p: (page, "text/html; charset=utf-8") for p in PAGES} | {
            f"/console/static/{name}": (static_text(name).encode(), f"{kind}; charset=utf-8")
            for name, kind in FILES.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") else None
        found = self.files.get(path) if path is not None else None
        if found is None:
            return await self.app(scope, receive, send)
        headers = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
        if path == "/" and not scope.get("path", "/").endswith("/"):
            location = scope.get("root_path", "") + "/"  # the prefix (Serve's config), never the caller's text
            await send(
                {
                    "type": "http.response.start",
                    "status": 307,
                    "headers": headers + [(b"location", location.encode("latin-1"))],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body, kind = found
        headers += [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
