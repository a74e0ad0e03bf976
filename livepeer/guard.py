"""What every Livepeer route shares: the backend's `run`/`is_ready` contract, the one error
shape (`{"detail": {"msg": ...}}`), the bearer token (`BearerAuth`) and the job gate
(`Guard`, `Gate`: past `capacity`, 503 busy at once). docs/livepeer.md.
"""

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from capgraph.engine.errors import InputError, NodeFailed
from capgraph.engine.node import NodeParams
from capgraph.livepeer.settings import LivepeerSettings
from capgraph.serve.capability import RETRY_AFTER_S, retry_headers, route_path

RunFn = Callable[[dict[str, Any], Mapping[str, NodeParams]], Awaitable[tuple[dict[str, Any], dict[str, float]]]]
"""One frame's graph inputs and every node's params, resolved once per request by the route
(`serve.capability.http.check_params` or `Plan.params_for`) and passed on as they are
-> (graph outputs, timings_ms)."""
RunBatchFn = Callable[[list[dict[str, Any]], list[Mapping[str, NodeParams]]], Awaitable[list[dict[str, Any]]]]
"""Frames, each with its own node params (live streams batched together) -> one dict of
graph outputs per frame."""
ReadyFn = Callable[[], Awaitable[bool]]


def error(status: int, msg: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The one error shape: `{"detail": {"msg": ...}}` (FastAPI's `{"detail": "..."}` breaks the SDK)."""
    return JSONResponse({"detail": {"msg": msg, **extra}}, status_code=status, headers=headers)


def failure(exc: Exception, msg: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in that shape: an InputError with its 4xx and `field`, a NodeFailed with its
    5xx and `Retry-After` where it asks for one, anything else as a 500 (a 5xx makes a
    gateway try the next orchestrator). `msg` words it the route's way."""
    known = isinstance(exc, (InputError, NodeFailed))
    extra = {"field": exc.field} if isinstance(exc, InputError) else {}
    text = msg if msg is not None else exc.message if known else str(exc)
    return error(exc.status if known else 500, text, headers=retry_headers(exc) | (headers or {}), **extra)


BUSY = "busy"
LOADING = "loading"
UNAUTHORIZED = "Invalid bearer token."
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
