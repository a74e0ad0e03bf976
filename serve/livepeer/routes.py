"""The Livepeer surface of a served graph, as one FastAPI router the ingress includes.

    router = make_router(plan, run, is_ready, settings)
    app.include_router(router)

adds, beside the ingress's own `/v1/{capability}` and `/health`:

- `GET /ready`: exactly 200 once every node is warm, else 503. A static Live Runner's
  `health_url` and a container health check want this; `/health` answers 200 while loading.
- `POST /{capability}`: a BYOC job. go-livepeer forwards only Content-Type, Content-Length
  and `Authorization: Bearer <token>` (when a token was registered), and passes the body
  through verbatim, so the body is the native job, read exactly as `/v1/{capability}` reads
  it (`serve.wire.read_job`: the same checks, the same messages, in the shape below).
- the ai-runner routes the graph's `livepeer.routes` declares, plus `/version` and
  `/hardware/info` (see `serve.livepeer.ai_runner`);
- `/stream/start|params|stop|status` when `livepeer.live` is set (see `serve.livepeer.live`).

Every error is `{"detail": {"msg": ...}}`, the shape go-livepeer and the livepeer-ai SDK
read. Jobs beyond `capacity` get 503 busy at once, with `Retry-After`: BYOC does not enforce
capacity itself, and a 5xx is what makes a gateway try the next orchestrator. The router's
lifespan runs the registrar (BYOC registration, Live Runner heartbeats) when the section
configures one.

`BearerAuth` guards a whole app: with a token configured, every route but `/health` and
`/ready` needs `Authorization: Bearer <token>`, compared in constant time; a missing or
wrong one is 401 in the shape above. The token is never logged nor echoed.
"""

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.errors import InputError
from engine.plan import Plan
from engine.values import MAX_PIXELS
from serve.http import render_json, request_schema
from serve.livepeer.codec import encode_outputs
from serve.livepeer.settings import LivepeerSettings, load_settings
from serve.wire import MAX_BODY_BYTES, read_job

log = logging.getLogger("capgraph.livepeer")

RunFn = Callable[[dict[str, Any], dict[str, Any]], Awaitable[tuple[dict[str, Any], dict[str, float]]]]
"""One frame's graph inputs and `node.param` overrides -> (graph outputs, timings_ms)."""
RunBatchFn = Callable[[list[dict[str, Any]], dict[str, Any]], Awaitable[list[dict[str, Any]]]]
"""Frames sharing one set of overrides -> one dict of graph outputs per frame."""
ReadyFn = Callable[[], Awaitable[bool]]


def error(status: int, msg: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The one error shape: `{"detail": {"msg": ...}}` (FastAPI's `{"detail": "..."}` breaks the SDK)."""
    return JSONResponse({"detail": {"msg": msg, **extra}}, status_code=status, headers=headers)


BUSY = "busy"
LOADING = "loading"
UNAUTHORIZED = "Invalid bearer token."
RETRY_AFTER_S = 1
"""What a 503 busy or loading tells a gateway to wait before trying again."""
OPEN_PATHS = frozenset({"/health", "/ready"})
"""Routes a health check reaches without a token."""


def bearer_ok(header: str, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>`; constant time in the token."""
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def unauthorized() -> JSONResponse:
    return error(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def retry_later(msg: str) -> JSONResponse:
    """503 with `Retry-After`: a gateway retries, here or at the next orchestrator."""
    return error(503, msg, headers={"Retry-After": str(RETRY_AFTER_S)})


class BearerAuth:
    """ASGI middleware: every HTTP and websocket route but `open_paths` needs the token.

    Paths are compared below the app's mount point, so `/health` stays open under any
    Serve `route_prefix`. Nothing about the request or the token is logged."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = OPEN_PATHS):
        self.app, self.token, self.open_paths = app, token, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or route_path(scope) in self.open_paths:
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), "")
        if bearer_ok(header, self.token):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await unauthorized()(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The request path below the app's mount point (Serve's `route_prefix`), no trailing slash."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path.rstrip("/") or "/"


class Gate:
    """Admits at most `capacity` jobs at once; the next one is refused, never queued.

    Counted in the event loop, so no lock is needed. One gate is shared by every job route
    of the router (BYOC and ai-runner), per ingress process."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class Guard:
    """Auth, readiness and capacity, checked in that order before any job runs."""

    def __init__(self, settings: LivepeerSettings, is_ready: ReadyFn):
        self.token = settings.token()
        self.is_ready = is_ready
        self.gate = Gate(settings.capacity)

    def authorized(self, request: Request) -> bool:
        return self.token is None or bearer_ok(request.headers.get("authorization", ""), self.token)

    async def admit(self, request: Request) -> JSONResponse | None:
        """None when the job may run (and then holds a slot: call `gate.leave()`), else the refusal."""
        if not self.authorized(request):
            return unauthorized()
        if not await self.is_ready():
            return retry_later(LOADING)
        if not self.gate.try_enter():
            return retry_later(BUSY)
        return None


def make_router(plan: Plan, run: RunFn, is_ready: ReadyFn, settings: LivepeerSettings | None = None, *,
                run_batch: RunBatchFn | None = None, max_pixels: int = MAX_PIXELS,
                max_body_bytes: int = MAX_BODY_BYTES) -> APIRouter:
    """The Livepeer routes for one graph. `settings` come from `load_settings(plan, section)`;
    None reads the environment only (`CAPGRAPH_LIVEPEER__...`). `run_batch`, where the
    backend has one (the in-process executor), lets live frames that arrive together run
    as one batch. `max_pixels` and `max_body_bytes` bound every job route's request, as
    they bound `/v1/{capability}`'s."""
    settings = settings if settings is not None else load_settings(plan)
    if settings.capability is None:  # built by hand rather than by load_settings
        settings = settings.model_copy(update={"capability": plan.capability})
    guard = Guard(settings, is_ready)
    live = None
    if settings.live is not None:
        try:
            from serve.livepeer.live import LiveBridge  # pytrickle imports torch: only when live is on
        except ImportError as exc:
            raise RuntimeError(f"the graph's livepeer.live section needs pytrickle ({exc}); install capgraph[livepeer]") from exc

        live = LiveBridge(plan, run, is_ready, settings, run_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if settings.byoc is not None or settings.runner is not None:
                from serve.livepeer.registrar import Registrar

                registrar = Registrar(settings, is_ready)
                await registrar.start()
                stack.push_async_callback(registrar.stop)
            if live is not None:
                await live.start()
                stack.push_async_callback(live.stop)
            yield

    router = APIRouter(lifespan=lifespan)

    @router.get("/ready", summary="200 only when every node is warm, else 503")
    async def ready() -> JSONResponse:
        if await is_ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": LOADING}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    async def job(request: Request) -> Response:
        refused = await guard.admit(request)
        if refused is not None:
            return refused
        try:
            inputs, params = await read_job(request, plan, max_pixels, max_body_bytes)
            outputs, timings = await run(inputs, params)
            answer = await asyncio.to_thread(lambda: render_json({"outputs": encode_outputs(plan, outputs), "timings_ms": timings}))
            return Response(answer, media_type="application/json")
        except InputError as exc:
            status = exc.status if 400 <= exc.status < 500 else 400
            return error(status, exc.message, field=exc.field)
        except TimeoutError as exc:
            return error(504, str(exc) or "timed out")
        except Exception as exc:  # 5xx: the gateway tries the next orchestrator
            log.exception("BYOC job on '%s' failed", settings.name)
            status = getattr(exc, "status", 500)
            status = status if isinstance(status, int) and 500 <= status < 600 else 500
            headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
            return error(status, f"{settings.name} pipeline error: {str(exc)[:300]}", headers=headers)
        finally:
            guard.gate.leave()

    if settings.routes:
        from serve.livepeer.ai_runner import add_ai_runner_routes

        add_ai_runner_routes(router, plan, run, guard, settings, job, max_pixels=max_pixels, max_body_bytes=max_body_bytes)
    if settings.name not in settings.routes:
        body = {"required": True, "content": {"application/json": request_schema(plan)["application/json"]}}
        router.add_api_route(f"/{settings.name}", job, methods=["POST"], summary=f"BYOC job for capability '{settings.name}'",
                             openapi_extra={"requestBody": body})
    if live is not None:
        live.add_routes(router, guard)
    return router
