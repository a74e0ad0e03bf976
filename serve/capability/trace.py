"""Where a served request's time goes: the timestamps a frame carries from the ingress route
through each unit's replica and back. A caller that sends `x-capgraph-trace: 1` gets them,
as milliseconds per stage, in the answer's `x-capgraph-trace` header (benchmarks/serve.py).
"""

import json
import time
from dataclasses import dataclass, field
from typing import Any

TRACE_HEADER = "x-capgraph-trace"


def trace_wanted(headers: Any) -> bool:
    """Whether the caller asked for the trace (`x-capgraph-trace: 1`)."""
    return headers.get(TRACE_HEADER, "").strip() not in ("", "0")


@dataclass
class Trace:
    """One request's timestamps (`time.time()`: the replicas' clocks are the same machine's,
    or within NTP's error of it on a cluster; a stage across machines includes that error)."""

    entered: float = field(default_factory=time.time)
    """The route started: the proxy's part ends here."""
    decoded: float = 0.0
    """Body read, parsed and images decoded; params resolved."""
    dispatched: float = 0.0
    """Inputs checked and the frame sent to every unit."""
    back: float = 0.0
    """The last unit's answer arrived."""
    units: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per unit (`unit_stamps`): received, batch started, done, and its nodes' milliseconds."""

    def stages(self, finished: float) -> dict[str, float]:
        """Milliseconds per stage, from the route's start to `finished` (the answer encoded).
        For a chain of units the hops, waits and nodes add up; for units that run side by
        side, `other_ms` is what overlaps (negative) or is not accounted for."""
        hop = wait = nodes = inside = 0.0
        done_before = self.dispatched
        for stamps in sorted(self.units.values(), key=lambda s: s["received"]):
            hop += stamps["received"] - max(done_before, self.dispatched)
            wait += stamps["batch"] - stamps["received"]
            inside += stamps["done"] - stamps["batch"]
            nodes += stamps["nodes_ms"] / 1000.0
            done_before = max(done_before, stamps["done"])
        ms = {
            "decode_ms": self.decoded - self.entered,
            "checks_ms": self.dispatched - self.decoded,
            "hop_ms": hop,
            "batch_wait_ms": wait,
            "nodes_ms": nodes,
            "replica_other_ms": inside - nodes,
            "back_ms": self.back - done_before,
            "encode_ms": finished - self.back,
        }
        ms = {k: v * 1000.0 for k, v in ms.items()}
        ms["other_ms"] = (finished - self.entered) * 1000.0 - sum(ms.values())
        return {k: round(v, 3) for k, v in ms.items()}

    def header(self, finished: float) -> str:
        """The header's value: the stages plus the route's start and end (epoch seconds),
        from which the caller reckons the proxy's share of its own wall time."""
        return json.dumps(self.stages(finished) | {"entered": self.entered, "finished": finished})


def unit_stamps(received: float, batch: float, done: float, nodes_ms: float) -> dict[str, float]:
    """What a replica adds for its unit to a frame's answer (`"trace"`, by unit name)."""
    return {"received": received, "batch": batch, "done": done, "nodes_ms": nodes_ms}
