"""What the in-process executor costs on top of calling node code directly.

A chain of N cheap nodes (about 1 ms of numpy work each on a 512x512 frame) is run through
`engine.executor.Executor` and, side by side in the same process, as plain function calls.
Prints the overhead ratio and the per-node scheduling cost. Targets: under 2 % overhead
and under 50 us per node.

    python benchmarks/engine_overhead.py [--nodes 8] [--rounds 300] [--json]
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capgraph.engine.executor import Executor  # noqa: E402
from capgraph.engine.node import Frame, Node, NodeParams  # noqa: E402
from capgraph.engine.registry import register  # noqa: E402
from capgraph.engine.types import PortType, port  # noqa: E402
from capgraph.engine.validate import plan_from_data  # noqa: E402


def work(image: np.ndarray) -> np.ndarray:
    """About a millisecond of numpy on 512x512x3: a brightness curve."""
    scaled = image.astype(np.float32)
    scaled *= 0.98
    scaled += 2.0
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8)


class Step(Node):
    """Benchmark step: one cheap numpy operation per frame."""

    type = "bench_step"
    inputs = {"image": port(PortType.IMAGE, doc="frame")}
    outputs = {"image": port(PortType.IMAGE, doc="frame")}

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[NodeParams]) -> list[Frame]:
        return [{"image": work(f["image"])} for f in inputs]


def chain(n: int) -> dict:
    nodes = {
        f"s{i}": {"type": "bench_step", "inputs": {"image": "image" if i == 0 else f"s{i - 1}.image"}} for i in range(n)
    }
    return {
        "capability": "bench-chain",
        "inputs": {"image": "image"},
        "nodes": nodes,
        "outputs": {"image": f"s{n - 1}.image"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    register(Step)
    executor = Executor(plan_from_data(chain(args.nodes)))
    executor.load()
    frame = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)

    def direct() -> np.ndarray:
        image = frame
        for _ in range(args.nodes):
            image = work(image)
        return image

    def engine() -> np.ndarray:
        return executor.run([{"image": frame}]).outputs[0]["image"]

    assert np.array_equal(direct(), engine())
    for _ in range(20):  # warm caches and the allocator
        direct(), engine()
    direct_s, engine_s = [], []
    for _ in range(args.rounds):  # interleaved, so drift hits both sides alike
        start = time.perf_counter()
        direct()
        direct_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        engine()
        engine_s.append(time.perf_counter() - start)
    d, e = statistics.median(direct_s), statistics.median(engine_s)
    result = {
        "nodes": args.nodes,
        "direct_ms": round(d * 1e3, 3),
        "executor_ms": round(e * 1e3, 3),
        "work_per_node_ms": round(d * 1e3 / args.nodes, 3),
        "overhead_ratio": round(e / d, 4),
        "overhead_pct": round((e / d - 1) * 100, 2),
        "per_node_us": round((e - d) / args.nodes * 1e6, 1),
        "targets": {"overhead_pct": 2.0, "per_node_us": 50.0},
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"chain of {args.nodes} nodes, 512x512 frames, median of {args.rounds} interleaved rounds")
    print(f"  direct calls     {result['direct_ms']:8.3f} ms  ({result['work_per_node_ms']:.3f} ms of work per node)")
    print(f"  executor         {result['executor_ms']:8.3f} ms")
    print(f"  ratio            {result['overhead_ratio']:8.4f}  ({result['overhead_pct']:+.2f} %, target < 2 %)")
    print(f"  per-node cost    {result['per_node_us']:8.1f} us  (target < 50 us)")


if __name__ == "__main__":
    main()
