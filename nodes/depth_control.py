"""Depth map to ControlNet control image: grey RGB with near = white, as depth
ControlNets were trained on. No weights.
"""

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.engine.values import gray_to_rgb
from capgraph.nodes.helpers import per_frame


class DepthControlParams(NodeParams):
    invert: bool = Field(False, description="far = white instead of near = white")
    normalize: bool = Field(True, description="stretch each map to the full [0, 1] range")
    gamma: float = Field(1.0, gt=0.05, le=10.0, description="contrast curve applied after normalising")


class DepthControl(Node):
    """Turn a DepthMap into the grey RGB control image a depth ControlNet expects."""

    type = "depth_control"
    category = "condition"
    Params = DepthControlParams
    inputs = {"depth": port(PortType.DEPTH_MAP, doc="normalised depth, near = 1")}
    outputs = {"image": port(PortType.IMAGE, doc="grey RGB control image")}
    request_params = frozenset({"invert", "gamma"})
    max_batch = 32

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[DepthControlParams]) -> list[Frame]:
        return per_frame(_control, inputs, params)


def _control(frame: Frame, p: DepthControlParams) -> Frame:
    depth = frame["depth"].astype(np.float32)
    if p.normalize:
        low, high = float(depth.min()), float(depth.max())
        if (low, high) != (0.0, 1.0):  # the depth node's maps are stretched already: no second pass over them
            depth = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    if p.invert:
        depth = 1.0 - depth
    if p.gamma != 1.0:
        depth = np.power(np.clip(depth, 0.0, 1.0), p.gamma)
    return {"image": gray_to_rgb(depth)}
