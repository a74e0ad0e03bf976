"""What one ingress replica saw of the frames it ran of late, node by node: frames per
second, latency percentiles, mean batch size, queue wait and failed frames (the console's
live figures), from the measurements every frame's answer carries.
"""

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

WINDOW_S = 30.0
"""Latency percentiles, batch sizes and recent failures cover this many seconds."""
RATE_S = 5.0
"""Frames per second are counted over this many seconds: quick to show a stall."""
MAX_SAMPLES = 20_000
"""Frames kept per node: the window's, up to this many (a bound on memory at high rates)."""


class Traffic:
    """Each node's recent frames `(when, ms, batch, queue_ms)` and failures."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.frames: dict[str, deque[tuple[float, float, int, float | None]]] = {}
        self.failures: dict[str, deque[float]] = {}
        self.skips: dict[str, deque[float]] = {}
        """When each node was skipped (a branch: its `when:` did not hold), over the window."""
        self.failed: dict[str, int] = {}
        """Failed frames per node since the ingress started; `""`: no node to blame (a
        replica died, the graph timed out)."""

    def frame(self, meta: Mapping[str, Mapping[str, float]], skipped: Iterable[str] = ()) -> None:
        """One answered frame: each node's `{"ms", "batch", "queue_ms"?}` as the replicas sent it,
        and the nodes skipped for it."""
        now = self.clock()
        for node_id in skipped:
            self.skips.setdefault(node_id, deque(maxlen=MAX_SAMPLES)).append(now)
        for node_id, m in meta.items():
            samples = self.frames.setdefault(node_id, deque(maxlen=MAX_SAMPLES))
            samples.append((now, float(m["ms"]), max(1, int(m["batch"])), m.get("queue_ms")))

    def failure(self, node_id: str | None) -> None:
        """One frame failed, at `node_id` (None: the capability as a whole)."""
        key = node_id or ""
        self.failed[key] = self.failed.get(key, 0) + 1
        self.failures.setdefault(key, deque(maxlen=MAX_SAMPLES)).append(self.clock())

    def summary(self, node_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Per node: `fps` (last RATE_S), `p50_ms`, `p99_ms`, `batch_mean`, `queue_p50_ms`
        and `frames` (last WINDOW_S; None where no frame passed), `failed` (since start)
        and `failed_recent` (last WINDOW_S), `skipped` (frames that skipped it, last WINDOW_S).
        Old samples are dropped on the way."""
        now = self.clock()
        span = max(1e-3, min(RATE_S, now - self.started))
        return {node_id: self._one(node_id, now, span) for node_id in node_ids}

    def _one(self, node_id: str, now: float, span: float) -> dict[str, Any]:
        samples = self.frames.get(node_id, deque())
        while samples and samples[0][0] < now - WINDOW_S:
            samples.popleft()
        failures = self.failures.get(node_id, deque())
        while failures and failures[0] < now - WINDOW_S:
            failures.popleft()
        skips = self.skips.get(node_id, deque())
        while skips and skips[0] < now - WINDOW_S:
            skips.popleft()
        latencies = sorted(s[1] for s in samples)
        waits = sorted(s[3] for s in samples if s[3] is not None)
        recent = sum(1 for s in samples if s[0] >= now - RATE_S)
        return {
            "fps": round(recent / span, 2),
            "p50_ms": _rank(latencies, 0.50),
            "p99_ms": _rank(latencies, 0.99),
            "batch_mean": round(len(samples) / sum(1.0 / s[2] for s in samples), 2) if samples else None,
            "queue_p50_ms": _rank(waits, 0.50),
            "frames": len(samples),
            "failed": self.failed.get(node_id, 0),
            "failed_recent": len(failures),
            "skipped": len(skips),
        }


def _rank(ordered: list[float], q: float) -> float | None:
    """The nearest-rank percentile of sorted values; None for none."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1], 2)
