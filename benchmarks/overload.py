"""Overload: how fast a full capability refuses, and how long the requests it accepts wait.

    python benchmarks/overload.py [--clients 32] [--seconds 8] [--json]

Starts a local Ray instance on 127.0.0.1 and serves the graph tests/reliability/test_overload.py
uses: one test-only `sleepy` node (0.25 s a frame, no batching: 4 frames a second) behind
an ingress that admits 6 graph requests at once (`max_concurrency` 8). `--clients`
closed-loop clients then send frames for `--seconds`, waiting `Retry-After` when refused,
as a gateway would. Reports, side by side from one run:

- refusals (503 with Retry-After): count, p50/p99 latency, and p99 as a ratio to one
  frame's time (they come before the body is read, so well under one frame);
- accepted frames: count, p50/p99 latency, and p99 as a ratio to the queue bound, the time
  the 6 admitted frames ahead and the frame itself take (7 x 0.25 s): without admission,
  32 clients would wait 32 frames.

These figures depend on the machine's load, which is why they live here and not in a test.
`--json` prints one JSON object with `refusal_p99_s`, `refusal_p99_over_frame`,
`accepted_p99_s` and `accepted_p99_over_bound`.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FRAME_S = 0.25
MAX_CONCURRENCY = 8
ADMITTED = MAX_CONCURRENCY * 3 // 4
"""The ingress admits three quarters of `max_concurrency` (serve/capability/ingress.py)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from benchmarks.soak import _free_port, percentile, run_load
    from tests.reliability.sleepy import FAMILY, Sleepy
    from tests.reliability.support import frame, nap_graph, png_b64

    env = {"RAY_USAGE_STATS_ENABLED": "0", "CAPGRAPH_NODES": FAMILY}
    os.environ.update(env)
    import ray
    from ray import serve

    from capgraph.engine.registry import register
    from capgraph.serve.app import CapabilityArgs, build

    register(Sleepy)
    graph = nap_graph(capability="busy", seconds=FRAME_S)
    graph["nodes"]["nap"]["batch"] = {"max_size": 1, "wait_ms": 0}
    port = _free_port()
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        namespace="overload",
        runtime_env={"env_vars": env},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            build(CapabilityArgs(graph=graph, tuned=False, max_concurrency=MAX_CONCURRENCY, request_timeout_s=30)),
            name="busy",
            route_prefix="/busy",
        )
        url = f"http://127.0.0.1:{port}/busy/v1/busy"
        body = {"inputs": {"image": png_b64(frame(16, 16))}}
        load = asyncio.run(run_load(url, body, args.clients, args.seconds, timeout_s=30, honour_retry_after=True))
    finally:
        serve.shutdown()
        ray.shutdown()

    accepted = sorted(r.seconds for r in load.records if r.status == 200)
    refused = sorted(r.seconds for r in load.records if r.status == 503)
    bound = (ADMITTED + 1) * FRAME_S
    report: dict[str, Any] = {
        "clients": args.clients,
        "seconds": args.seconds,
        "frame_s": FRAME_S,
        "admitted": ADMITTED,
        "cpus": os.cpu_count(),
        "accepted": len(accepted),
        "refused": len(refused),
        "others": sum(1 for r in load.records if r.status not in (200, 503)),
        "refusal_p50_s": statistics.median(refused) if refused else None,
        "refusal_p99_s": percentile(refused, 0.99),
        "accepted_p50_s": statistics.median(accepted) if accepted else None,
        "accepted_p99_s": percentile(accepted, 0.99),
        "queue_bound_s": bound,
    }
    report["refusal_p99_over_frame"] = report["refusal_p99_s"] / FRAME_S if refused else None
    report["accepted_p99_over_bound"] = report["accepted_p99_s"] / bound if accepted else None
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"\noverload: {args.clients} clients x {args.seconds:g} s on a {1 / FRAME_S:g} frame/s graph "
        f"admitting {ADMITTED}, {report['cpus']} CPUs"
    )
    print(
        f"  refused {len(refused)} (503 + Retry-After): p50 {report['refusal_p50_s']:.3f} s, "
        f"p99 {report['refusal_p99_s']:.3f} s = {report['refusal_p99_over_frame']:.2f} x one frame"
    )
    print(
        f"  accepted {len(accepted)}: p50 {report['accepted_p50_s']:.2f} s, p99 {report['accepted_p99_s']:.2f} s "
        f"= {report['accepted_p99_over_bound']:.2f} x the queue bound ({bound:g} s); other statuses: {report['others']}"
    )


if __name__ == "__main__":
    main()
