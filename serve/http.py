"""The capability's wire format: JSON or multipart requests in, JSON answers out.

No Ray and no FastAPI here, so the rules can be tested on their own:

- request: `{"inputs": {...}, "params": {"node.param": value}}`; an image input is base64
  PNG/JPEG/WebP or a `data:` URL (a Mask or DepthMap input is a greyscale image); a
  multipart form carries image files under the input's name and other inputs as text
  fields, with `params` as a JSON text field.
- answer: `{"outputs": {...}, "timings_ms": {...}}`; images, masks and depth maps as base64
  PNG, segmentation maps as 8- or 16-bit PNG of class ids, bytes as base64.

Every fault in a request is an `InputError` naming the field; decoding goes through
`engine.values.decode_image`, so the pixel limit is the same as everywhere else.
"""

import base64
import binascii
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.errors import InputError
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


def parse_json(plan: Plan, body: Any, max_pixels: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JSON request body -> (graph inputs decoded, `node.param` overrides)."""
    if not isinstance(body, Mapping):
        raise InputError("body", "expected a JSON object with 'inputs' and optionally 'params'", 400)
    unknown = set(body) - {"inputs", "params"}
    if unknown:
        raise InputError(sorted(unknown)[0], "unknown field; a request has 'inputs' and 'params'", 400)
    inputs, params = body.get("inputs", {}), body.get("params") or {}
    if not isinstance(inputs, Mapping):
        raise InputError("inputs", "expected an object of graph inputs", 400)
    if not isinstance(params, Mapping):
        raise InputError("params", "expected an object of 'node.param': value", 400)
    return {name: decode_value(plan, name, value, max_pixels) for name, value in inputs.items()}, dict(params)


def parse_form(plan: Plan, fields: Mapping[str, Any], max_pixels: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Multipart fields (bytes for files, str for text) -> (graph inputs, overrides)."""
    params: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "params":
            try:
                params = json.loads(value) if isinstance(value, str) else json.loads(bytes(value).decode())
            except (ValueError, UnicodeDecodeError):
                raise InputError("params", "must be a JSON object of 'node.param': value", 400) from None
            if not isinstance(params, dict):
                raise InputError("params", "must be a JSON object of 'node.param': value", 400)
            continue
        kind = _kind(plan, name)
        if isinstance(value, bytes):
            inputs[name] = _from_bytes(kind, value, f"inputs.{name}", max_pixels)
        else:
            inputs[name] = _from_text(kind, value, f"inputs.{name}", max_pixels)
    return inputs, params


def decode_value(plan: Plan, name: str, value: Any, max_pixels: int) -> Any:
    """One JSON input value -> the port value (images decoded, the rest as sent)."""
    kind = _kind(plan, name)
    field = f"inputs.{name}"
    if kind in IMAGE_LIKE or kind is PortType.BYTES:
        if not isinstance(value, str):
            raise InputError(field, f"expected {ENCODINGS[kind]}, got {type(value).__name__}", 422)
        return _from_bytes(kind, b64decode(value, field, max_pixels), field, max_pixels)
    return value


def b64decode(text: str, field: str, max_pixels: int) -> bytes:
    """base64 or a data: URL -> bytes, refusing payloads larger than any allowed image."""
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise InputError(field, "data: URLs must be base64 encoded", 400)
    limit = max_pixels * 4 + (1 << 20)  # an uncompressed RGBA frame and a header is the most a file can need
    if len(text) * 3 // 4 > limit:
        raise InputError(field, f"payload of about {len(text) * 3 // 4:,} bytes is larger than any image under the pixel limit", 413)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "not valid base64", 400) from None


def _from_bytes(kind: PortType | None, data: bytes, field: str, max_pixels: int) -> Any:
    if kind is PortType.BYTES or kind is None:  # unknown names are reported by check_inputs
        return data
    if kind not in IMAGE_LIKE:
        raise InputError(field, f"a file was sent for a {kind.title} input", 422)
    image = decode_image(data, field, max_pixels)
    if kind is PortType.IMAGE:
        return image
    if kind is PortType.SEGMENTATION_MAP:
        return image[..., 0].astype(np.int32)
    return (image.mean(axis=2) / 255.0).astype(np.float32)


def _from_text(kind: PortType | None, text: str, field: str, max_pixels: int) -> Any:
    """A multipart text field. Never a file path: images come as files or base64."""
    if kind in IMAGE_LIKE or kind is PortType.BYTES:
        return _from_bytes(kind, b64decode(text, field, max_pixels), field, max_pixels)
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
        prop = dict(node.family.Params.model_json_schema().get("properties", {}).get(name, {}))
        prop["default"] = _plain(getattr(node.params, name))
        params[key] = prop
    outputs = {}
    for name in plan.outputs:
        kind = plan.output_type(name)
        outputs[name] = {"type": kind.value, "description": kind.doc} | ({"encoding": ENCODINGS[kind]} if kind in ENCODINGS else {})
    return {"capability": plan.capability, "version": plan.spec.version, "description": plan.spec.description,
            "inputs": inputs, "params": params, "outputs": outputs}


def error_body(exc: InputError) -> dict[str, Any]:
    """The JSON of a 4xx: `{"error": {"field": ..., "msg": ...}}`."""
    return {"error": exc.to_dict()}
