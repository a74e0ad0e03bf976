"""Image decode and encode: bytes <-> frames, at the edges of a graph.

`decode` turns PNG/JPEG/WebP bytes into an Image (refusing decompression bombs before
decoding); `encode` turns an Image into PNG or JPEG bytes. Placed in the graph they move
codec work into a node replica instead of the HTTP ingress. No weights.
"""

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams, example_value
from capgraph.engine.types import PortType, port
from capgraph.engine.values import MAX_PIXELS, decode_image, encode_image


class DecodeParams(NodeParams):
    max_pixels: int = Field(MAX_PIXELS, ge=1, le=1 << 28, description="refuse images with more pixels than this")


class Decode(Node):
    """Decode PNG, JPEG or WebP bytes into an RGB image."""

    type = "decode"
    category = "io"
    Params = DecodeParams
    inputs = {"data": port(PortType.BYTES, doc="encoded image file")}
    outputs = {"image": port(PortType.IMAGE, doc="decoded RGB frame")}
    max_batch = 32

    def example_inputs(self) -> Frame:
        return {"data": encode_image(example_value(PortType.IMAGE))}

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[DecodeParams]) -> list[Frame]:
        return [
            {"image": decode_image(f["data"], f"{self.node_id}.data", p.max_pixels)} for f, p in zip(inputs, params)
        ]


class EncodeParams(NodeParams):
    format: Literal["png", "jpeg"] = Field("png", description="file format")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality")


class Encode(Node):
    """Encode an RGB image as PNG or JPEG bytes."""

    type = "encode"
    category = "io"
    Params = EncodeParams
    inputs = {"image": port(PortType.IMAGE, doc="frame to encode")}
    outputs = {"data": port(PortType.BYTES, doc="encoded image file")}
    request_params = frozenset({"format", "quality"})
    max_batch = 32

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[EncodeParams]) -> list[Frame]:
        return [{"data": encode_image(f["image"], p.format, p.quality)} for f, p in zip(inputs, params)]
