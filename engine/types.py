"""Port types: the small, documented set of values that flow along graph edges.

Every value crossing an edge is a plain Python or numpy object (never a torch tensor), so
that the same value can be pickled between Ray Serve replicas, written by the CLI and
encoded into an HTTP answer without knowing which node made it.
"""

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from capgraph.engine.video import check_video


class PortType(str, enum.Enum):
    """The type of a port. The value is the name used in graph files (`type: image`)."""

    IMAGE = "image"
    MASK = "mask"
    DEPTH_MAP = "depth_map"
    SEGMENTATION_MAP = "segmentation_map"
    MASKS = "masks"
    POINTS = "points"
    BOXES = "boxes"
    TEXT = "text"
    NUMBER = "number"
    INTEGER = "integer"
    BOOL = "bool"
    BYTES = "bytes"
    VIDEO = "video"

    @property
    def title(self) -> str:
        """CamelCase name used in messages and the catalogue, e.g. `DepthMap`."""
        return "".join(part.capitalize() for part in self.value.split("_"))

    @property
    def doc(self) -> str:
        return _DOCS[self]


_DOCS: dict[PortType, str] = {
    PortType.IMAGE: "RGB frame: numpy uint8 array of shape (H, W, 3)",
    PortType.MASK: "single mask: numpy float32 array of shape (H, W), values in [0, 1]",
    PortType.DEPTH_MAP: "relative depth: numpy float32 array of shape (H, W), normalised to [0, 1], near = 1",
    PortType.SEGMENTATION_MAP: "per-pixel class ids: numpy int32 array of shape (H, W)",
    PortType.MASKS: (
        "masks with scores: dict with 'masks' float32 (N, H, W), 'scores' float32 (N,), 'logits' float32 (N, h, w)"
    ),
    PortType.POINTS: "prompt points: list of [x, y, label] in pixels, label 1 = foreground, 0 = background",
    PortType.BOXES: "boxes: list of [x0, y0, x1, y1] in pixels",
    PortType.TEXT: "a string",
    PortType.NUMBER: "a float",
    PortType.INTEGER: "an int",
    PortType.BOOL: "true or false",
    PortType.BYTES: "an encoded file (PNG or JPEG bytes)",
    PortType.VIDEO: "a clip: engine.video.Video, uint8 frames (T, H, W, 3) and fps",
}
FRAME_TYPES = frozenset({PortType.IMAGE, PortType.MASK, PortType.DEPTH_MAP, PortType.SEGMENTATION_MAP})
"""Types a node gives per frame that a clip of its outputs shows as a Video (maps as grey frames)."""


@dataclass(frozen=True)
class Port:
    """One input or output socket of a node family.

    `types` lists every type the port accepts (inputs) or the one type it gives (outputs).
    An input with `optional=True` may be left unwired.
    """

    types: tuple[PortType, ...]
    doc: str = ""
    optional: bool = False

    @property
    def type(self) -> PortType:
        return self.types[0]

    @property
    def label(self) -> str:
        return " | ".join(t.title for t in self.types)


def port(*types: PortType, doc: str = "", optional: bool = False) -> Port:
    """Declare a port: `port(PortType.IMAGE, doc="frame to detect edges on")`."""
    if not types:
        raise TypeError("a port needs at least one PortType")
    return Port(tuple(types), doc, optional)


def compatible(src: PortType, dst: Port) -> bool:
    """Whether a value of type `src` may be wired into port `dst`.

    The rule is deliberately plain: the destination must list the source type. The one
    widening is INTEGER into NUMBER, which loses nothing. A Video into an Image port is
    `over_clip`, not compatible: the node then runs once per frame.
    """
    return src in dst.types or (src is PortType.INTEGER and PortType.NUMBER in dst.types)


def over_clip(src: PortType, dst: Port) -> bool:
    """Whether wiring `src` into `dst` runs the node over a clip's frames: a Video into a
    port that takes an Image and not a Video (docs/graph-format.md "Video")."""
    return src is PortType.VIDEO and PortType.IMAGE in dst.types and PortType.VIDEO not in dst.types


def check_value(kind: PortType, value: Any) -> str | None:
    """Say what is wrong with a value for a port of type `kind`, or None if it fits.

    Used at the edges of the engine (graph inputs, node outputs in tests), not on every hop.
    """
    if kind is PortType.IMAGE:
        if not (isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] == 3):
            return f"expected uint8 array (H, W, 3), got {_describe(value)}"
    elif kind in (PortType.MASK, PortType.DEPTH_MAP):
        if not (isinstance(value, np.ndarray) and value.ndim == 2 and value.dtype == np.float32):
            return f"expected float32 array (H, W), got {_describe(value)}"
    elif kind is PortType.SEGMENTATION_MAP:
        if not (isinstance(value, np.ndarray) and value.ndim == 2 and np.issubdtype(value.dtype, np.integer)):
            return f"expected integer array (H, W), got {_describe(value)}"
    elif kind is PortType.MASKS:
        if not (isinstance(value, dict) and {"masks", "scores"} <= value.keys()):
            return f"expected a dict with 'masks' and 'scores', got {_describe(value)}"
    elif kind in (PortType.POINTS, PortType.BOXES):
        width = 3 if kind is PortType.POINTS else 4
        if not (isinstance(value, list) and all(isinstance(v, (list, tuple)) and len(v) == width for v in value)):
            return f"expected a list of {width}-number lists, got {_describe(value)}"
    elif kind is PortType.TEXT:
        if not isinstance(value, str):
            return f"expected a string, got {_describe(value)}"
    elif kind is PortType.NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {_describe(value)}"
    elif kind is PortType.INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {_describe(value)}"
    elif kind is PortType.BOOL:
        if not isinstance(value, bool):
            return f"expected true or false, got {_describe(value)}"
    elif kind is PortType.BYTES:
        if not isinstance(value, (bytes, bytearray)):
            return f"expected bytes, got {_describe(value)}"
    elif kind is PortType.VIDEO:
        return check_video(value)
    return None


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
