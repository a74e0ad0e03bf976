"""A benchmark-only node family that holds its replica a fixed time per batch, on no CPU.

It stands for a GPU model: a batch of up to `max_batch` frames takes `batch_ms` whatever
its size, and the replica's CPU stays idle meanwhile (a sleep in the batch's worker
thread, as a CUDA kernel leaves the host waiting). So whatever CPU a request costs is the
serving layer's own: Ray's proxy, the capability's ingress, the replica's batcher.

Not a built-in. benchmarks/scale.py adds it to every process, Ray replicas included, with
`CAPGRAPH_NODES=benchmarks.hold:Hold` and the repository on `PYTHONPATH`
(engine/registry.py reads that variable; `serve.cluster.environment` forwards it to replicas).
The sleeping pass-through is tests/reliability/sleepy.py's, so the repository root must be importable.
"""

from pydantic import Field

from capgraph.engine.node import NodeParams
from capgraph.engine.types import PortType, port
from tests.reliability.sleepy import Sleepy

FAMILY = "benchmarks.hold:Hold"
"""What `CAPGRAPH_NODES` names to add this family."""


class HoldParams(NodeParams):
    batch_ms: float = Field(
        1000.0, ge=0.0, le=60_000.0, description="how long one batch holds the replica, whatever its size"
    )


class Hold(Sleepy):
    """Passes its number through after holding the replica `batch_ms` per batch."""

    type = "hold"
    Params = HoldParams
    inputs = {"value": port(PortType.NUMBER, doc="any number")}
    outputs = {"value": port(PortType.NUMBER, doc="the same number")}
    request_params = frozenset()
    max_batch = 64

    @staticmethod
    def seconds(params: NodeParams) -> float:
        return params.batch_ms / 1000  # type: ignore[attr-defined]
