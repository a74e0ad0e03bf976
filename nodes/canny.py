"""Canny edges: the control image ControlNet's canny models were trained on.

Uses controlnet_aux's `CannyDetector` (OpenCV underneath). No weights; runs on the CPU.
The edge map keeps the input frame's size, so it can feed a ControlNet directly.
"""

import warnings
from collections.abc import Sequence

import numpy as np
from pydantic import Field, model_validator

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.nodes.helpers import resize


class CannyParams(NodeParams):
    low_threshold: int = Field(100, ge=0, le=255, description="hysteresis lower threshold")
    high_threshold: int = Field(200, ge=0, le=255, description="hysteresis upper threshold")
    detect_resolution: int | None = Field(
        None, ge=64, le=4096, description="short side to detect at; unset = the frame's own size"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "CannyParams":
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"low_threshold ({self.low_threshold}) must not exceed high_threshold ({self.high_threshold})"
            )
        return self


class Canny(Node):
    """Canny edge map (white edges on black) of an image, for canny ControlNets."""

    type = "canny"
    category = "condition"
    Params = CannyParams
    inputs = {"image": port(PortType.IMAGE, doc="frame to find edges in")}
    outputs = {"edges": port(PortType.IMAGE, doc="white edges on black, same size as the frame")}
    request_params = frozenset({"low_threshold", "high_threshold"})
    max_batch = 16

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        with warnings.catch_warnings():  # controlnet_aux warns about every optional extra it lacks
            warnings.simplefilter("ignore")
            from controlnet_aux.canny import CannyDetector  # 1.7 s of imports: only when used

        self.detector = CannyDetector()

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[CannyParams]) -> list[Frame]:
        out = []
        for frame, p in zip(inputs, params):
            image = frame["image"]
            height, width = image.shape[:2]
            if p.detect_resolution is None:
                # controlnet_aux rounds sides to multiples of 64 by resampling, which blurs
                # and stretches the edges; padding up to them instead keeps every pixel.
                image = np.pad(image, ((0, -height % 64), (0, -width % 64), (0, 0)), mode="edge")
            resolution = p.detect_resolution or min(image.shape[:2])
            edges = self.detector(
                image,
                low_threshold=p.low_threshold,
                high_threshold=p.high_threshold,
                detect_resolution=resolution,
                image_resolution=resolution,
                output_type="np",
            )
            if p.detect_resolution is None:
                edges = np.ascontiguousarray(edges[:height, :width])
            out.append({"edges": resize(edges, width, height, smooth=False)})
        return out
