"""A test-only node family that sleeps: a node that hangs, or one whose cost is known.

Not a built-in. The reliability tests add it to every process, Ray replicas included, with
`CAPGRAPH_NODES=tests.reliability.sleepy:Sleepy` (engine/registry.py reads that variable).

`seconds` is a request param, so one request can hang while the others run at once; the
sleep is per batch (the longest of its frames), as a stuck kernel would hold its batch.
The image passes through unchanged. No weights, no GPU. benchmarks/hold.py reuses it.
"""

import time
from collections.abc import Sequence

from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port

FAMILY = "tests.reliability.sleepy:Sleepy"
"""What `CAPGRAPH_NODES` names to add this family."""


class SleepyParams(NodeParams):
    seconds: float = Field(0.0, ge=0.0, le=120.0, description="how long a batch holding this frame sleeps")


class Sleepy(Node):
    """Passes the image through after sleeping `seconds` (the longest of its batch)."""

    type = "sleepy"
    category = "condition"
    Params = SleepyParams
    inputs = {"image": port(PortType.IMAGE, doc="any frame")}
    outputs = {"image": port(PortType.IMAGE, doc="the same frame")}
    request_params = frozenset({"seconds"})
    max_batch = 8

    def warmup(self) -> None:
        """Warm-up must not sleep: a graph that asks for a slow default still loads at once."""

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[NodeParams]) -> list[Frame]:
        time.sleep(max((self.seconds(p) for p in params), default=0.0))
        return [{name: frame[name] for name in self.outputs} for frame in inputs]  # inputs pass through

    @staticmethod
    def seconds(params: NodeParams) -> float:
        """How long a batch holding a frame with these params sleeps (benchmarks/hold.py reads its own param)."""
        return params.seconds  # type: ignore[attr-defined]
