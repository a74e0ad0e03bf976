"""Reading a job off the wire: the one path every route that takes a graph job goes through
(`read_job`: content type, a bounded body, then `http`'s rules), so `/v1/{capability}`
and the BYOC route check and answer alike. docs/serving.md ("The code, module by module").
"""

import asyncio
from typing import Any

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from capgraph.engine.errors import InputError
from capgraph.engine.node import NodeParams
from capgraph.engine.plan import Plan
from capgraph.serve.capability import http

MAX_BODY_BYTES = 64 << 20
"""Default largest request body (`max_body_bytes`): a 4096 px PNG in base64 fits."""
MAX_FORM_PARTS = 64
"""Most parts a multipart request may have: a graph has a handful of inputs."""


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters ('' when not said)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_job(
    request: Request, plan: Plan, max_pixels: int, max_body_bytes: int
) -> tuple[dict[str, Any], dict[str, NodeParams]]:
    """A native job request -> (graph inputs decoded, each node's params with the request's
    overrides, resolved once here for `run`).
    Parsing and image decoding run in a worker thread, off the event loop."""
    media = media_type(request)
    if media not in ("", "application/json", "multipart/form-data") and not media.endswith("+json"):
        raise InputError(
            "headers.content-type",
            f"'{media[:60]}' is not a body this route reads; send application/json or multipart/form-data",
            415,
        )
    raw = await read_body(request, max_body_bytes)
    if media == "multipart/form-data":
        fields = await read_form(request, raw, max_body_bytes)
        return await asyncio.to_thread(http.parse_form, plan, fields, max_pixels)
    return await asyncio.to_thread(http.parse_json_body, plan, raw, max_pixels)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit`, whether or not it said its
    length (a chunked upload is cut off, not buffered whole)."""
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > limit:
        raise InputError("body", f"request of {int(size):,} bytes is over the limit of {limit:,}", 413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise InputError("body", f"request of more than {limit:,} bytes is over the limit", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # where Starlette's own `Request.body()` keeps it: a second reader gets it again
    return body


async def read_form(request: Request, raw: bytes, max_part_bytes: int, prefix: str = "inputs.") -> dict[str, Any]:
    """A multipart body already read -> {name: bytes for a file part, str for a text part}.
    A part sent twice is named as `prefix` + its name (`params` as itself)."""

    async def once() -> Any:
        yield raw

    try:
        form = await MultiPartParser(
            request.headers, once(), max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS, max_part_size=max_part_bytes
        ).parse()
    except MultiPartException as exc:
        raise InputError("body", f"not a valid multipart form ({exc.message})", 400) from None
    fields: dict[str, Any] = {}
    try:
        for name, value in form.multi_items():
            if not name:
                raise InputError("body", "a multipart part has no name; name each part after the input it carries", 400)
            if name in fields:
                raise InputError("params" if name == "params" else f"{prefix}{name}", "sent more than once", 400)
            fields[name] = await value.read() if hasattr(value, "read") else value
    finally:
        await form.close()
    return fields
