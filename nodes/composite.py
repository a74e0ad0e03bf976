"""Mask compositing: blend a foreground over a background through a mask.

The step after segmentation or SAM2 in an inpainting-style graph: keep the person from
the original frame and take the rest from the generated one (or the reverse with
`invert`). `feather` softens the mask edge so the seam does not show. No weights.
"""

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.nodes.helpers import per_frame, resize


class CompositeParams(NodeParams):
    feather: float = Field(0.0, ge=0.0, le=64.0, description="Gaussian blur radius of the mask edge, in pixels")
    invert: bool = Field(False, description="use the background where the mask is 1")
    opacity: float = Field(1.0, ge=0.0, le=1.0, description="how strongly the foreground covers the background")


class Composite(Node):
    """Blend `foreground` over `background` where `mask` is 1; sizes follow the foreground."""

    type = "composite"
    category = "condition"
    Params = CompositeParams
    inputs = {
        "foreground": port(PortType.IMAGE, doc="image shown where the mask is 1"),
        "background": port(PortType.IMAGE, doc="image shown where the mask is 0"),
        "mask": port(PortType.MASK, doc="blend weights in [0, 1]"),
    }
    outputs = {
        "image": port(PortType.IMAGE, doc="the blend"),
        "mask": port(PortType.MASK, doc="the mask actually used (feathered, inverted)"),
    }
    request_params = frozenset({"feather", "invert", "opacity"})
    max_batch = 32

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[CompositeParams]) -> list[Frame]:
        return per_frame(_blend, inputs, params)


def _blend(frame: Frame, p: CompositeParams) -> Frame:
    fg = frame["foreground"]
    height, width = fg.shape[:2]
    bg = resize(frame["background"], width, height)
    mask = resize(frame["mask"].astype(np.float32), width, height)
    if p.invert:
        mask = 1.0 - mask
    if p.feather > 0:
        mask = _blur(mask, p.feather)
    weight = (np.clip(mask, 0.0, 1.0) * p.opacity)[..., None]
    blend = fg.astype(np.float32) * weight + bg.astype(np.float32) * (1.0 - weight)
    return {"image": (blend + 0.5).astype(np.uint8), "mask": weight[..., 0]}


def _blur(mask: np.ndarray, radius: float) -> np.ndarray:
    import cv2  # OpenCV comes with controlnet_aux; PIL cannot blur float images

    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=radius, borderType=cv2.BORDER_REPLICATE)
