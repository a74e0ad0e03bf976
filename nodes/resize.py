"""Resize and crop a frame to sides divisible by 8 (or another multiple).

SDXL and its ControlNets need sides divisible by 8; a frame from a camera rarely has
them. `fit` decides how the aspect ratio is kept: crop the overflow, pad with black, or
stretch. No weights.
"""

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.nodes.helpers import per_frame, resize, to_multiple


class ResizeParams(NodeParams):
    width: int | None = Field(None, ge=8, le=8192, description="target width; unset = from the frame and max_side")
    height: int | None = Field(None, ge=8, le=8192, description="target height; unset = from the frame and max_side")
    max_side: int | None = Field(None, ge=8, le=8192, description="scale down so the longer side is at most this")
    multiple: int = Field(8, ge=1, le=256, description="both sides are rounded down to a multiple of this")
    fit: Literal["crop", "pad", "stretch"] = Field("crop", description="how to keep the aspect ratio")


def target_size(width: int, height: int, p: ResizeParams) -> tuple[int, int]:
    if p.width and p.height:
        w, h = float(p.width), float(p.height)
    elif p.width or p.height:  # one side given: keep the aspect ratio
        scale = (p.width or 0) / width if p.width else (p.height or 0) / height
        w, h = width * scale, height * scale
    else:
        w, h = float(width), float(height)
    if p.max_side and max(w, h) > p.max_side:
        scale = p.max_side / max(w, h)
        w, h = w * scale, h * scale
    return to_multiple(w, p.multiple), to_multiple(h, p.multiple)


def fit_image(image: np.ndarray, width: int, height: int, fit: str) -> np.ndarray:
    src_h, src_w = image.shape[:2]
    if fit == "stretch":
        return resize(image, width, height)
    cover = fit == "crop"
    scale = (max if cover else min)(width / src_w, height / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    scaled = resize(image, new_w, new_h)
    if cover:
        left, top = (new_w - width) // 2, (new_h - height) // 2
        return np.ascontiguousarray(scaled[top : top + height, left : left + width])
    canvas = np.zeros((height, width) + image.shape[2:], dtype=image.dtype)
    left, top = (width - new_w) // 2, (height - new_h) // 2
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas


class Resize(Node):
    """Resize a frame (and an optional mask with it) to sides divisible by a multiple."""

    type = "resize"
    category = "condition"
    Params = ResizeParams
    inputs = {
        "image": port(PortType.IMAGE, doc="frame to resize"),
        "mask": port(PortType.MASK, doc="mask to resize the same way", optional=True),
    }
    outputs = {
        "image": port(PortType.IMAGE, doc="resized frame"),
        "mask": port(PortType.MASK, doc="resized mask (all ones when no mask was given)"),
    }
    request_params = frozenset({"width", "height", "fit"})
    max_batch = 32

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[ResizeParams]) -> list[Frame]:
        return per_frame(self._fit, inputs, params)

    def _fit(self, frame: Frame, p: ResizeParams) -> Frame:
        image = frame["image"]
        width, height = target_size(image.shape[1], image.shape[0], p)
        result: Frame = {"image": fit_image(image, width, height, p.fit)}
        if "mask" in self.wanted:
            mask = frame.get("mask")
            result["mask"] = fit_image(
                np.ones(image.shape[:2], np.float32) if mask is None else mask, width, height, p.fit
            )
        return result
