"""The capability's wire format: JSON or multipart requests in, JSON answers out.

No Ray and no FastAPI, so the rules are testable alone: every fault is an `InputError`
naming the field, found before any node runs; `request_schema` gives the same rules as
JSON Schema. docs/serving.md ("Calling it") and docs/reliability.md have the rules.
"""

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from capgraph.engine.codecs import (
    ENCODINGS,
    as_image,
    codec,
    encode_outputs,
    encode_value,  # noqa: F401  (what `/v1` answers a value as)
    json_type,
    jsonable,
    looks_like_image,
)
from capgraph.engine.errors import InputError
from capgraph.engine.node import NodeParams
from capgraph.engine.plan import Plan
from capgraph.engine.types import PortType
from capgraph.engine.values import encode_image

MAX_DEPTH = 32
"""Deepest JSON nesting a request may send: a graph's inputs and params need a handful."""


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
        if kind is None:  # unknown names are reported by check_inputs
            inputs[name] = value
        elif isinstance(value, bytes):
            inputs[name] = codec(kind).from_bytes(value, f"inputs.{name}", max_pixels)
        else:
            inputs[name] = codec(kind).from_text(value, f"inputs.{name}", max_pixels)
    return inputs, node_params


def decode_value(plan: Plan, name: str, value: Any, max_pixels: int) -> Any:
    """One JSON input value -> the port value (images decoded, the rest as sent)."""
    kind = _kind(plan, name)
    return value if kind is None else codec(kind).from_json(value, f"inputs.{name}", max_pixels)


def check_params(plan: Plan, params: Mapping[str, Any], max_pixels: int) -> dict[str, NodeParams]:
    """Everything about a request's params that can be known before a node runs: each is
    settable, of the JSON type its family declares (`"20"` is not a number), within its
    bounds, and a width x height it asks for fits the pixel limit. Raises InputError.

    Returns every node's params with the request's applied (`Plan.params_for`; the graph's
    own objects where it changes none): resolved here, once per request, and passed on as
    they are, through `run` and the ingress to the node replicas."""
    settable = plan.request_params()
    for key, value in params.items():
        if key not in settable:
            continue  # params_for says why, with a suggestion
        node_id, name = settable[key]
        allowed = _json_types(_param_schemas(plan.nodes[node_id].family.Params).get(name, {}))
        kind = json_type(value)
        if (
            kind == "integer"
            and "number" in allowed
            or kind == "number"
            and "integer" in allowed
            and float(value).is_integer()
        ):
            continue  # JSON has one number type: 20 and 20.0 are the same number
        if allowed and kind not in allowed:
            if kind == "number" and "integer" in allowed:
                raise InputError(f"params.{key}", f"expected a whole number, got {value}")
            hint = (
                f' (send {value}, not "{value}")'
                if kind == "string" and _numeric(value) and allowed & {"integer", "number"}
                else ""
            )
            raise InputError(f"params.{key}", f"expected {' or '.join(sorted(allowed))}, got {kind}{hint}")
    resolved = plan.params_for(params)
    for node_id, node_params in resolved.items():
        asked = {key for key in params if settable.get(key) in ((node_id, "width"), (node_id, "height"))}
        width, height = getattr(node_params, "width", None), getattr(node_params, "height", None)
        if not asked or not isinstance(width or height, int):
            continue
        width, height = width or height, height or width  # a side asked for alone counts as a square
        if width * height > max_pixels:
            raise InputError(
                f"params.{sorted(asked)[-1]}",
                f"a {width}x{height} frame is {width * height:,} pixels, over this "
                f"capability's limit of {max_pixels:,} (a side set alone counts as a square)",
                413,
            )
    return resolved


def _kind(plan: Plan, name: str) -> PortType | None:
    spec = plan.spec.inputs.get(name)
    return spec.type if spec else None  # unknown names are reported by check_inputs


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
        return {json_type(v) for v in prop["enum"]}
    if "const" in prop:
        return {json_type(prop["const"])}
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


def render_json(body: Any) -> bytes:
    """An answer as JSON bytes, as Starlette's JSONResponse writes it. Called in a worker
    thread with the images already encoded: a 4096 px frame is tens of MB of base64, and
    dumping it on the event loop would hold every other request of the replica."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def render_outputs(
    plan: Plan, outputs: Mapping[str, Any], timings: Mapping[str, float], skipped: Sequence[str] = ()
) -> bytes:
    """The `{"outputs", "timings_ms"}` answer, encoded and rendered in one go (one thread hop);
    a graph with branches adds `"skipped"`: the nodes that did not run for this frame (they
    have no timing)."""
    body = {"outputs": encode_outputs(plan, outputs), "timings_ms": dict(timings)}
    if plan.conditions:
        body["skipped"] = list(skipped)
    return render_json(body)


IMAGE_ANSWERS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/*": "png"}
"""What `Accept` may ask `/v1` to answer as instead of JSON: the one image output's bytes."""


def answer_type(plan: Plan, accept: str) -> tuple[str, str] | None:
    """What the caller's `Accept` header asks the answer to be, in order of its q-values:
    None for JSON (the default, and for `*/*` or types this route does not answer), or
    (output, format) for the bytes of the graph's one image output as PNG, JPEG or WebP,
    without base64 or JSON around them. A graph with other outputs refuses an image with 406."""
    wanted = []
    for i, part in enumerate(accept.lower().split(",")[:32]):
        media, *options = (p.strip() for p in part.split(";"))
        q = next((o[2:] for o in options if o.startswith("q=")), "1")
        try:
            wanted.append((-float(q), i, media))
        except ValueError:
            raise InputError("headers.accept", f"'{q[:20]}' is not a q-value", 400) from None
    for _, _, media in sorted(wanted):
        if media in ("application/json", "*/*", "application/*"):
            return None
        if media in IMAGE_ANSWERS:
            (name, *others) = plan.outputs
            if others or not looks_like_image(plan.output_type(name)):
                raise InputError(
                    "headers.accept",
                    f"'{media}' asks for one image, and this graph answers {', '.join(plan.outputs)}: "
                    "ask for application/json",
                    406,
                )
            return name, IMAGE_ANSWERS[media]
    return None


def render_image(plan: Plan, outputs: Mapping[str, Any], name: str, fmt: str) -> bytes:
    """The one image output as `fmt` bytes (`answer_type`)."""
    return encode_image(as_image(plan.output_type(name), outputs[name]), fmt)


def parse_json_body(plan: Plan, raw: bytes, max_pixels: int) -> tuple[dict[str, Any], dict[str, NodeParams]]:
    """`loads` then `parse_json`: the whole JSON request in one call, for one thread hop."""
    return parse_json(plan, loads(raw), max_pixels)


def schema(plan: Plan) -> dict[str, Any]:
    """What `GET /v1/{capability}/schema` answers: inputs, request params, outputs."""
    inputs = {}
    for name, spec in plan.spec.inputs.items():
        entry: dict[str, Any] = {
            "type": spec.type.value,
            "required": spec.required,
            "description": spec.description or spec.type.doc,
        }
        if spec.default is not None:
            entry["default"] = spec.default
        if spec.type in ENCODINGS:
            entry["encoding"] = ENCODINGS[spec.type]
        inputs[name] = entry
    params = {}
    for key, (node_id, name) in plan.request_params().items():
        node = plan.nodes[node_id]
        prop = dict(_param_schemas(node.family.Params).get(name, {}))
        prop["default"] = jsonable(getattr(node.params, name))
        if key != f"{node_id}.{name}":  # the graph's own name for it
            prop["description"] = f"sets {node_id}.{name}" + (
                f": {prop['description']}" if prop.get("description") else ""
            )
        params[key] = prop
    params |= switch_schemas(plan)
    outputs = {}
    for name in plan.outputs:
        kind = plan.output_type(name)
        outputs[name] = (
            {"type": kind.value, "description": kind.doc}
            | ({"encoding": ENCODINGS[kind]} if kind in ENCODINGS else {})
            | ({"optional": True} if name in plan.optional_outputs else {})
        )
    answer = {
        "capability": plan.capability,
        "version": plan.spec.version,
        "description": plan.spec.description,
        "inputs": inputs,
        "params": params,
        "outputs": outputs,
    }
    if plan.conditions:
        answer["conditions"] = conditions(plan)
    return answer


def conditions(plan: Plan) -> dict[str, dict[str, Any]]:
    """Each condition a node's `when:` reads: where it comes from (a Bool graph input or a
    switch param) and which nodes run only when it is true or only when it is false."""
    found: dict[str, dict[str, Any]] = {}
    for name in plan.conditions:
        readers = [n for n in plan.nodes.values() if n.when is not None and n.when.name == name]
        found[name] = {
            "from": "params" if name in plan.switches else "inputs",
            "runs_when_true": [n.id for n in readers if not n.when.negate],
            "runs_when_false": [n.id for n in readers if n.when.negate],
        }
    return found


def switch_schemas(plan: Plan) -> dict[str, dict[str, Any]]:
    """The graph's switches as request params: booleans saying which nodes they turn on or off."""
    found = {}
    for name, switch in plan.switches.items():
        on = [n.id for n in plan.nodes.values() if n.when is not None and n.when.name == name and not n.when.negate]
        off = [n.id for n in plan.nodes.values() if n.when is not None and n.when.name == name and n.when.negate]
        what = "; ".join(
            part
            for part in (
                f"runs {', '.join(on)} when true" if on else "",
                f"runs {', '.join(off)} when false" if off else "",
            )
            if part
        )
        found[name] = {
            "type": "boolean",
            "default": switch.default,
            "description": f"switch: {what}" + (f". {switch.description}" if switch.description else ""),
        }
    return found


def request_schema(plan: Plan) -> dict[str, dict[str, Any]]:
    """The request body as JSON Schema, per media type, for the OpenAPI document: every
    input with its encoding, every settable param with its bounds, nothing else allowed.
    Fuzzers generate from it; `parse_json` and `parse_form` enforce the same rules."""
    inputs = {
        name: codec(spec.type).json_schema() | {"description": spec.description or spec.type.doc}
        for name, spec in plan.spec.inputs.items()
    }
    required = [name for name, spec in plan.spec.inputs.items() if spec.required]
    params = {
        key: _param_schemas(plan.nodes[node_id].family.Params).get(name, {})
        for key, (node_id, name) in plan.request_params().items()
    } | switch_schemas(plan)
    body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"] if required else [],
        "properties": {
            "inputs": {"type": "object", "additionalProperties": False, "required": required, "properties": inputs},
            "params": {
                "type": "object",
                "additionalProperties": False,
                "properties": params,
                "description": "per-request params, by the graph's own names or as 'node.param': value",
            },
        },
    }
    form = {name: codec(spec.type).form_schema() for name, spec in plan.spec.inputs.items()}
    form["params"] = {"type": "string", "description": "a JSON object of 'node.param': value"}
    multipart = {"type": "object", "required": required, "properties": form}
    return {"application/json": {"schema": body}, "multipart/form-data": {"schema": multipart}}


def route_path(scope: Mapping[str, Any]) -> str:
    """An ASGI request's path below the app's mount point (Serve's `route_prefix`), no trailing slash."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"
