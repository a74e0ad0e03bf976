"""Graph outputs as the Livepeer routes answer them: images as PNG data URLs.

A BYOC job's request is the native job (read by `serve.wire.read_job`, as `/v1` reads it);
its answer carries images, masks and depth maps as PNG data URLs, the form go-livepeer and
the livepeer-ai SDK already decode, where `/v1` answers bare base64.
"""

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.plan import Plan
from engine.types import PortType
from engine.values import encode_image

MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif", b"RIFF": "image/webp"}


def data_url(data: bytes) -> str:
    """Bytes as a data URL with the type sniffed from the magic number."""
    mime = next((m for magic, m in MIME.items() if data.startswith(magic)), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_data_url(array: np.ndarray) -> str:
    return data_url(encode_image(array, "png"))


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
