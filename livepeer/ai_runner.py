"""ai-runner-compatible batch routes, so go-livepeer's external-container path
(`aiModels.json` with `url` and `token`) and the livepeer-ai SDK call a graph unchanged.

The graph's `livepeer.routes` maps each request field to a graph input or `node.param`.
docs/livepeer.md has the mapping and the wire rules (from ai-runner and go-livepeer).
"""

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter, ValidationError

from capgraph.engine.codecs import codec, encode_value, frame_urls, image_url
from capgraph.engine.errors import InputError
from capgraph.engine.node import NodeParams
from capgraph.engine.plan import Plan
from capgraph.engine.types import PortType
from capgraph.engine.values import MAX_PIXELS
from capgraph.livepeer.guard import Guard, RunFn, error, failure
from capgraph.livepeer.settings import (
    NSFW_FIELD,
    NSFW_ROUTES,
    RESPONSE_FIELD,
    ROUTE_FIELDS,
    LivepeerSettings,
    default_output,
    nsfw_output,
    route_name,
)
from capgraph.serve.capability import MAX_BODY_BYTES, check_params, media_type, read_body, read_form, render_json

log = logging.getLogger("capgraph.livepeer")

SAFETY_HEADER = "X-Capgraph-Safety"
"""On every image answer: `checked` where a safety checker's verdict is each image's `nsfw`,
`unchecked` where at least one `nsfw` is false only because nothing checked it (each image's
`nsfw_checked` says which). The SDK reads neither; docs/livepeer.md has the rules."""
MAX_IMAGES = 16
"""Most images one request may ask for (`num_images_per_prompt`)."""

_REQUIRED = {
    "text-to-image": ("prompt",),
    "image-to-image": ("prompt", "image"),
    "upscale": ("prompt", "image"),
    "segment-anything-2": ("image",),
    "image-to-text": ("image",),
    "image-to-video": ("image",),
}
_ADAPTERS = {
    "text": TypeAdapter(str),
    "integer": TypeAdapter(int),
    "number": TypeAdapter(float),
    "bool": TypeAdapter(bool),
}


class _Invalid(Exception):
    """A request that FastAPI would have refused with 422: carries its `detail` list."""

    def __init__(self, detail: list[dict[str, Any]]):
        self.detail = detail


def add_ai_runner_routes(
    router: APIRouter,
    plan: Plan,
    run: RunFn,
    guard: Guard,
    settings: LivepeerSettings,
    job: Callable[[Request], Awaitable[Response]] | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Add each declared route (with its trailing-slash twin), `/version` and `/hardware/*`.

    A capability named like a route (`segment-anything-2`) shares its path with the BYOC
    job route: `job` then takes the requests whose body is a native JSON job. Bodies are
    read under `max_body_bytes` and images decoded under `max_pixels`, as on every job route."""
    limits = _Limits(max_pixels, max_body_bytes)
    for route, mapping in settings.routes.items():
        handler = _handler(route, mapping, plan, run, guard, settings, limits)
        if route == settings.name and job is not None:
            handler = _shared_path(handler, job, limits.max_body_bytes)
        router.add_api_route(
            f"/{route}",
            handler,
            methods=["POST"],
            summary=f"ai-runner {route}",
            openapi_extra={"requestBody": _request_body(route)},
        )
        router.add_api_route(f"/{route}/", handler, methods=["POST"], include_in_schema=False)
    pipeline = next(iter(settings.routes))

    @router.get("/version", summary="ai-runner version")
    async def version() -> dict[str, str]:
        return {"pipeline": pipeline, "model_id": settings.model_id, "version": plan.spec.version}

    @router.get("/hardware/info", summary="ai-runner GPU information")
    async def hardware_info() -> dict[str, Any]:
        return {"pipeline": pipeline, "model_id": settings.model_id, "gpu_info": _gpus(stats=False)}

    @router.get("/hardware/stats", summary="ai-runner GPU utilisation")
    async def hardware_stats() -> dict[str, Any]:
        return {"pipeline": pipeline, "model_id": settings.model_id, "gpu_stats": _gpus(stats=True)}


@dataclass(frozen=True)
class _Answers:
    """The graph outputs an image route answers with, and the capability for messages."""

    images: str
    nsfw: str | None
    capability: str


@dataclass(frozen=True)
class _Limits:
    max_pixels: int
    max_body_bytes: int


def _handler(
    route: str,
    mapping: Mapping[str, str],
    plan: Plan,
    run: RunFn,
    guard: Guard,
    settings: LivepeerSettings,
    limits: _Limits,
):
    output = default_output(plan, route, settings)
    answers = _Answers(output, nsfw_output(settings, route), settings.name)
    fields = {k: v for k, v in mapping.items() if k not in (RESPONSE_FIELD[route], NSFW_FIELD)}
    if route in NSFW_ROUTES and answers.nsfw is None:
        log.warning(
            "%s on '%s': no safety checker output is mapped to 'nsfw'; answers say nsfw false, marked %s: unchecked",
            route,
            settings.name,
            SAFETY_HEADER,
        )

    async def handle(request: Request) -> Response:
        refused = await guard.admit(request)
        if refused is not None:
            return refused
        try:
            values = await _read(route, request, limits.max_body_bytes)
            model_id = values.get("model_id") or ""
            if model_id and model_id != settings.model_id:
                return error(
                    400, f"pipeline configured with {settings.model_id} but called with {model_id}.", field="model_id"
                )
            if route == "text-to-image" and not values.get("prompt"):
                return error(400, "Prompt must be provided.")
            if route == "segment-anything-2":
                return await _segment(values, fields, plan, run, output, limits.max_pixels)
            if route == "image-to-text":
                return await _text(values, fields, plan, run, output, limits.max_pixels)
            if route == "image-to-video":
                return await _video(values, fields, plan, run, answers, limits.max_pixels)
            return await _images(values, fields, plan, run, answers, limits.max_pixels)
        except _Invalid as exc:
            return JSONResponse({"detail": exc.detail}, status_code=422)
        except InputError as exc:
            status = exc.status if exc.status in (413, 415) else 400
            return error(status, f"{exc.field}: {exc.message}", field=exc.field)
        except Exception as exc:
            if "out of memory" in str(exc).lower():
                return error(500, "GPU out of memory.")
            log.exception("%s on '%s' failed", route, settings.name)
            return failure(exc, f"{route_name(route)} pipeline error.")  # a NodeFailed keeps its 503 or 504
        finally:
            guard.gate.leave()

    handle.__name__ = route.replace("-", "_")
    return handle


def _shared_path(
    ai_runner: Callable[[Request], Awaitable[Response]],
    job: Callable[[Request], Awaitable[Response]],
    max_body_bytes: int,
):
    async def either(request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/"):
            try:
                doc = json.loads(await read_body(request, max_body_bytes) or b"{}")
            except InputError:  # over the limit: the job route refuses it in its own words
                return await job(request)
            except (ValueError, RecursionError):
                doc = None
            if isinstance(doc, dict) and doc.keys() <= {"inputs", "params"}:
                return await job(request)
        return await ai_runner(request)

    either.__name__ = ai_runner.__name__
    return either


_SCHEMAS = {
    "image": {"type": "string", "format": "binary"},
    "text": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "bool": {"type": "boolean"},
    "points": {"type": "string", "description": "a JSON array of [x, y] pixel coordinates"},
    "labels": {"type": "string", "description": "a JSON array of 1 (foreground) or 0 (background), one per point"},
    "boxes": {"type": "string", "description": "a JSON array [x1, y1, x2, y2]"},
}


def _request_body(route: str) -> dict[str, Any]:
    """The route's request body as ai-runner declares it, for the OpenAPI document (what
    clients and fuzzers generate from): JSON for text-to-image, else a multipart form."""
    properties = {name: dict(_SCHEMAS[kind]) for name, kind in ROUTE_FIELDS[route].items()}
    schema = {"type": "object", "required": list(_REQUIRED[route]), "properties": properties}
    media = "application/json" if route == "text-to-image" else "multipart/form-data"
    return {"required": True, "content": {media: {"schema": schema}}}


# -- reading a request ---------------------------------------------------------------------


async def _read(route: str, request: Request, max_body_bytes: int) -> dict[str, Any]:
    """The request's fields, typed; absent or empty fields are left out. The body is read
    and a form parsed as on every job route (`serve.capability.wire`): bounded, parts named."""
    kinds = ROUTE_FIELDS[route]
    body = await read_body(request, max_body_bytes)
    if route == "text-to-image":
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            raise _Invalid([{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]) from None
        if not isinstance(raw, dict):
            raise _Invalid(
                [{"type": "model_attributes_type", "loc": ["body"], "msg": "Input should be a valid dictionary"}]
            )
    elif media_type(request) == "multipart/form-data":
        raw = await read_form(request, body, max_body_bytes, prefix="")
    else:  # not multipart at all: every required field is missing
        raw = {}
    values: dict[str, Any] = {}
    problems: list[dict[str, Any]] = []
    for name, value in raw.items():
        kind = kinds.get(name)
        if kind is None or value is None or (value == "" and name != "prompt"):  # "" means unset
            continue
        if kind == "image":
            if isinstance(value, str):
                problems.append(
                    {
                        "type": "value_error",
                        "loc": ["body", name],
                        "msg": "Expected UploadFile, received: <class 'str'>",
                    }
                )
                continue
            values[name] = value
        elif kind in _ADAPTERS:
            try:
                values[name] = _ADAPTERS[kind].validate_python(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                problems.append({"type": first["type"], "loc": ["body", name], "msg": first["msg"], "input": value})
        elif isinstance(value, bytes):  # a file part for a text field: FastAPI's Form refuses it too
            problems.append({"type": "string_type", "loc": ["body", name], "msg": "Input should be a valid string"})
        else:  # JSON-in-a-string fields (SAM2 points and boxes) are parsed by the route
            values[name] = value
    for name in _REQUIRED[route]:
        if name not in values and not any(p["loc"][-1] == name for p in problems):
            problems.append({"type": "missing", "loc": ["body", name], "msg": "Field required"})
    if problems:
        raise _Invalid(problems)
    return values


def _to_graph(
    values: Mapping[str, Any], fields: Mapping[str, str], plan: Plan, max_pixels: int
) -> tuple[dict[str, Any], dict[str, NodeParams]]:
    """Mapped request fields -> (graph inputs, each node's params), checked as `/v1`
    checks them (params first, then images under the pixel limit); a fault names the
    request's own field, not the graph's."""
    node_params = _params(values, fields, plan, max_pixels)
    return _inputs(values, fields, plan, max_pixels), node_params


def _params(values: Mapping[str, Any], fields: Mapping[str, str], plan: Plan, max_pixels: int) -> dict[str, NodeParams]:
    """The mapped fields that set params -> each node's params, checked."""
    params: dict[str, Any] = {}
    named: dict[str, str] = {}
    for field, target in fields.items():
        if field in values and target not in plan.spec.inputs:
            params[target] = _loras(values[field]) if field == "loras" else values[field]
            named[f"params.{target}"] = field
    try:
        return check_params(plan, params, max_pixels)
    except InputError as exc:
        if exc.field not in named:
            raise
        raise InputError(
            named[exc.field], f"{exc.message} (it sets the graph's {exc.field.removeprefix('params.')})", exc.status
        ) from None


def _inputs(values: Mapping[str, Any], fields: Mapping[str, str], plan: Plan, max_pixels: int) -> dict[str, Any]:
    """The mapped fields that feed graph inputs -> the inputs, decoded."""
    inputs: dict[str, Any] = {}
    for field, target in fields.items():
        spec = plan.spec.inputs.get(target)
        if field not in values or spec is None:
            continue
        value, port = values[field], codec(spec.type)
        inputs[target] = (
            port.from_bytes(value, field, max_pixels)
            if isinstance(value, bytes)
            else port.from_json(value, field, max_pixels)
        )
    return inputs


def _loras(text: str) -> dict[str, Any]:
    """ai-runner's `loras`: a JSON object in a string, adapter -> weight (the SDK sends
    '{"nerijs/pixel-art-xl": 1.2}'); "" never gets here (an empty field is unset)."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise InputError("loras", 'must be a JSON object of adapter -> weight, e.g. {"pixel-art": 1.0}', 400)
    return value


def _json_field(values: Mapping[str, Any], name: str) -> Any:
    try:
        return json.loads(values[name])
    except (ValueError, TypeError):
        raise InputError(name, "must be a valid JSON array", 400) from None


# -- answering -----------------------------------------------------------------------------


async def _images(
    values: dict[str, Any], fields: Mapping[str, str], plan: Plan, run: RunFn, answers: _Answers, max_pixels: int
) -> Response:
    count = values.get("num_images_per_prompt", 1)
    if not 1 <= count <= MAX_IMAGES:
        raise InputError("num_images_per_prompt", f"must be between 1 and {MAX_IMAGES}", 400)
    seed = values.get("seed")
    if seed is None:
        seed = random.randint(0, 2**31 - 1)  # ai-runner picks one and reports it
    output = answers.images
    kind = plan.output_type(output)
    inputs, first = await asyncio.to_thread(_to_graph, {**values, "seed": seed}, fields, plan, max_pixels)
    seed_input = fields.get("seed") if fields.get("seed") in plan.spec.inputs else None

    async def one(index: int) -> dict[str, Any]:
        # Only the seed differs between the images: the image is decoded once, not per image.
        seeded = {**values, "seed": seed + index}
        params = first if index == 0 else await asyncio.to_thread(_params, seeded, fields, plan, max_pixels)
        frame = inputs if seed_input is None else inputs | _inputs(seeded, {"seed": seed_input}, plan, max_pixels)
        outputs, _ = await run(frame, params)
        url = await asyncio.to_thread(image_url, kind, outputs[output])
        # A checker that did not run (no checker, or a branch that skipped it) leaves no verdict.
        verdict = outputs.get(answers.nsfw) if answers.nsfw is not None else None
        return {"url": url, "seed": seed + index, "nsfw": bool(verdict), "nsfw_checked": verdict is not None}

    images = await asyncio.gather(*(one(i) for i in range(count)))
    body = await asyncio.to_thread(render_json, {"images": list(images)})
    checked = all(image["nsfw_checked"] for image in images)
    return Response(body, media_type="application/json", headers=_safety_headers(checked, values, answers))


def _safety_headers(checked: bool, values: Mapping[str, Any], answers: _Answers) -> dict[str, str]:
    """`SAFETY_HEADER`, and a Warning where a check was asked for and none ran."""
    headers = {SAFETY_HEADER: "checked" if checked else "unchecked"}
    if not checked and values.get("safety_check", True):  # ai-runner's default is true
        headers["Warning"] = (
            f'299 capgraph "safety_check was asked for, but no safety checker ran in graph '
            f"'{answers.capability}': nsfw false is not a verdict\""
        )
    return headers


async def _video(
    values: dict[str, Any], fields: Mapping[str, str], plan: Plan, run: RunFn, answers: _Answers, max_pixels: int
) -> Response:
    """ai-runner's image-to-video answer: `frames`, one list per clip of each frame as a PNG
    `data:` URL with the seed and the checker's verdict on the image; and `images`, the clip
    as one MP4 `data:` URL, which is what go-livepeer's gateway answers (and the
    livepeer-ai SDK's VideoResponse reads)."""
    for side in ("height", "width"):  # as ai-runner refuses them
        if values.get(side, 8) % 8:
            raise InputError(side, f"`height` and `width` have to be divisible by 8 but {side} is {values[side]}", 400)
    seed = values.get("seed")
    if seed is None:
        seed = random.randint(0, 2**32 - 1)  # ai-runner picks one and reports it
    inputs, params = await asyncio.to_thread(_to_graph, {**values, "seed": seed}, fields, plan, max_pixels)
    outputs, _ = await run(inputs, params)
    clip = outputs[answers.images]
    verdict = outputs.get(answers.nsfw) if answers.nsfw is not None else None
    nsfw = {"seed": seed, "nsfw": bool(verdict), "nsfw_checked": verdict is not None}

    def render() -> bytes:
        frames = [{"url": url, **nsfw} for url in frame_urls(clip)]
        mp4 = encode_value(PortType.VIDEO, clip, data_url=True)
        return render_json({"frames": [frames], "images": [{"url": mp4, **nsfw}]})

    body = await asyncio.to_thread(render)
    return Response(body, media_type="application/json", headers=_safety_headers(verdict is not None, values, answers))


async def _segment(
    values: dict[str, Any], fields: Mapping[str, str], plan: Plan, run: RunFn, output: str, max_pixels: int
) -> Response:
    """SAM2 prompts arrive as JSON strings. A Points/Boxes graph input gets them combined
    ([x, y, label] points, a list of boxes); a node param gets them as ai-runner sends them."""
    values = dict(values)
    to_input = {name: fields.get(name) in plan.spec.inputs for name in ("point_coords", "box")}
    labels = _json_field(values, "point_labels") if "point_labels" in values else None
    if labels is not None:
        values["point_labels"] = labels
    if "point_coords" in values:
        coords = _json_field(values, "point_coords")
        labels = labels if labels is not None else [1] * len(coords) if isinstance(coords, list) else None
        if not isinstance(coords, list) or not isinstance(labels, list) or len(coords) != len(labels):
            raise InputError("point_labels", "must have one label per point in point_coords", 400)
        try:
            points = [[float(x), float(y)] for x, y in coords]
            combined = [[x, y, int(label)] for (x, y), label in zip(points, labels)]
        except (TypeError, ValueError):
            raise InputError("point_coords", "must be an Nx2 array of pixel coordinates", 400) from None
        values["point_coords"] = combined if to_input["point_coords"] else points
    if "box" in values:
        box = _json_field(values, "box")
        boxes = box if isinstance(box, list) and box and isinstance(box[0], list) else [box]
        if not all(isinstance(b, list) and len(b) == 4 for b in boxes):
            raise InputError("box", "must be a length 4 array in XYXY format", 400)
        boxes = [[float(v) for v in b] for b in boxes]
        values["box"] = boxes if to_input["box"] else boxes[0]
    inputs, params = await asyncio.to_thread(_to_graph, values, fields, plan, max_pixels)
    outputs, _ = await run(inputs, params)
    return Response(
        await asyncio.to_thread(lambda: render_json(_masks_answer(outputs[output]))), media_type="application/json"
    )


async def _text(
    values: dict[str, Any], fields: Mapping[str, str], plan: Plan, run: RunFn, output: str, max_pixels: int
) -> Response:
    """ai-runner's image-to-text answer: `{"text": ...}`, the graph's Text output."""
    inputs, params = await asyncio.to_thread(_to_graph, values, fields, plan, max_pixels)
    outputs, _ = await run(inputs, params)
    return Response(render_json({"text": outputs[output]}), media_type="application/json")


def _masks_answer(masks: Mapping[str, Any]) -> dict[str, str]:
    """ai-runner's SAM2 answer: Python list strings, best score first."""
    scores = np.asarray(masks["scores"], dtype=np.float32)
    order = np.argsort(scores)[::-1]
    logits = masks.get("logits")
    return {
        "masks": str(np.asarray(masks["masks"])[order].tolist()),
        "scores": str(scores[order].tolist()),
        "logits": str(np.asarray(logits)[order].tolist() if logits is not None else []),
    }


def _gpus(stats: bool) -> dict[str, Any]:
    """ai-runner's `gpu_info` / `gpu_stats` maps, from NVML when it is installed."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library or no GPU: report none, as ai-runner does
        return {}
    try:
        found: dict[str, Any] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            entry: dict[str, Any] = {
                "id": pynvml.nvmlDeviceGetUUID(handle),
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total": int(memory.total),
                "memory_free": int(memory.free),
            }
            if stats:
                use = pynvml.nvmlDeviceGetUtilizationRates(handle)
                entry |= {"utilization_compute": int(use.gpu), "utilization_memory": int(use.memory)}
            else:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
                entry |= {"major": int(major), "minor": int(minor)}
            found[str(index)] = entry
        return found
    finally:
        pynvml.nvmlShutdown()
