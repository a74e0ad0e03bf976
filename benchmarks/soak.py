"""Soak: many clients on the tiny hybrid graph for a minute, every request counted.

    python benchmarks/soak.py [--clients 32] [--seconds 60] [--graph graphs/hybrid.yaml] [--json]

Starts a local Ray instance on 127.0.0.1, serves the graph on tiny models (64 px frames,
2 SDXL steps), warms it, then runs `--clients` closed-loop clients for `--seconds`. Reports
requests, failures by status, throughput, p50/p99/max latency, and the resident memory of
every replica process (the ingress and each node) sampled at the start and at the end of the
load, with the growth bound the run is held to. Exits 1 if any request failed or a replica
grew past the bound.

The load generator and the memory sampler are also what tests/reliability uses.
"""

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROUTE = "/v1/hybrid-depth-sdxl"
PARAMS = {"generate.steps": 2, "generate.seed": 7}
MEMORY_BOUND = (1.25, 64 << 20)
"""A replica may end the soak at most 25 % or 64 MiB above its start, whichever is larger:
a leak of one frame per request (a 256 px PNG and its arrays, about 0.5 MB) would pass that
within a few hundred requests; allocator noise and Ray's own caches stay under it."""


@dataclass(frozen=True)
class Record:
    started: float
    """Seconds since the load began."""
    seconds: float
    status: int
    """HTTP status, or 0 when no answer came (connection error, client timeout)."""
    retry_after: str | None = None
    error: str = ""


@dataclass
class Load:
    records: list[Record] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        ok = sorted(r.seconds * 1000 for r in self.records if r.status == 200)
        statuses = Counter(r.status for r in self.records)
        return {
            "requests": len(self.records),
            "failed": len(self.records) - statuses.get(200, 0),
            "statuses": dict(sorted(statuses.items())),
            "rps": len(ok) / self.wall_s if self.wall_s else 0.0,
            "p50_ms": statistics.median(ok) if ok else None,
            "p99_ms": percentile(ok, 0.99),
            "max_ms": ok[-1] if ok else None,
        }


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def request_body(size: int = 64, prompt: str = "a castle") -> dict[str, Any]:
    """One hybrid-graph request: a structured frame as base64 PNG, 2 SDXL steps."""
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)[None, :].repeat(size, axis=0)
    image = np.stack([ramp, ramp.T, np.full_like(ramp, 100)], axis=-1)
    image[size // 4 : size // 2, size // 4 : size // 2] = 255
    buf = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buf, format="PNG")
    return {"inputs": {"image": base64.b64encode(buf.getvalue()).decode(), "prompt": prompt}, "params": PARAMS}


async def run_load(
    url: str,
    body: dict[str, Any],
    clients: int,
    seconds: float,
    timeout_s: float = 120.0,
    headers: dict[str, str] | None = None,
    honour_retry_after: bool = False,
    stop: asyncio.Event | None = None,
) -> Load:
    """`clients` closed-loop clients POST `body` to `url` until `seconds` have passed (or
    `stop` is set); every request is recorded, answered or not. With `honour_retry_after`,
    a client told `Retry-After` waits that long before its next request, as a gateway would."""
    import httpx

    load = Load()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:
        start = time.monotonic()

        async def one_client() -> None:
            while time.monotonic() - start < seconds and not (stop is not None and stop.is_set()):
                began = time.monotonic()
                try:
                    reply = await client.post(url, json=body)
                    status, retry, error = (
                        reply.status_code,
                        reply.headers.get("retry-after"),
                        "" if reply.status_code == 200 else reply.text[:300],
                    )
                except httpx.HTTPError as exc:
                    status, retry, error = 0, None, f"{type(exc).__name__}: {exc}"[:300]
                load.records.append(Record(began - start, time.monotonic() - began, status, retry, error))
                if honour_retry_after and retry and retry.isdigit():
                    await asyncio.sleep(int(retry))

        await asyncio.gather(*(one_client() for _ in range(clients)))
        load.wall_s = time.monotonic() - start
    return load


def replica_memory(app: str) -> dict[str, int]:
    """Resident bytes of every Serve replica process of `app` on this machine, by
    `deployment#pid` (Ray titles replica processes `ray::ServeReplica:<app>:<deployment>`,
    with `.<method>` appended while one runs)."""
    import psutil

    found = {}
    prefix = f"ray::ServeReplica:{app}:"
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or []).strip()
        if title.startswith(prefix):
            deployment = title[len(prefix) :].split()[0].split(".")[0]
            try:
                found[f"{deployment}#{proc.info['pid']}"] = proc.memory_info().rss
            except psutil.Error:
                continue
    return dict(sorted(found.items()))


def memory_growth(
    before: dict[str, int], after: dict[str, int], middle: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """Per replica present at both samples: start and end RSS, and whether it kept in bound;
    with a `middle` sample, the growth of the second half alone (a leak keeps growing, a
    warming allocator levels off)."""
    ratio, slack = MEMORY_BOUND
    rows = []
    for name in sorted(before.keys() & after.keys()):
        limit = max(before[name] * ratio, before[name] + slack)
        row = {
            "replica": name,
            "start_mib": before[name] / 2**20,
            "end_mib": after[name] / 2**20,
            "growth_mib": (after[name] - before[name]) / 2**20,
            "within_bound": after[name] <= limit,
        }
        if middle is not None and name in middle:
            row["second_half_growth_mib"] = (after[name] - middle[name]) / 2**20
        rows.append(row)
    return rows


async def sample_memory(app: str, at_s: float) -> dict[str, int]:
    """`replica_memory(app)` taken `at_s` seconds from now (to run beside a load)."""
    await asyncio.sleep(at_s)
    return await asyncio.to_thread(replica_memory, app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default=str(ROOT / "graphs" / "hybrid.yaml"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    env = {
        "CAPGRAPH_MODELS": "tiny",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "CAPGRAPH_TINY_DIR": os.environ.get("CAPGRAPH_TINY_DIR", str(ROOT / ".capgraph" / "tiny")),
    }
    os.environ.update(env)
    import httpx
    import ray
    from ray import serve

    from capgraph.serve.app import CapabilityArgs, build

    port = _free_port()
    ray.init(
        address="local", include_dashboard=False, log_to_driver=False, namespace="soak", runtime_env={"env_vars": env}
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        print("serving the graph on tiny models…", file=sys.stderr, flush=True)
        serve.run(build(CapabilityArgs(graph=args.graph, max_pixels=128 * 128)), name="soak", route_prefix="/")
        url = f"http://127.0.0.1:{port}{ROUTE}"
        body = request_body()
        asyncio.run(run_load(url, body, args.clients, 3.0))  # connections open, batches warm
        before = replica_memory("soak")
        print(f"{args.clients} clients for {args.seconds:g} s…", file=sys.stderr, flush=True)

        async def soak() -> tuple[Load, dict[str, int]]:
            load, middle = await asyncio.gather(
                run_load(url, body, args.clients, args.seconds), sample_memory("soak", args.seconds / 2)
            )
            return load, middle

        load, middle = asyncio.run(soak())
        after = replica_memory("soak")
        healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code
    finally:
        serve.shutdown()
        ray.shutdown()
    report = load.summary() | {
        "clients": args.clients,
        "seconds": args.seconds,
        "health_after": healthy,
        "memory": memory_growth(before, after, middle),
        "memory_bound": "max(+25 %, +64 MiB)",
        "cpus": os.cpu_count(),
    }
    failures = Counter((r.status, r.error[:120]) for r in load.records if r.status != 200)
    report["failures"] = [{"status": s, "error": e, "count": n} for (s, e), n in failures.most_common(10)]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    if report["failed"] or not all(row["within_bound"] for row in report["memory"]):
        raise SystemExit(1)


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nsoak: hybrid graph, tiny models, 64 px, 2 SDXL steps, {report['clients']} clients "
        f"x {report['seconds']:g} s, {report['cpus']} CPUs, no GPU"
    )
    print(
        f"  requests {report['requests']}, failed {report['failed']} {report['statuses']}, {report['rps']:.2f} req/s, "
        f"p50 {report['p50_ms']:.0f} ms, p99 {report['p99_ms']:.0f} ms, max {report['max_ms']:.0f} ms; "
        f"/health after: {report['health_after']}"
    )
    for failure in report["failures"]:
        print(f"  failed x{failure['count']}: {failure['status']} {failure['error']}")
    print(f"  replica memory (bound {report['memory_bound']}):")
    for row in report["memory"]:
        print(
            f"    {row['replica']:32} {row['start_mib']:8.1f} MiB -> {row['end_mib']:8.1f} MiB "
            f"({row['growth_mib']:+.1f}; second half {row.get('second_half_growth_mib', float('nan')):+.1f})"
            f"{'' if row['within_bound'] else '  OVER BOUND'}"
        )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
