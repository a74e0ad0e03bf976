"""A benchmark-only node family that holds its replica a fixed time per batch, on no CPU.

It stands for a GPU model: a batch of up to `max_batch` frames takes `batch_ms` whatever
its size, and the replica's CPU stays idle meanwhile (a sleep in the batch's worker
thread, as a CUDA kernel leaves the host waiting). So whatever CPU a request costs is the
serving layer's own: Ray's proxy, the capability's ingress, the replica's batcher.

Not a built-in. benchmarks/scale.py adds it to every process, Ray replicas included, with
`CAPGRAPH_NODES=benchmarks.hold:Hold` and the repository on `PYTHONPATH`
(engine/registry.py reads that variable; `serve.cluster.environment` forwards it to replicas).
"""

import time
from collections.abc import Sequence

from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port

FAMILY = "benchmarks.hold:Hold"
"""What `CAPGRAPH_NODES` names to add this family."""


class HoldParams(NodeParams):
    batch_ms: float = Field(1000.0, ge=0.0, le=60_000.0, description="how long one batch holds the replica, whatever its size")


class Hold(Node):
    """Passes its number through after holding the replica `batch_ms` per batch."""

    type = "hold"
    category = "condition"
    Params = HoldParams
    inputs = {"value": port(PortType.NUMBER, doc="any number")}
    outputs = {"value": port(PortType.NUMBER, doc="the same number")}
    max_batch = 64

    def warmup(self) -> None:
        """Warm-up holds nothing: a replica is ready at once."""

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[HoldParams]) -> list[Frame]:
        time.sleep(params[0].batch_ms / 1000 if params else 0.0)
        return [{"value": frame["value"]} for frame in inputs]
