"""The hybrid graph on Ray Serve, side by side in one run, on tiny models.

    python benchmarks/serve.py [--graph graphs/hybrid.yaml] [--requests 48] [--json]

Measures, on the same machine and the same frames (64 px, 2 SDXL steps):

- requests/s and p50/p99 latency over HTTP at concurrency 1, 8 and 32, batching on and
  off (every call alone), and the graph fused into one deployment;
- the in-process executor (PNG decode, graph, PNG encode, one frame at a time, and
  batches of 8) as the no-distribution baseline: Serve's cost in ms and as a ratio, and
  the cost of one hop between deployments, from unfused minus fused at concurrency 1
  divided by the hops fusion removes;
- cold start: `serve run GRAPH` from process start to the proxy answering and to
  /health 200 (every node loaded and warm), unfused and fused.

Prints one table. CAPGRAPH_MODELS=tiny and HF_HUB_OFFLINE=1 are set for you; the tiny
models are built on first use under CAPGRAPH_TINY_DIR (default .capgraph/tiny).
"""

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENV = {"CAPGRAPH_MODELS": "tiny", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
       "CAPGRAPH_TINY_DIR": os.environ.get("CAPGRAPH_TINY_DIR", str(ROOT / ".capgraph" / "tiny")), "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(ENV)
PARAMS = {"generate.steps": 2}
CONCURRENCY = (1, 8, 32)
SCENARIOS = (
    ("batching on", {}, CONCURRENCY),
    ("batching off", {"batching": False}, CONCURRENCY),
    ("fused", {"fuse": "all"}, CONCURRENCY),
    ("fused, batching off", {"fuse": "all", "batching": False}, (1,)),
)
"""Label, CapabilityArgs options, concurrency levels. The unbatched pair isolates the
cost of a hop: with batching on, every unfused node also adds its batch wait at c=1."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_frame(size: int = 64) -> np.ndarray:
    ramp = np.linspace(0, 255, size, dtype=np.float32)[None, :].repeat(size, axis=0)
    image = np.stack([ramp, ramp.T, np.full_like(ramp, 100)], axis=-1)
    image[size // 4 : size // 2, size // 4 : size // 2] = 255
    return image.astype(np.uint8)


def stats(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies_s)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return {"rps": len(ms) / wall_s, "p50_ms": statistics.median(ms), "p99_ms": p99, "n": len(ms)}


# -- in-process baseline -----------------------------------------------------------------


def executor_baseline(graph: str, requests: int) -> dict[str, dict[str, float]]:
    from engine.executor import Executor
    from engine.validate import load_plan
    from engine.values import decode_image, encode_image

    plan = load_plan(graph)
    executor = Executor(plan)
    executor.load()
    data = png(test_frame())
    out_name = next(iter(plan.outputs))

    def one(count: int) -> None:
        frames = [{"image": decode_image(data), "prompt": "a castle"} for _ in range(count)]
        result = executor.run(frames, PARAMS)
        for outputs in result.outputs:
            base64.b64encode(encode_image(outputs[out_name]))

    one(1)
    latencies = []
    start = time.perf_counter()
    for _ in range(requests):
        t = time.perf_counter()
        one(1)
        latencies.append(time.perf_counter() - t)
    single = stats(latencies, time.perf_counter() - start)
    batches, latencies = max(1, requests // 8), []
    start = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        one(8)
        latencies.append(time.perf_counter() - t)
    batched = stats(latencies, time.perf_counter() - start)
    batched["rps"] *= 8
    return {"c1": single, "b8": batched}


# -- Serve --------------------------------------------------------------------------------


async def load(url: str, concurrency: int, requests: int, body: dict[str, Any]) -> tuple[dict[str, float], float]:
    """`requests` POSTs from `concurrency` workers, after a short warm-up at the same
    concurrency; returns stats and the mean batch size of the generate node (from the
    x-capgraph-batch-sizes header)."""
    import httpx

    async def fire(client: httpx.AsyncClient, count: int) -> tuple[list[float], list[int], float]:
        latencies: list[float] = []
        batches: list[int] = []
        remaining = list(range(count))

        async def worker() -> None:
            while remaining:
                remaining.pop()
                t = time.perf_counter()
                reply = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t)
                if reply.status_code != 200:
                    raise RuntimeError(f"{reply.status_code}: {reply.text[:300]}")
                sizes = dict(p.split("=") for p in reply.headers.get("x-capgraph-batch-sizes", "").split(",") if "=" in p)
                batches.append(int(sizes.get("generate", max(map(int, sizes.values()), default=1))))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, batches, time.perf_counter() - start

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await fire(client, concurrency)  # connections open, batcher warm
        latencies, batches, wall = await fire(client, requests)
    return stats(latencies, wall), statistics.mean(batches)


def serve_runs(graph: str, requests: int) -> dict[str, Any]:
    import ray
    from ray import serve

    from serve.app import CapabilityArgs, build
    from engine.validate import load_plan

    capability = load_plan(graph).capability
    port = free_port()
    ray.init(namespace="serve", include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": ENV})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    body = {"inputs": {"image": base64.b64encode(png(test_frame())).decode(), "prompt": "a castle"}, "params": PARAMS}
    results: dict[str, Any] = {}
    try:
        for label, options, levels in SCENARIOS:
            print(f"  serve: {label}…", file=sys.stderr, flush=True)
            serve.run(build(CapabilityArgs(graph=graph, **options)), name="bench", route_prefix="/")
            for c in levels:
                n = max(requests // 2, 8) if c == 1 else requests * (2 if c == 32 else 1)
                measured, batch = asyncio.run(load(f"http://127.0.0.1:{port}/v1/{capability}", c, n, body))
                results[f"{label} c{c}"] = measured | {"batch": batch}
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def cold_start(graph: str, fused: bool) -> dict[str, float]:
    """`serve run` on the graph file from process start to the proxy up and to /health 200."""
    import httpx

    port = free_port()
    text = Path(graph).read_text()
    if fused:
        text = text.replace("    args:\n", "    args:\n      fuse: all\n", 1)
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / Path(graph).name
        config.write_text(text + f"\nhttp_options: {{host: 127.0.0.1, port: {port}}}\n")
        env = {k: v for k, v in (os.environ | ENV).items() if k != "RAY_ADDRESS"}
        start = time.monotonic()
        proc = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", str(config)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        proxy = healthy = None
        try:
            while time.monotonic() - start < 300 and healthy is None:
                try:
                    if proxy is None and httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=2).status_code == 200:
                        proxy = time.monotonic() - start
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                        healthy = time.monotonic() - start
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return {"proxy_s": proxy or float("nan"), "healthy_s": healthy or float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default=str(ROOT / "graphs" / "hybrid.yaml"))
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement at concurrency 8 (x2 at 32, /2 at 1)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = parser.parse_args()

    print("cold start (serve run, unfused then fused)…", file=sys.stderr, flush=True)
    cold = {"unfused": cold_start(args.graph, False), "fused": cold_start(args.graph, True)}
    print("in-process executor…", file=sys.stderr, flush=True)
    local = executor_baseline(args.graph, max(args.requests // 2, 8))
    print("Ray Serve…", file=sys.stderr, flush=True)
    served = serve_runs(args.graph, args.requests)
    report = {"cold_start": cold, "executor": local, "serve": served, "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    served, local, cold = report["serve"], report["executor"], report["cold_start"]
    rows = [("in-process executor", "1", local["c1"], None), ("in-process executor, batches of 8", "8", local["b8"], 8.0)]
    for label, _, levels in SCENARIOS:
        for c in levels:
            m = served[f"{label} c{c}"]
            rows.append((f"Ray Serve, {label}", str(c), m, m["batch"]))
    print(f"\nhybrid graph, tiny models, 64 px frames, 2 SDXL steps, {report['cpus']} CPUs, no GPU")
    print(f"{'what':44} {'conc':>4} {'req/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'batch':>6}")
    for label, c, m, batch in rows:
        shown = f"{batch:6.2f}" if batch is not None else f"{'':>6}"
        print(f"{label:44} {c:>4} {m['rps']:8.2f} {m['p50_ms']:9.1f} {m['p99_ms']:9.1f} {shown}")
    hops = 6 - 2  # unfused: ingress -> fit -> depth -> control -> generate -> upscale -> ingress; fused: ingress -> unit -> ingress
    derived = [
        *(f"batching on / off, throughput at c={c}: {served[f'batching on c{c}']['rps'] / served[f'batching off c{c}']['rps']:.2f}x"
          for c in CONCURRENCY),
        f"Ray Serve (batching off) / executor, p50 at c=1: {served['batching off c1']['p50_ms'] / local['c1']['p50_ms']:.2f}x "
        f"(+{served['batching off c1']['p50_ms'] - local['c1']['p50_ms']:.1f} ms: HTTP and proxy, ingress, {hops + 2} hops)",
        f"Ray Serve (batching on) / executor, p50 at c=1: {served['batching on c1']['p50_ms'] / local['c1']['p50_ms']:.2f}x "
        f"(each batching node also waits its batch.wait_ms when alone)",
        f"one hop between deployments: {(served['batching off c1']['p50_ms'] - served['fused, batching off c1']['p50_ms']) / hops:.1f} ms "
        f"(unfused - fused p50 at c=1, batching off, over the {hops} hops fusion removes)",
        *(f"fused / unfused, throughput at c={c}: {served[f'fused c{c}']['rps'] / served[f'batching on c{c}']['rps']:.2f}x" for c in CONCURRENCY),
        f"cold start, serve run -> /health 200: unfused {cold['unfused']['healthy_s']:.1f} s "
        f"(proxy up at {cold['unfused']['proxy_s']:.1f} s), fused {cold['fused']['healthy_s']:.1f} s (proxy up at {cold['fused']['proxy_s']:.1f} s)",
    ]
    for line in derived:
        print(f"  {line}")


if __name__ == "__main__":
    main()
