"""The capability's HTTP front: a FastAPI ingress deployment that walks the compiled units.

Routes: `POST /v1/{capability}` (JSON or multipart), `GET /v1/{capability}/schema`,
`GET /health`, OpenAPI docs at `/docs`; plus the Livepeer routes where `serve.livepeer`
is installed. A request's frame is dispatched to every unit at once: each unit's call
gets the DeploymentResponses of the units it reads from, unawaited, so intermediate
values go from replica to replica through Ray's object store without passing through the
ingress; the ingress awaits only the units nobody reads from.

`run(inputs, params)` and `is_ready()` are the two entry points other front-ends (the
Livepeer routes) share with HTTP: decoded values in, numpy values and timings out.

What a gateway can count on (tests/reliability proves each):

- a caller's mistake is a 4xx JSON naming the field, found before any node runs; an
  unknown route or method too; nothing answers with a traceback;
- a replica that dies fails only the frames it held, at once, with a retryable 503;
- past `max_in_flight` graph requests the next one gets 503 with `Retry-After` at once,
  instead of queueing without bound;
- past `request_timeout_s` (or a caller's shorter `x-capgraph-timeout-s`) the answer is 504;
- with a bearer token configured (the Livepeer section's `token_env`), every route but
  `/health` and `/ready` needs it.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from engine.errors import InputError
from engine.executor import check_inputs
from engine.values import MAX_PIXELS
from serve import http
from serve.compiler import Compiled

log = logging.getLogger("ray.serve")

READY = {"HEALTHY", "UPSCALING", "DOWNSCALING"}
"""Ray deployment statuses in which every replica the deployment wants is running."""
RETRY_AFTER_S = 1
"""What a retryable 503 (a replica died, the capability is full) tells the caller to wait."""
MAX_FORM_PARTS = 64
"""Most parts a multipart request may have: a graph has a handful of inputs."""


@dataclass(frozen=True)
class Settings:
    max_pixels: int = MAX_PIXELS
    max_body_bytes: int = 64 << 20
    request_timeout_s: float = 60.0
    livepeer: Mapping[str, Any] | None = None
    max_in_flight: int | None = None
    """Graph requests one ingress replica runs at once; the next one gets 503 with
    `Retry-After` at once. None: three quarters of the replica's `max_ongoing_requests`
    (`max_concurrency`), which keeps the last quarter free for /health and for refusing."""


class NodeFault(RuntimeError):
    """A node failed on a frame (capgraph's own fault: HTTP 500), or none of its replicas
    could be reached or the capability is full (503, worth retrying)."""

    def __init__(self, message: str, node: str | None = None, status: int = 500):
        super().__init__(message)
        self.node, self.status = node, status


@serve.ingress()
class Capability:
    def __init__(self, compiled: Compiled, handles: dict[str, DeploymentHandle], settings: Settings):
        self.compiled, self.plan, self.handles, self.settings = compiled, compiled.plan, handles, settings
        self.started = time.monotonic()
        self.healthy_since: float | None = None
        self._health_cache: tuple[float, bool, dict[str, Any]] | None = None
        self.in_flight = 0
        """Graph requests running in this replica (counted in the event loop: no lock)."""
        try:
            context = serve.get_replica_context()
            self.app_name = context.app_name
            max_ongoing = context._deployment_config.max_ongoing_requests  # no public accessor in Ray 2.60
        except Exception:  # outside a replica (tests that build the app only)
            self.app_name, max_ongoing = "default", None
        self.max_in_flight = settings.max_in_flight or (max(1, max_ongoing * 3 // 4) if max_ongoing else None)
        self.born_serving = any(running for name, (_, running) in self._ray_statuses().items() if name in handles)
        """Whether node replicas were already running when this ingress started: it is a new
        version rolling out over a serving one, so a node without a warm replica is updating."""

    # -- the shared entry points ------------------------------------------------------------

    async def run(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """One frame through the graph. Raises InputError on bad input, NodeFault when a
        node failed, TimeoutError past the request timeout."""
        with self.admitted():
            outputs, timings, _ = await self.execute(inputs, params)
        return outputs, timings

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the `max_in_flight` slots for a graph request, or refuse it at once
        with a retryable 503: a queue without bound only turns overload into timeouts."""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            raise NodeFault(f"the capability is running {self.in_flight} requests, its limit; retry in {RETRY_AFTER_S} s "
                            "or at another replica", status=503)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def is_ready(self) -> bool:
        ready, _ = await self.health()
        return ready

    async def execute(self, inputs: Mapping[str, Any], params: Mapping[str, Any],
                      timeout_s: float | None = None) -> tuple[dict[str, Any], dict[str, float], dict[str, int]]:
        """`run`, plus each node's batch size; `timeout_s` may shorten the configured timeout."""
        timeout = min(timeout_s or self.settings.request_timeout_s, self.settings.request_timeout_s)
        start = time.perf_counter()
        checked = check_inputs(self.plan, inputs)
        resolved = self.plan.params_for(params)
        overrides = {k: v for k, v in resolved.items() if v is not self.plan.nodes[k].params}
        results = await self._dispatch(checked, overrides, timeout)
        values: dict[str, Any] = {}
        meta: dict[str, dict[str, float]] = {}
        for result in results:
            if "error" in result:
                error = result["error"]
                if error.get("field"):
                    raise InputError(error["field"], error["msg"], error.get("status", 422))
                raise NodeFault(error["msg"], error.get("node"), error.get("status", 500))
            values.update(result["values"])
            meta.update(result["meta"])
        outputs = {name: checked[src.port] if src.node is None else values[str(src)] for name, src in self.plan.outputs.items()}
        timings: dict[str, float] = {}
        for node_id in self.plan.nodes:
            if node_id in meta:
                timings[node_id] = meta[node_id]["ms"]
                if "queue_ms" in meta[node_id]:
                    timings[f"{node_id}.queue"] = meta[node_id]["queue_ms"]
        timings["total"] = round((time.perf_counter() - start) * 1000.0, 3)
        batches = {node_id: int(m["batch"]) for node_id, m in meta.items()}
        return outputs, timings, batches

    async def _dispatch(self, checked: Mapping[str, Any], overrides: Mapping[str, Any], timeout: float) -> list[dict[str, Any]]:
        """Send the frame to every unit at once; the results of the units nobody reads from."""
        responses: dict[str, DeploymentResponse] = {}
        for unit in self.compiled.units:
            mine = {k: v for k, v in overrides.items() if k in unit.nodes}
            responses[unit.name] = self.handles[unit.name].remote(
                {name: checked[name] for name in unit.graph_inputs}, mine, *(responses[u] for u in unit.upstream))
        awaited = [responses[name] for name in self.compiled.awaited]
        try:
            return await asyncio.wait_for(asyncio.gather(*awaited), timeout)
        except asyncio.TimeoutError:
            _cancel(responses.values())
            raise TimeoutError(f"the graph did not answer within {timeout:g} s") from None
        except Exception as exc:  # a replica died or none is reachable: fail now, the caller retries
            _cancel(responses.values())
            raise NodeFault(f"a node replica died or cannot be reached ({type(exc).__name__}: {_first_line(exc)}); "
                            f"retry in {RETRY_AFTER_S} s", status=503) from exc

    # -- health ----------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every unit's replicas have loaded and warmed their nodes (they report
        it) and Ray has every replica it wants running. Cached for half a second."""
        now = time.monotonic()
        if self._health_cache and now - self._health_cache[0] < 0.5:
            return self._health_cache[1], self._health_cache[2]
        statuses = await asyncio.to_thread(self._ray_statuses)
        reports = await asyncio.gather(*(self._state(u.name, statuses.get(u.name)) for u in self.compiled.units))
        nodes: dict[str, Any] = {}
        ready = True
        for unit, report in zip(self.compiled.units, reports):
            status = statuses.get(unit.name, (None, 0))[0]
            for node_id in unit.nodes:
                serving = _serving(report, node_id)
                nodes[node_id] = _node_state(report, node_id, status, serving, self.healthy_since is not None or self.born_serving)
                ready = ready and serving and nodes[node_id] in ("ok", "updating")
        self._health_cache = (now, ready, nodes)
        return ready, nodes

    async def _state(self, unit: str, ray_status: tuple[str, int] | None) -> dict[str, Any] | None:
        if ray_status is not None and ray_status[1] == 0:
            return None  # no replica running: asking would wait for one
        try:
            return await asyncio.wait_for(self.handles[unit].state.remote(), 2.0)
        except Exception:  # no running replica yet, or it died: Ray's status says which
            return None

    def _ray_statuses(self) -> dict[str, tuple[str, int]]:
        """Ray's status of each deployment and how many of its replicas are running."""
        try:
            app = serve.status().applications.get(self.app_name)
        except Exception:
            return {}
        return {name: (_value(d.status), sum(n for s, n in d.replica_states.items() if _value(s) == "RUNNING"))
                for name, d in (app.deployments if app else {}).items()}

    async def watch(self) -> None:
        """Log when the graph turns healthy, and every change after that."""
        was: bool | None = None
        while True:
            ready, nodes = await self.health()
            if ready != was:
                took = time.monotonic() - self.started
                if ready:
                    self.healthy_since = self.healthy_since or took
                    log.info("capgraph: capability '%s' is healthy (%d nodes loaded and warm) %.1fs after the ingress started",
                             self.plan.capability, len(nodes), took)
                elif was is not None:
                    log.warning("capgraph: capability '%s' is no longer healthy: %s", self.plan.capability, nodes)
                was = ready
            await asyncio.sleep(1.0 if not ready else 5.0)

    # -- HTTP --------------------------------------------------------------------------------

    def __serve_build_asgi_app__(self) -> FastAPI:
        plan, settings = self.plan, self.settings
        watcher: list[asyncio.Task] = []

        async def lifespan(_: FastAPI):
            watcher.append(asyncio.get_running_loop().create_task(self.watch()))
            yield
            watcher[0].cancel()

        app = FastAPI(title=plan.capability, version=plan.spec.version, description=plan.spec.description or plan.capability,
                      lifespan=lifespan)
        route = f"/v1/{plan.capability}"
        livepeer = livepeer_settings(self)

        @app.post(route, summary=f"Run {plan.capability} on one frame",
                  openapi_extra={"requestBody": {"required": True, "content": http.request_schema(plan)},
                                 "parameters": [{"name": TIMEOUT_HEADER, "in": "header", "required": False,
                                                 "description": "the caller's deadline in seconds; never extends request_timeout_s",
                                                 "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6}}]})
        async def infer(request: Request) -> JSONResponse:
            try:
                with self.admitted():  # before the body is read: refusing costs next to nothing
                    deadline = _timeout(request)
                    inputs, params = await self._parse(request)
                    outputs, timings, batches = await self.execute(inputs, params, deadline)
                    content = await asyncio.to_thread(http.render_outputs, plan, outputs, timings)
            except InputError as exc:
                return JSONResponse(http.error_body(exc), status_code=exc.status)
            except TimeoutError as exc:
                return JSONResponse({"error": {"msg": str(exc)}}, status_code=504)
            except NodeFault as exc:
                retry = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
                return JSONResponse({"error": {"node": exc.node, "msg": str(exc)}}, status_code=exc.status, headers=retry)
            headers = {"x-capgraph-batch-sizes": ",".join(f"{k}={v}" for k, v in batches.items())}
            return Response(content, media_type="application/json", headers=headers)

        @app.get(f"{route}/schema", summary="Inputs, request params and outputs of the capability")
        async def schema() -> dict[str, Any]:
            return http.schema(plan)

        @app.get("/health", summary="200 once every node is loaded and warm (or still serving while it updates), else 503")
        async def health() -> JSONResponse:
            ready, nodes = await self.health()
            updating = "updating" in nodes.values()
            if ready:
                return JSONResponse({"status": "updating" if updating else "ok", "nodes": nodes})
            if updating:
                status = "updating"
            elif self.healthy_since is not None or {"unhealthy", "failed"} & set(nodes.values()):
                status = "unhealthy"
            else:
                status = "loading"
            return JSONResponse({"status": status, "nodes": nodes}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

        livepeer_paths: set[str] = set()
        if livepeer is not None:
            from serve.livepeer.routes import BearerAuth, make_router

            router = make_router(plan, self.run, self.is_ready, livepeer)
            livepeer_paths = {r.path for r in router.routes if hasattr(r, "path")}
            app.include_router(router)
            token = livepeer.token()
            if token is not None:
                app.add_middleware(BearerAuth, token=token)
        _json_errors(app, livepeer_paths)
        return app

    async def _parse(self, request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("", "application/json", "multipart/form-data") and not media.endswith("+json"):
            raise InputError("headers.content-type", f"'{media[:60]}' is not a body this route reads; "
                             "send application/json or multipart/form-data", 415)
        raw = await self._body(request)
        if media == "multipart/form-data":
            fields = await _form(request, raw, self.settings.max_body_bytes)
            return await asyncio.to_thread(http.parse_form, self.plan, fields, self.settings.max_pixels)
        return await asyncio.to_thread(http.parse_json_body, self.plan, raw, self.settings.max_pixels)

    async def _body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it passes `max_body_bytes`, whether or not
        it said its length (a chunked upload is cut off, not buffered whole)."""
        limit = self.settings.max_body_bytes
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limit:
            raise InputError("body", f"request of {int(size):,} bytes is over the limit of {limit:,}", 413)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise InputError("body", f"request of more than {limit:,} bytes is over the limit", 413)
            chunks.append(chunk)
        return b"".join(chunks)


TIMEOUT_HEADER = "x-capgraph-timeout-s"
"""A caller's own deadline in seconds (a gateway's remaining budget); never longer than
the configured `request_timeout_s`."""


def _timeout(request: Request) -> float | None:
    value = request.headers.get(TIMEOUT_HEADER)
    try:
        seconds = float(value) if value else None
    except ValueError:
        raise InputError(f"headers.{TIMEOUT_HEADER}", f"'{value[:20]}' is not a number of seconds", 400) from None
    if seconds is not None and not 0 < seconds < 1e6:
        raise InputError(f"headers.{TIMEOUT_HEADER}", "must be a positive number of seconds", 400)
    return seconds


async def _form(request: Request, raw: bytes, max_part_bytes: int) -> dict[str, Any]:
    """A multipart body already read -> {name: bytes for a file part, str for a text part}."""

    async def once() -> Any:
        yield raw

    try:
        form = await MultiPartParser(request.headers, once(), max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS,
                                     max_part_size=max_part_bytes).parse()
    except MultiPartException as exc:
        raise InputError("body", f"not a valid multipart form ({exc.message})", 400) from None
    fields: dict[str, Any] = {}
    try:
        for name, value in form.multi_items():
            if not name:
                raise InputError("body", "a multipart part has no name; name each part after the input it carries", 400)
            if name in fields:
                raise InputError("params" if name == "params" else f"inputs.{name}", "sent more than once", 400)
            fields[name] = await value.read() if hasattr(value, "read") else value
    finally:
        await form.close()
    return fields


def _json_errors(app: FastAPI, livepeer_paths: set[str]) -> None:
    """Unknown routes, wrong methods and the unexpected answer JSON too: capgraph's
    `{"error": {"field", "msg"}}`, or `{"detail": {"msg", "field"}}` on a Livepeer route.
    Never a traceback: an unexpected exception is logged and answered in one line."""
    if livepeer_paths:
        from serve.livepeer.routes import route_path

    def answer(request: Request, status: int, field: str | None, msg: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        if livepeer_paths and route_path(request.scope) in livepeer_paths:
            body: dict[str, Any] = {"detail": {"msg": msg} | ({"field": field} if field else {})}
        else:
            body = {"error": ({"field": field} if field else {}) | {"msg": msg}}
        return JSONResponse(body, status_code=status, headers=dict(headers or {}))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return answer(request, 404, "path", f"no route {request.method} {request.url.path[:200]}; see /docs for the routes")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            return answer(request, 405, "method", f"{request.method} is not allowed here; use {allowed or 'another method'}",
                          exc.headers)
        field = "body" if exc.status_code in (400, 413, 415, 422) else None
        return answer(request, exc.status_code, field, str(exc.detail)[:300], exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("capgraph: %s %s failed: %s: %s", request.method, request.url.path[:200], type(exc).__name__, _first_line(exc))
        return answer(request, 500, None, "internal error; the capability logged it")


def _serving(report: Mapping[str, Any] | None, node_id: str) -> bool:
    """Whether a running replica says it has the node loaded and warm."""
    node = (report or {}).get("nodes", {}).get(node_id)
    return bool(node and node.get("loaded") and node.get("warm") and not (report or {}).get("fatal"))


def _node_state(report: Mapping[str, Any] | None, node_id: str, ray_status: str | None, serving: bool, was_healthy: bool) -> str:
    """ok, updating, loading, unhealthy or failed, from what the replica says and what Ray
    says. `updating`: Ray is rolling out a new version; the node still serves as long as
    one replica of either version is warm."""
    if ray_status == "DEPLOY_FAILED":
        return "failed"
    if ray_status == "UNHEALTHY" or (report and report.get("fatal")):
        return "unhealthy"
    if ray_status == "UPDATING" and (serving or was_healthy):
        return "updating"
    if not serving:
        return "loading" if ray_status in (None, "UPDATING") else "unhealthy"
    if ray_status is not None and ray_status not in READY:
        return "loading"
    return "ok"


def _value(enum: Any) -> str:
    return str(getattr(enum, "value", enum))


def _cancel(responses: Any) -> None:
    """Cancel what is still queued; a response that already failed raises on cancel."""
    for response in responses:
        try:
            response.cancel()
        except Exception:  # finished or failed already: nothing left to cancel
            pass


def _first_line(exc: BaseException) -> str:
    """One line of an exception for an answer: Ray's messages can carry a remote traceback."""
    return (str(exc).strip().splitlines() or [""])[0][:200]


def livepeer_settings(capability: Capability) -> Any:
    """The Livepeer section's settings (bearer token, routes), or None where `serve.livepeer`
    is not installed. Read here, in the ingress replica, so secrets given as environment
    variables stay on the cluster."""
    try:
        from serve.livepeer.settings import load_settings
    except ImportError:
        return None
    return load_settings(capability.plan, capability.settings.livepeer)
