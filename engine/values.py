"""Converting port values to and from the outside world: image files, CLI strings, JSON.

One place for decoding and encoding, shared by the CLI, the codec nodes and the HTTP
capability, so the same limits (pixel count, formats) hold everywhere.
"""

import io
import json
import math
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.types import PortType, check_value

MAX_PIXELS = 4096 * 4096
"""Largest image accepted by default (16.7 MP): bigger headers are refused before decoding."""


def decode_image(data: bytes, field: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """PNG/JPEG/WebP bytes -> uint8 RGB array. Refuses oversized headers before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(field, "empty image data")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(field, f"image is {width}x{height} pixels, over the limit of {max_pixels:,} pixels", 413)
            if img.format not in ("PNG", "JPEG", "WEBP", "BMP"):
                raise InputError(field, f"unsupported image format {img.format}; send PNG, JPEG or WebP", 415)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(field, f"image is too large to decode safely ({str(exc)[:80]})", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(field, f"not a decodable image ({type(exc).__name__}: {str(exc)[:80]})", 400) from None


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """An IMAGE (uint8 RGB) or a single-channel float map in [0, 1] -> PNG/JPEG bytes."""
    from PIL import Image

    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=1)  # speed over a few % of size: frames are short-lived
    return buf.getvalue()


def coerce(kind: PortType, value: Any, field: str) -> Any:
    """Check a graph input value (already decoded) and widen int -> float for NUMBER."""
    if kind is PortType.NUMBER and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is PortType.NUMBER and isinstance(value, float) and not math.isfinite(value):
        raise InputError(field, "must be a finite number")
    if kind in (PortType.POINTS, PortType.BOXES) and isinstance(value, list):
        value = [list(v) if isinstance(v, (list, tuple)) else v for v in value]
    problem = check_value(kind, value)
    if problem:
        raise InputError(field, problem)
    return value


def parse_text(kind: PortType, text: str, field: str) -> Any:
    """A CLI string (`--input NAME=VALUE`) -> a value of `kind`. Images are file paths."""
    if kind in (PortType.IMAGE, PortType.BYTES, PortType.MASK):
        try:
            with open(text, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise InputError(field, f"cannot read '{text}': {exc.strerror}") from None
        if kind is PortType.BYTES:
            return data
        image = decode_image(data, field)
        return image if kind is PortType.IMAGE else (image.mean(axis=2) / 255.0).astype(np.float32)
    try:
        if kind is PortType.TEXT:
            return text
        if kind is PortType.NUMBER:
            return coerce(kind, float(text), field)
        if kind is PortType.INTEGER:
            return int(text)
        if kind is PortType.BOOL:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        return coerce(kind, json.loads(text), field)
    except (ValueError, json.JSONDecodeError):
        raise InputError(field, f"'{text[:40]}' is not a valid {kind.title}") from None
