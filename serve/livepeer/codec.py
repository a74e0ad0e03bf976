"""JSON in and out of a graph for jobs that arrive as a body, not as typed HTTP fields.

A BYOC job is an opaque body the orchestrator passes through byte for byte, so the job
route reads the same JSON as the native route:

    {"inputs": {"image": "data:image/png;base64,...", "low": 80}, "params": {"edges.low_threshold": 50}}

Images (and masks, depth maps, bytes) travel as data URLs or bare base64; everything
else as plain JSON. Answers carry images as PNG data URLs, the form go-livepeer and the
livepeer-ai SDK already decode.
"""

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.plan import Plan
from engine.types import PortType
from engine.values import decode_image, encode_image
from serve.http import check_body_keys

MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif", b"RIFF": "image/webp"}


def data_url(data: bytes) -> str:
    """Bytes as a data URL with the type sniffed from the magic number."""
    mime = next((m for magic, m in MIME.items() if data.startswith(magic)), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_data_url(array: np.ndarray) -> str:
    return data_url(encode_image(array, "png"))


def unbase64(text: str, field: str) -> bytes:
    """A data URL or bare base64 string as bytes; InputError (400) when it is neither."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "expected a data URL or base64 string", 400) from None


def parse_job(body: bytes, plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job body -> (graph inputs, `node.param` overrides). InputError names what is wrong."""
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InputError("body", "expected a JSON object: {\"inputs\": {...}, \"params\": {...}}", 400) from None
    if not isinstance(doc, dict):
        raise InputError("body", "expected a JSON object: {\"inputs\": {...}, \"params\": {...}}", 400)
    check_body_keys(doc, "a job")
    inputs, params = doc.get("inputs") or {}, doc.get("params") or {}
    if not isinstance(inputs, dict) or not isinstance(params, dict):
        raise InputError("inputs" if not isinstance(inputs, dict) else "params", "must be a JSON object", 400)
    decoded = {}
    for name, value in inputs.items():
        spec = plan.spec.inputs.get(name)
        decoded[name] = value if spec is None else decode_value(spec.type, value, f"inputs.{name}")
    return decoded, params


def decode_value(kind: PortType, value: Any, field: str) -> Any:
    """A JSON value -> the port value the graph expects (checked later by the executor)."""
    if kind is PortType.IMAGE and isinstance(value, str):
        return decode_image(unbase64(value, field), field)
    if kind is PortType.BYTES and isinstance(value, str):
        return unbase64(value, field)
    if kind in (PortType.MASK, PortType.DEPTH_MAP):
        if isinstance(value, str):
            return (decode_image(unbase64(value, field), field).mean(axis=2) / 255.0).astype(np.float32)
        if isinstance(value, list):
            return np.asarray(value, dtype=np.float32)
    if kind is PortType.SEGMENTATION_MAP and isinstance(value, list):
        return np.asarray(value, dtype=np.int32)
    return value


def encode_value(kind: PortType, value: Any) -> Any:
    """A graph output -> JSON: images and maps as PNG data URLs, masks with their scores."""
    if kind in (PortType.IMAGE, PortType.MASK, PortType.DEPTH_MAP):
        return png_data_url(value)
    if kind is PortType.BYTES:
        return data_url(bytes(value))
    if kind is PortType.SEGMENTATION_MAP:
        return np.asarray(value).tolist()
    if kind is PortType.MASKS:
        return {
            "masks": [png_data_url(m) for m in np.asarray(value["masks"], dtype=np.float32)],
            "scores": np.asarray(value["scores"], dtype=np.float32).tolist(),
        }
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_outputs(plan: Plan, outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {name: encode_value(plan.output_type(name), value) for name, value in outputs.items()}
