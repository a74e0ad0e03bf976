"""One codec per port type: how a value comes in from the outside world and goes back out.

The CLI, `/v1`, BYOC jobs, ai-runner routes and live stream params all decode and encode
through `codec(kind)`, so each rule lives here once. docs/graph-format.md lists them.
"""

import base64
import binascii
import io
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from capgraph.engine.errors import InputError
from capgraph.engine.types import PortType, check_value
from capgraph.engine.values import MAX_PIXELS, decode_image, encode_image, gray_to_rgb
from capgraph.engine.video import MAX_VIDEO_BYTES, MP4_MIME, VIDEO_MIME, Video, decode_video, encode_video

if TYPE_CHECKING:
    from capgraph.engine.plan import Plan

MAX_TEXT_CHARS = 10_000
"""Longest text input; prompts are cut to 77 tokens anyway, so longer is a mistake or an attack."""
IMAGE_MIME = ("image/png", "image/jpeg", "image/webp", "image/bmp")
"""Media types a `data:` URL for an image, mask or map may say."""
MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif", b"RIFF": "image/webp"}
JSON_TYPES = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}
BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
"""The one rule for booleans written as text (CLI and multipart), compared case-insensitively."""


class Codec:
    """Decoding and encoding for one port type; the base covers plain JSON values."""

    kind: PortType
    encoding: str | None = None
    """How a JSON request sends it, where that is not plain JSON (the schema's `encoding`)."""
    file: bool = False
    """Sent as a file: a multipart file part, a path on the CLI."""

    def __init__(self, kind: PortType, encoding: str | None = None):
        self.kind = kind
        if encoding:
            self.encoding = encoding

    def from_json(self, value: Any, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        return value

    def from_text(self, text: str, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        try:
            return self.parse(text, field)
        except InputError:
            raise
        except ValueError:
            raise InputError(field, f"'{text[:40]}' is not a valid {self.kind.title}", 422) from None

    def parse(self, text: str, field: str) -> Any:
        """A text field -> the value; ValueError when it is not one."""
        return json.loads(text)

    def from_bytes(self, data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        raise InputError(field, f"a file was sent for a {self.kind.title} input", 422)

    def check(self, value: Any, field: str) -> Any:
        """An already decoded value, checked (InputError) and normalised."""
        problem = check_value(self.kind, value)
        if problem:
            raise InputError(field, problem)
        return value

    def encode(self, value: Any, data_url: bool = False) -> Any:
        return jsonable(value)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "object"}

    def form_schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "binary"} if self.file else {"type": "string"}


class _Text(Codec):
    def from_json(self, value: Any, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise InputError(field, f"text of {len(value):,} characters is over the limit of {MAX_TEXT_CHARS:,}", 422)
        return value

    def parse(self, text: str, field: str) -> Any:
        return self.from_json(text, field)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": MAX_TEXT_CHARS}


class _Number(Codec):
    def parse(self, text: str, field: str) -> Any:
        return self.check(float(text), field)

    def check(self, value: Any, field: str) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(field, "must be a finite number")
        return super().check(value, field)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "number"}


class _Integer(Codec):
    def parse(self, text: str, field: str) -> Any:
        return int(text)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "integer"}


class _Bool(Codec):
    def parse(self, text: str, field: str) -> Any:
        key = text.strip().lower()
        if key not in BOOL_TEXT:
            raise ValueError(text)
        return BOOL_TEXT[key]

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class _Rows(Codec):
    """Points ([x, y, label]) and boxes ([x0, y0, x1, y1]): JSON lists of numbers."""

    def __init__(self, kind: PortType, width: int):
        super().__init__(kind)
        self.width = width

    def check(self, value: Any, field: str) -> Any:
        if isinstance(value, list):
            value = [list(v) if isinstance(v, (list, tuple)) else v for v in value]
        return super().check(value, field)

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "array",
            "items": {"type": "array", "items": {"type": "number"}, "minItems": self.width, "maxItems": self.width},
        }


class _Masks(Codec):
    encoding = "{masks: [base64 PNG], scores: [float]}"

    def encode(self, value: Any, data_url: bool = False) -> Any:
        return {
            "masks": [_png(encode_image(m), data_url) for m in np.asarray(value["masks"], dtype=np.float32)],
            "scores": [float(s) for s in value["scores"]],
        }


class _File(Codec):
    """Bytes: base64 or a `data:` URL in JSON and text, as they are in a file."""

    file = True
    encoding = "base64"
    media: tuple[str, ...] = ()
    """Media types a `data:` URL must say; empty takes any."""
    noun = "image"
    """What messages call a file of this type."""

    def from_json(self, value: Any, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        if not isinstance(value, str):
            raise InputError(field, f"expected {self.encoding}, got {json_type(value)}", 422)
        return self.from_base64(value, field, max_pixels)

    def from_text(self, text: str, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        try:
            data = self.b64bytes(text, field, max_pixels)
        except InputError as exc:
            if exc.status != 400:
                raise
            raise InputError(
                field, f"{exc.message}: send the {self.noun} as a file part (with a filename) or as base64 text", 400
            ) from None
        return self.from_bytes(data, field, max_pixels)

    def from_base64(self, text: str, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        return self.from_bytes(self.b64bytes(text, field, max_pixels), field, max_pixels)

    def b64bytes(self, text: str, field: str, max_pixels: int = MAX_PIXELS) -> bytes:
        """base64 or a data: URL -> bytes, refusing payloads larger than any allowed file (`max_bytes`).

        Whitespace is ignored, as in MIME's 76-column lines (what `base64` prints by default)."""
        if text.startswith("data:"):
            head, _, text = text.partition(",")
            if ";base64" not in head:
                raise InputError(field, "data: URLs must be base64 encoded (data:image/png;base64,...)", 400)
            mime = head[5:].split(";")[0].strip().lower()
            if self.media and mime and mime not in self.media:
                raise InputError(field, f"the data: URL says '{mime[:40]}'; send {', '.join(self.media[:3])}", 415)
        if len(text) * 3 // 4 > self.max_bytes(max_pixels):
            raise InputError(
                field,
                f"payload of about {len(text) * 3 // 4:,} bytes is larger than any {self.noun} allowed "
                f"({self.max_bytes(max_pixels):,} bytes)",
                413,
            )
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InputError(field, "not valid base64", 400) from None

    def max_bytes(self, max_pixels: int) -> int:
        """Largest file accepted: an uncompressed RGBA frame and a header is the most an image can need."""
        return max_pixels * 4 + (1 << 20)

    def from_bytes(self, data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        return data

    def encode(self, value: Any, data_url: bool = False) -> Any:
        data = bytes(value)
        if not data_url:
            return _b64(data)
        mime = next((m for magic, m in MIME.items() if data.startswith(magic)), "application/octet-stream")
        return f"data:{mime};base64,{_b64(data)}"

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "contentEncoding": "base64"}


class _Image(_File):
    """An RGB frame; `as_image` is what it looks like as one (ai-runner's answers)."""

    encoding = "base64 PNG/JPEG/WebP, or a data: URL"
    media = IMAGE_MIME

    def from_bytes(self, data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        return decode_image(data, field, max_pixels)

    def encode(self, value: Any, data_url: bool = False) -> Any:
        return _png(encode_image(np.asarray(value)), data_url)

    def as_image(self, value: Any) -> np.ndarray:
        return value


class _Grey(_Image):
    """A mask or depth map: float32 in [0, 1] as a greyscale image (white = 1)."""

    def from_bytes(self, data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        return (decode_image(data, field, max_pixels).mean(axis=2) / 255.0).astype(np.float32)

    def as_image(self, value: Any) -> np.ndarray:
        return gray_to_rgb(value)


class _Labels(_Image):
    """Class ids as an 8- or 16-bit greyscale PNG."""

    encoding = "base64 PNG of class ids (8 or 16 bit)"

    def from_bytes(self, data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        return decode_image(data, field, max_pixels, labels=True)

    def encode(self, value: Any, data_url: bool = False) -> Any:
        return _png(label_png(np.asarray(value)), data_url)

    def as_image(self, value: Any) -> np.ndarray:
        return np.repeat(np.clip(value, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


class _Video(_File):
    """A clip as an MP4 file (H.264): frames and fps, bounded by `engine.video`."""

    encoding = "base64 MP4 (H.264), or a data: URL"
    media = VIDEO_MIME
    noun = "video"

    def max_bytes(self, max_pixels: int) -> int:
        return MAX_VIDEO_BYTES

    def from_bytes(self, data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Any:
        return decode_video(data, field, max_pixels)

    def encode(self, value: Any, data_url: bool = False) -> Any:
        data = encode_video(value)
        return f"data:{MP4_MIME};base64,{_b64(data)}" if data_url else _b64(data)

    def frame_urls(self, value: Video) -> list[str]:
        """Each frame as a PNG `data:` URL (ai-runner's image-to-video answer)."""
        return [_png(encode_image(frame), data_url=True) for frame in value.frames]


CODECS: dict[PortType, Codec] = {
    PortType.IMAGE: _Image(PortType.IMAGE),
    PortType.MASK: _Grey(PortType.MASK, "base64 greyscale image (white = 1)"),
    PortType.DEPTH_MAP: _Grey(PortType.DEPTH_MAP, "base64 greyscale image (white = near)"),
    PortType.SEGMENTATION_MAP: _Labels(PortType.SEGMENTATION_MAP),
    PortType.MASKS: _Masks(PortType.MASKS),
    PortType.POINTS: _Rows(PortType.POINTS, 3),
    PortType.BOXES: _Rows(PortType.BOXES, 4),
    PortType.TEXT: _Text(PortType.TEXT),
    PortType.NUMBER: _Number(PortType.NUMBER),
    PortType.INTEGER: _Integer(PortType.INTEGER),
    PortType.BOOL: _Bool(PortType.BOOL),
    PortType.BYTES: _File(PortType.BYTES),
    PortType.VIDEO: _Video(PortType.VIDEO),
}
ENCODINGS: dict[PortType, str] = {kind: c.encoding for kind, c in CODECS.items() if c.encoding}
"""How each non-JSON type travels in a JSON request or answer (the schema's `encoding`)."""


def codec(kind: PortType) -> Codec:
    return CODECS[kind]


def coerce(kind: PortType, value: Any, field: str) -> Any:
    """Check a graph input value (already decoded) and widen int -> float for NUMBER."""
    return CODECS[kind].check(value, field)


def from_arg(kind: PortType, text: str, field: str, max_pixels: int = MAX_PIXELS) -> Any:
    """A CLI `NAME=VALUE`: a file type's value is a path, read and decoded as a file part;
    the rest is a text field (the same booleans as multipart)."""
    c = CODECS[kind]
    if not c.file:
        return c.check(c.from_text(text, field, max_pixels), field)
    try:
        with open(text, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(field, f"cannot read '{text}': {exc.strerror}") from None
    return c.check(c.from_bytes(data, field, max_pixels), field)


def encode_value(kind: PortType, value: Any, data_url: bool = False) -> Any:
    """One output as JSON: base64 PNG for images and maps, or `data:` URLs with `data_url`."""
    return CODECS[kind].encode(value, data_url)


def encode_outputs(plan: "Plan", outputs: Mapping[str, Any], data_url: bool = False) -> dict[str, Any]:
    """Graph outputs -> JSON-ready values."""
    return {name: CODECS[plan.output_type(name)].encode(value, data_url) for name, value in outputs.items()}


def frame_urls(value: Video) -> list[str]:
    """A clip's frames as PNG `data:` URLs, in order (ai-runner's `frames[0]`)."""
    return CODECS[PortType.VIDEO].frame_urls(value)  # type: ignore[attr-defined]


def as_frame(kind: PortType, value: Any) -> np.ndarray:
    """A per-frame value (Image, Mask, DepthMap, SegmentationMap) as the RGB frame a clip shows."""
    return CODECS[kind].as_image(value)  # type: ignore[attr-defined]


def image_url(kind: PortType, value: Any) -> str:
    """An output as one image `data:` URL (ai-runner's `images[].url`): bytes as they are,
    maps as grey RGB frames."""
    c = CODECS[kind]
    if isinstance(c, _Image):
        return CODECS[PortType.IMAGE].encode(c.as_image(value), data_url=True)
    return c.encode(value, data_url=True)


def looks_like_image(kind: PortType) -> bool:
    """Whether an output of this kind is a picture (`as_image` gives its RGB frame)."""
    return isinstance(CODECS[kind], _Image)


def as_image(kind: PortType, value: Any) -> np.ndarray:
    """An image, mask, map or label output as the RGB frame it looks like."""
    return CODECS[kind].as_image(value)


def label_png(labels: np.ndarray) -> bytes:
    """Class ids as an 8-bit PNG, or 16-bit where an id is over 255."""
    from PIL import Image

    buf = io.BytesIO()
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"segmentation ids out of the 16-bit range ({labels.min()}..{labels.max()})")
    image = (
        Image.fromarray(labels.astype(np.uint8))
        if labels.size == 0 or labels.max() < 256
        else Image.fromarray(labels.astype(np.uint16))
    )
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def json_type(value: Any) -> str:
    """The JSON name of a decoded JSON value's type (`integer`, `string`, ...)."""
    return next((name for kind, name in JSON_TYPES.items() if type(value) is kind), type(value).__name__)


def jsonable(value: Any) -> Any:
    """numpy scalars and arrays, nested in lists, tuples and dicts, as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def _png(data: bytes, data_url: bool) -> str:
    return f"data:image/png;base64,{_b64(data)}" if data_url else _b64(data)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
