"""The capability's HTTP app: `POST /v1/{capability}`, its schema, `/health`, the OpenAPI
docs, the console at `/`, plus the routes of each installed mount (`engine.mounts`:
Livepeer's among them). Every answer is JSON, errors included (`_json_errors`).
"""

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from capgraph.engine.errors import InputError, NodeFailed
from capgraph.engine.mounts import Mount, mounts
from capgraph.engine.plan import Plan
from capgraph.serve.capability import console, http
from capgraph.serve.capability.errors import RETRY_AFTER_S, error_answer, first_line
from capgraph.serve.capability.trace import TRACE_HEADER, Trace, trace_wanted
from capgraph.serve.capability.wire import read_job

if TYPE_CHECKING:
    from capgraph.serve.capability.ingress import Capability

log = logging.getLogger("ray.serve")

TIMINGS_HEADER, SKIPPED_HEADER = "x-capgraph-timings-ms", "x-capgraph-skipped"
"""An image answer's timings (`node=ms,...`) and skipped nodes, which a JSON answer carries in its body."""
TIMEOUT_HEADER = "x-capgraph-timeout-s"
"""A caller's own deadline in seconds (a gateway's remaining budget); never longer than
the configured `request_timeout_s`."""


def capability_app(capability: "Capability") -> FastAPI:
    """The app of one ingress replica; its lifespan runs the health watcher."""
    plan, settings, health_state = capability.plan, capability.settings, capability.health
    watcher: list[asyncio.Task] = []

    async def lifespan(_: FastAPI):
        watcher.append(asyncio.get_running_loop().create_task(health_state.watch()))
        yield
        watcher[0].cancel()

    app = FastAPI(
        title=plan.capability,
        version=plan.spec.version,
        description=plan.spec.description or plan.capability,
        lifespan=lifespan,
    )
    route = f"/v1/{plan.capability}"
    attached = mount_settings(plan, settings.mounts)  # read here, in the ingress replica: secrets stay on the cluster

    @app.post(
        route,
        summary=f"Run {plan.capability} on one frame",
        openapi_extra={
            "requestBody": {"required": True, "content": http.request_schema(plan)},
            "parameters": [
                {
                    "name": TIMEOUT_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "the caller's deadline in seconds; never extends request_timeout_s",
                    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6},
                },
                {
                    "name": "accept",
                    "in": "header",
                    "required": False,
                    "description": "image/png, image/jpeg or image/webp: the one image output's bytes instead of "
                    f"JSON (timings in {TIMINGS_HEADER})",
                    "schema": {"type": "string"},
                },
            ],
        },
    )
    async def infer(request: Request) -> JSONResponse:
        trace = Trace() if trace_wanted(request.headers) else None
        try:
            with capability.admitted():  # before the body is read: refusing costs next to nothing
                deadline = _timeout(request)
                image = http.answer_type(plan, request.headers.get("accept", ""))
                inputs, params = await read_job(request, plan, settings.max_pixels, settings.max_body_bytes)
                if trace is not None:
                    trace.decoded = time.time()
                outputs, timings, batches, skipped = await capability.execute(inputs, params, deadline, trace)
                if image is None:
                    content = await asyncio.to_thread(http.render_outputs, plan, outputs, timings, skipped)
                elif image[0] in outputs:
                    content = await asyncio.to_thread(http.render_image, plan, outputs, *image)
        except (InputError, NodeFailed) as exc:
            return error_answer(exc)
        headers = {"x-capgraph-batch-sizes": ",".join(f"{k}={v}" for k, v in batches.items())}
        if image is not None:  # what the JSON answer's other fields would say
            headers[TIMINGS_HEADER] = ",".join(f"{k}={v:g}" for k, v in timings.items())
            if plan.conditions:
                headers[SKIPPED_HEADER] = ",".join(skipped)
        if trace is not None:
            headers[TRACE_HEADER] = trace.header(time.time())
        if image is None:
            return Response(content, media_type="application/json", headers=headers)
        if image[0] not in outputs:  # an optional output its branch did not give
            return Response(status_code=204, headers=headers)
        return Response(content, media_type=f"image/{image[1]}", headers=headers)

    @app.get(f"{route}/schema", summary="Inputs, request params and outputs of the capability")
    async def schema() -> dict[str, Any]:
        return http.schema(plan)

    @app.get("/health", summary="200 once every node is loaded and warm (or still serving while it updates), else 503")
    async def health() -> JSONResponse:
        ready, nodes = await health_state.check()
        updating = "updating" in nodes.values()
        replaced = health_state.replacements.recent()
        extra = {"replaced": replaced} if replaced else {}
        if ready:
            return JSONResponse({"status": "updating" if updating else "ok", "nodes": nodes} | extra)
        if updating:
            status = "updating"
        elif health_state.healthy_since is not None or {"unhealthy", "failed"} & set(nodes.values()):
            status = "unhealthy"
        else:
            status = "loading"
        return JSONResponse(
            {"status": status, "nodes": nodes} | extra, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    owners: dict[str, Mount] = {}  # path -> the mount that answers its errors
    for name, section_settings in attached.items():
        owners |= dict.fromkeys(mounts()[name].attach(app, capability, section_settings), mounts()[name])
    console.mount(app, capability)  # last: its page is answered ahead of a mount's bearer check
    _json_errors(app, owners)
    return app


def _timeout(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    try:
        seconds = float(value) if value else None
    except ValueError:
        raise InputError(f"headers.{TIMEOUT_HEADER}", f"'{value[:20]}' is not a number of seconds", 400) from None
    if seconds is not None and not 0 < seconds < 1e6:
        raise InputError(f"headers.{TIMEOUT_HEADER}", "must be a positive number of seconds", 400)
    return seconds


def _json_errors(app: FastAPI, owners: Mapping[str, Mount]) -> None:
    """Unknown routes, wrong methods and the unexpected answer JSON too: capgraph's
    `{"error": {"field", "msg"}}`, or the owning mount's shape on a mount's route.
    Never a traceback: an unexpected exception is logged and answered in one line."""

    def answer(request: Request, exc: InputError | NodeFailed, headers: Mapping[str, str] | None = None) -> Response:
        owner = owners.get(http.route_path(request.scope)) if owners else None
        if owner is not None:
            return owner.error(exc, headers)
        return error_answer(exc, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return answer(
                request,
                InputError(
                    "path", f"no route {request.method} {request.url.path[:200]}; see /docs for the routes", 404
                ),
            )
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return answer(
                request,
                InputError("method", f"{request.method} is not allowed here; use {allowed or 'another method'}", 405),
                exc.headers,
            )
        if exc.status_code >= 500:
            return answer(request, NodeFailed(str(exc.detail)[:300], status=exc.status_code), exc.headers)
        field = "body" if exc.status_code in (400, 413, 415, 422) else "request"
        return answer(request, InputError(field, str(exc.detail)[:300], exc.status_code), exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "capgraph: %s %s failed: %s: %s",
            request.method,
            request.url.path[:200],
            type(exc).__name__,
            first_line(exc),
        )
        return answer(request, NodeFailed("internal error; the capability logged it"))


def mount_settings(plan: Plan, sections: Mapping[str, Any]) -> dict[str, Any]:
    """Each installed mount's settings from its graph-file section (None: not written)."""
    return {name: mount.settings(plan, sections.get(name)) for name, mount in mounts().items()}
