"""How the capability answers a request it cannot: `engine.errors.InputError` (the caller's
mistake) and `engine.errors.NodeFailed` (the graph could not answer) in capgraph's own
JSON shape, the wait a retryable 503 asks for, and the one line of an exception an answer
shows. The Livepeer routes answer the same two errors in their shape
(`livepeer.guard.failure`)."""

from collections.abc import Mapping

from fastapi.responses import JSONResponse

from capgraph.engine.errors import InputError, NodeFailed

RETRY_AFTER_S = 1
"""What a retryable 503 (a replica died, the capability is full) tells the caller to wait."""


def error_answer(exc: InputError | NodeFailed, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """`{"error": {"field": ..., "msg": ...}}` for a caller's mistake, `{"error": {"node": ...,
    "msg": ...}}` when the graph could not answer (`node` where one is to blame), with the
    error's status and `Retry-After` where it asks for one."""
    where = {"field": exc.field} if isinstance(exc, InputError) else {"node": exc.node} if exc.node else {}
    return JSONResponse(
        {"error": where | {"msg": exc.message}},
        status_code=exc.status,
        headers=retry_headers(exc) | dict(headers or {}),
    )


def retry_headers(exc: BaseException) -> dict[str, str]:
    """`Retry-After` for a NodeFailed that says when to try again; none otherwise."""
    if isinstance(exc, NodeFailed) and exc.retry_after is not None:
        return {"Retry-After": f"{exc.retry_after:g}"}
    return {}


def first_line(exc: BaseException) -> str:
    """One line of an exception for an answer: Ray's messages can carry a remote traceback."""
    return (str(exc).strip().splitlines() or [""])[0][:200]
