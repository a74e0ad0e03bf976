"""The capability's wire format: JSON or multipart requests in, JSON answers out.

No Ray and no FastAPI here, so the rules can be tested on their own:

- request: `{"inputs": {...}, "params": {"node.param": value}}`; an image input is base64
  PNG/JPEG/WebP or a `data:` URL (a Mask or DepthMap input is a greyscale image); a
  multipart form carries image files under the input's name and other inputs as text
  fields, with `params` as a JSON text field.
- answer: `{"outputs": {...}, "timings_ms": {...}}`; images, masks and depth maps as base64
  PNG, segmentation maps as 8- or 16-bit PNG of class ids, bytes as base64.

Every fault in a request is an `InputError` naming the field, found before any node runs:
the JSON itself (NaN, Infinity, nesting past `MAX_DEPTH`), then the params (JSON types as
the family declares them, bounds, fixed params, a requested size over the pixel limit),
then the inputs (base64, `data:` URL types, text length, then decoding through
`engine.values.decode_image`, so the pixel limit is the same as everywhere else).
`request_schema` describes the same rules as JSON Schema for the OpenAPI document.
A request's params come back resolved per node (`check_params`, once per request), as the
capability's `run` takes them.
"""

import base64
import binascii
import functools
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.node import NodeParams
from engine.plan import Plan
from engine.types import PortType
from engine.values import decode_image, encode_image

IMAGE_LIKE = (PortType.IMAGE, PortType.MASK, PortType.DEPTH_MAP, PortType.SEGMENTATION_MAP)
ENCODINGS = {
    PortType.IMAGE: "base64 PNG/JPEG/WebP, or a data: URL",
    PortType.MASK: "base64 greyscale image (white = 1)",
    PortType.DEPTH_MAP: "base64 greyscale image (white = near)",
    PortType.SEGMENTATION_MAP: "base64 PNG of class ids (8 or 16 bit)",
    PortType.BYTES: "base64",
    PortType.MASKS: "{masks: [base64 PNG], scores: [float]}",
}
MAX_DEPTH = 32
"""Deepest JSON nesting a request may send: a graph's inputs and params need a handful."""
MAX_TEXT_CHARS = 10_000
"""Longest text input; prompts are cut to 77 tokens anyway, so longer is a mistake or an attack."""
IMAGE_MIME = ("image/png", "image/jpeg", "image/webp", "image/bmp")
JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


class _NonFinite:
    """What `loads` puts where the JSON said NaN or Infinity, to report it with its path."""

    def __init__(self, text: str):
        self.text = text


def loads(raw: bytes | str) -> Any:
    """A request body as JSON. Python's json accepts NaN and Infinity and recurses without
    bound; a request gets 400 for either, naming where it was."""
    try:
        doc = json.loads(raw or b"{}", parse_constant=_NonFinite)
    except RecursionError:
        raise InputError("body", f"JSON nested too deeply; a request needs at most {MAX_DEPTH} levels", 400) from None
    except UnicodeDecodeError:
        raise InputError("body", "not UTF-8 text; send JSON", 400) from None
    except ValueError as exc:
        raise InputError("body", f"not valid JSON ({exc})", 400) from None
    _check_tree(doc, "body", 0)
    return doc


def _check_tree(value: Any, path: str, depth: int) -> None:
    if isinstance(value, _NonFinite):
        raise InputError(path, f"{value.text} is not a number JSON allows; send a finite number", 400)
    if depth > MAX_DEPTH:
        raise InputError(path.split("[")[0], f"JSON nested deeper than {MAX_DEPTH} levels", 400)
    if isinstance(value, dict):
        for key, item in value.items():
            _check_tree(item, key if path == "body" else f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_tree(item, f"{path}[{index}]", depth + 1)


def check_body_keys(body: Mapping[str, Any], what: str) -> None:
    """A body has 'inputs' and 'params' only; anything else is a 400 naming the key."""
    unknown = set(body) - {"inputs", "params"}
    if unknown:
        name = sorted(unknown)[0]
        field = name if name.strip() else f"body[{json.dumps(name)}]"  # an empty key still needs a name to point at
        raise InputError(field, f"unknown field; {what} has 'inputs' and 'params'", 400)


def parse_json(plan: Plan, body: Any, max_pixels: int) -> tuple[dict[str, Any], dict[str, NodeParams]]:
    """A JSON request body (parsed by `loads`) -> (graph inputs decoded, each node's params
    with the request's overrides, `check_params`'s). Params are checked before any image is
    decoded."""
    if not isinstance(body, Mapping):
        raise InputError("body", "expected a JSON object with 'inputs' and optionally 'params'", 400)
    check_body_keys(body, "a request")
    inputs, params = body.get("inputs", {}), body.get("params") or {}
    if not isinstance(inputs, Mapping):
        raise InputError("inputs", "expected an object of graph inputs", 400)
    if not isinstance(params, Mapping):
        raise InputError("params", "expected an object of 'node.param': value", 400)
    node_params = check_params(plan, params, max_pixels)
    return {name: decode_value(plan, name, value, max_pixels) for name, value in inputs.items()}, node_params


def parse_form(plan: Plan, fields: Mapping[str, Any], max_pixels: int) -> tuple[dict[str, Any], dict[str, NodeParams]]:
    """Multipart fields (bytes for files, str for text) -> (graph inputs, each node's params)."""
    params: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    if "params" in fields:
        try:
            params = loads(fields["params"])
        except InputError as exc:
            field = "params" if exc.field == "body" else f"params.{exc.field}"
            raise InputError(field, f"must be a JSON object of 'node.param': value ({exc.message})", 400) from None
        if not isinstance(params, dict):
            raise InputError("params", "must be a JSON object of 'node.param': value", 400)
    node_params = check_params(plan, params, max_pixels)
    for name, value in fields.items():
        if name == "params":
            continue
        kind = _kind(plan, name)
        if isinstance(value, bytes):
            inputs[name] = decode_bytes(kind, value, f"inputs.{name}", max_pixels)
        else:
            inputs[name] = _from_text(kind, value, f"inputs.{name}", max_pixels)
    return inputs, node_params


def decode_value(plan: Plan, name: str, value: Any, max_pixels: int) -> Any:
    """One JSON input value -> the port value (images decoded, the rest as sent)."""
    kind = _kind(plan, name)
    field = f"inputs.{name}"
    if kind in IMAGE_LIKE or kind is PortType.BYTES:
        if not isinstance(value, str):
            raise InputError(field, f"expected {ENCODINGS[kind]}, got {_json_type(value)}", 422)
        return decode_bytes(kind, b64decode(value, field, max_pixels, kind), field, max_pixels)
    check_text(kind, value, field)
    return value


def b64decode(text: str, field: str, max_pixels: int, kind: PortType | None = None) -> bytes:
    """base64 or a data: URL -> bytes, refusing payloads larger than any allowed image.

    Whitespace is ignored, as in MIME's 76-column lines (what `base64` prints by default).
    A data: URL for an image must say an image type."""
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise InputError(field, "data: URLs must be base64 encoded (data:image/png;base64,...)", 400)
        mime = head[5:].split(";")[0].strip().lower()
        if kind in IMAGE_LIKE and mime and mime not in IMAGE_MIME:
            raise InputError(field, f"the data: URL says '{mime[:40]}'; send {', '.join(IMAGE_MIME[:3])}", 415)
    limit = max_pixels * 4 + (1 << 20)  # an uncompressed RGBA frame and a header is the most a file can need
    if len(text) * 3 // 4 > limit:
        raise InputError(field, f"payload of about {len(text) * 3 // 4:,} bytes is larger than any image under the pixel limit", 413)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "not valid base64", 400) from None


def _refuse_bombs(data: bytes, field: str, max_pixels: int) -> None:
    """A header claiming so many pixels that Pillow will not even open it (twice its
    MAX_IMAGE_PIXELS) is a 413 like any image over the limit, not an undecodable file."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)):
            pass
    except Image.DecompressionBombError:
        raise InputError(field, f"the image header claims more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                         f"bomb?); this capability takes at most {max_pixels:,}", 413) from None
    except Exception:  # anything else undecodable: decode_image says what
        pass


def check_text(kind: PortType | None, value: Any, field: str) -> None:
    """A text input longer than `MAX_TEXT_CHARS` is a 422 naming `field`."""
    if kind is PortType.TEXT and isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        raise InputError(field, f"text of {len(value):,} characters is over the limit of {MAX_TEXT_CHARS:,}", 422)


def check_params(plan: Plan, params: Mapping[str, Any], max_pixels: int) -> dict[str, NodeParams]:
    """Everything about a request's params that can be known before a node runs: each is
    settable, of the JSON type its family declares (`"20"` is not a number), within its
    bounds, and a width x height it asks for fits the pixel limit. Raises InputError.

    Returns each node's params with the request's applied (`Plan.params_for`): resolved
    here, once per request, and passed on to `run` as they are."""
    settable = plan.request_params()
    for key, value in params.items():
        if key not in settable:
            continue  # params_for says why, with a suggestion
        node_id, name = settable[key]
        allowed = _json_types(_param_schemas(plan.nodes[node_id].family.Params).get(name, {}))
        kind = _json_type(value)
        if kind == "integer" and "number" in allowed or kind == "number" and "integer" in allowed and float(value).is_integer():
            continue  # JSON has one number type: 20 and 20.0 are the same number
        if allowed and kind not in allowed:
            if kind == "number" and "integer" in allowed:
                raise InputError(f"params.{key}", f"expected a whole number, got {value}")
            hint = f" (send {value}, not \"{value}\")" if kind == "string" and _numeric(value) and allowed & {"integer", "number"} else ""
            raise InputError(f"params.{key}", f"expected {' or '.join(sorted(allowed))}, got {kind}{hint}")
    resolved = plan.params_for(params)
    for node_id, node_params in resolved.items():
        asked = {key for key in params if settable.get(key) in ((node_id, "width"), (node_id, "height"))}
        width, height = getattr(node_params, "width", None), getattr(node_params, "height", None)
        if not asked or not isinstance(width or height, int):
            continue
        width, height = width or height, height or width  # a side asked for alone counts as a square
        if width * height > max_pixels:
            raise InputError(f"params.{sorted(asked)[-1]}", f"a {width}x{height} frame is {width * height:,} pixels, over this "
                             f"capability's limit of {max_pixels:,} (a side set alone counts as a square)", 413)
    return resolved


def decode_bytes(kind: PortType | None, data: bytes, field: str, max_pixels: int) -> Any:
    """A file's bytes -> the port value: images checked for bombs and decoded under the
    pixel limit, masks and depth maps as greyscale, segmentation maps as class ids."""
    if kind is PortType.BYTES or kind is None:  # unknown names are reported by check_inputs
        return data
    if kind not in IMAGE_LIKE:
        raise InputError(field, f"a file was sent for a {kind.title} input", 422)
    _refuse_bombs(data, field, max_pixels)
    image = decode_image(data, field, max_pixels)
    if kind is PortType.IMAGE:
        return image
    if kind is PortType.SEGMENTATION_MAP:
        return image[..., 0].astype(np.int32)
    return (image.mean(axis=2) / 255.0).astype(np.float32)


def _from_text(kind: PortType | None, text: str, field: str, max_pixels: int) -> Any:
    """A multipart text field. Never a file path: images come as files or base64."""
    if kind in IMAGE_LIKE or kind is PortType.BYTES:
        try:
            data = b64decode(text, field, max_pixels, kind)
        except InputError as exc:
            if exc.status != 400:
                raise
            raise InputError(field, f"{exc.message}: send the image as a file part (with a filename) or as base64 text", 400) from None
        return decode_bytes(kind, data, field, max_pixels)
    check_text(kind, text, field)
    try:
        if kind is PortType.TEXT or kind is None:
            return text
        if kind is PortType.NUMBER:
            return float(text)
        if kind is PortType.INTEGER:
            return int(text)
        if kind is PortType.BOOL:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return json.loads(text)
    except ValueError:
        raise InputError(field, f"'{text[:40]}' is not a valid {kind.title}", 422) from None


def _kind(plan: Plan, name: str) -> PortType | None:
    spec = plan.spec.inputs.get(name)
    return spec.type if spec else None  # unknown names are reported by check_inputs


def _json_type(value: Any) -> str:
    return next((name for kind, name in JSON_TYPES.items() if type(value) is kind), type(value).__name__)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _json_types(prop: Mapping[str, Any]) -> set[str]:
    """The JSON types a JSON Schema property allows; empty when it does not say."""
    if "type" in prop:
        kind = prop["type"]
        return set(kind) if isinstance(kind, list) else {kind}
    if "enum" in prop:
        return {_json_type(v) for v in prop["enum"]}
    if "const" in prop:
        return {_json_type(prop["const"])}
    found: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for option in prop.get(key, ()):
            types = _json_types(option)
            if not types:
                return set()  # one option accepts anything
            found |= types
    return found


@functools.cache
def _param_schemas(params: type) -> dict[str, dict[str, Any]]:
    """A family's Params as JSON Schema properties, `$ref`s inlined (OpenAPI and type checks)."""
    schema = params.model_json_schema()
    defs = schema.get("$defs", {})
    return {name: _inline(prop, defs) for name, prop in schema.get("properties", {}).items()}


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def encode_outputs(plan: Plan, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Graph outputs -> JSON-ready values."""
    return {name: encode_value(plan.output_type(name), value) for name, value in outputs.items()}


def encode_value(kind: PortType, value: Any) -> Any:
    if kind in (PortType.IMAGE, PortType.MASK, PortType.DEPTH_MAP):
        return _b64(encode_image(np.asarray(value)))
    if kind is PortType.SEGMENTATION_MAP:
        return _b64(_label_png(np.asarray(value)))
    if kind is PortType.BYTES:
        return _b64(bytes(value))
    if kind is PortType.MASKS:
        return {"masks": [_b64(encode_image(m.astype(np.float32))) for m in value["masks"]],
                "scores": [float(s) for s in value["scores"]]}
    return _plain(value)


def _label_png(labels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"segmentation ids out of the 16-bit range ({labels.min()}..{labels.max()})")
    image = Image.fromarray(labels.astype(np.uint8)) if labels.size == 0 or labels.max() < 256 else Image.fromarray(labels.astype(np.uint16))
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def render_json(body: Any) -> bytes:
    """An answer as JSON bytes, as Starlette's JSONResponse writes it. Called in a worker
    thread with the images already encoded: a 4096 px frame is tens of MB of base64, and
    dumping it on the event loop would hold every other request of the replica."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def render_outputs(plan: Plan, outputs: Mapping[str, Any], timings: Mapping[str, float]) -> bytes:
    """The `{"outputs", "timings_ms"}` answer, encoded and rendered in one go (one thread hop)."""
    return render_json({"outputs": encode_outputs(plan, outputs), "timings_ms": dict(timings)})


def parse_json_body(plan: Plan, raw: bytes, max_pixels: int) -> tuple[dict[str, Any], dict[str, NodeParams]]:
    """`loads` then `parse_json`: the whole JSON request in one call, for one thread hop."""
    return parse_json(plan, loads(raw), max_pixels)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def schema(plan: Plan) -> dict[str, Any]:
    """What `GET /v1/{capability}/schema` answers: inputs, request params, outputs."""
    inputs = {}
    for name, spec in plan.spec.inputs.items():
        entry: dict[str, Any] = {"type": spec.type.value, "required": spec.required, "description": spec.description or spec.type.doc}
        if spec.default is not None:
            entry["default"] = spec.default
        if spec.type in ENCODINGS:
            entry["encoding"] = ENCODINGS[spec.type]
        inputs[name] = entry
    params = {}
    for key, (node_id, name) in plan.request_params().items():
        node = plan.nodes[node_id]
        prop = dict(_param_schemas(node.family.Params).get(name, {}))
        prop["default"] = _plain(getattr(node.params, name))
        if key != f"{node_id}.{name}":  # the graph's own name for it
            prop["description"] = f"sets {node_id}.{name}" + (f": {prop['description']}" if prop.get("description") else "")
        params[key] = prop
    outputs = {}
    for name in plan.outputs:
        kind = plan.output_type(name)
        outputs[name] = {"type": kind.value, "description": kind.doc} | ({"encoding": ENCODINGS[kind]} if kind in ENCODINGS else {})
    return {"capability": plan.capability, "version": plan.spec.version, "description": plan.spec.description,
            "inputs": inputs, "params": params, "outputs": outputs}


def request_schema(plan: Plan) -> dict[str, dict[str, Any]]:
    """The request body as JSON Schema, per media type, for the OpenAPI document: every
    input with its encoding, every settable param with its bounds, nothing else allowed.
    Fuzzers generate from it; `parse_json` and `parse_form` enforce the same rules."""
    inputs = {name: _input_schema(spec.type) | {"description": spec.description or spec.type.doc}
              for name, spec in plan.spec.inputs.items()}
    required = [name for name, spec in plan.spec.inputs.items() if spec.required]
    params = {key: _param_schemas(plan.nodes[node_id].family.Params).get(name, {})
              for key, (node_id, name) in plan.request_params().items()}
    body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"] if required else [],
        "properties": {
            "inputs": {"type": "object", "additionalProperties": False, "required": required, "properties": inputs},
            "params": {"type": "object", "additionalProperties": False, "properties": params,
                       "description": "per-request params, by the graph's own names or as 'node.param': value"},
        },
    }
    form = {name: {"type": "string", "format": "binary"} if spec.type in IMAGE_LIKE or spec.type is PortType.BYTES
            else {"type": "string"} for name, spec in plan.spec.inputs.items()}
    form["params"] = {"type": "string", "description": "a JSON object of 'node.param': value"}
    multipart = {"type": "object", "required": required, "properties": form}
    return {"application/json": {"schema": body}, "multipart/form-data": {"schema": multipart}}


def _input_schema(kind: PortType) -> dict[str, Any]:
    if kind in IMAGE_LIKE or kind is PortType.BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    number = {"type": "number"}
    return {
        PortType.TEXT: {"type": "string", "maxLength": MAX_TEXT_CHARS},
        PortType.NUMBER: number,
        PortType.INTEGER: {"type": "integer"},
        PortType.BOOL: {"type": "boolean"},
        PortType.POINTS: {"type": "array", "items": {"type": "array", "items": number, "minItems": 3, "maxItems": 3}},
        PortType.BOXES: {"type": "array", "items": {"type": "array", "items": number, "minItems": 4, "maxItems": 4}},
    }.get(kind, {"type": "object"})
