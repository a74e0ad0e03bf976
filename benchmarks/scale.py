"""How far the serving layer itself scales: replicas over Ray nodes, against the ideal.

    python benchmarks/scale.py [--batch 8] [--batch-ms 1000] [--seconds 8] [--ingress-replicas 1] [--json]

Starts a Ray cluster of 1 to 4 nodes in this process (`ray.cluster_utils.Cluster`, as Ray's
own Serve tests do: every node a raylet of its own on 127.0.0.1 with fake CPUs) and serves
a one-node graph of the benchmark-only `hold` family (benchmarks/hold.py): each batch of up
to `--batch` frames holds its replica `--batch-ms` on no CPU, as a GPU model would. So the
ideal throughput of R replicas is R x batch / batch time, and whatever CPU a request costs
is Serve's: the HTTP proxy (one per node with replicas, sharing the port as Ray's proxies
do), the capability's ingress (one replica unless `--ingress-replicas`) and the replicas' batchers.

For 1, 2, 4 and 8 replicas (on 1, 2, 4 and 4 nodes) a client in another process keeps
2 x replicas x batch requests in flight over HTTP on 127.0.0.1 (enough to fill every
batch and queue the next) for `--seconds` after a warm-up, and each row reports the
throughput, its ratio to the ideal (`efficiency`), p50/p99 latency (a request waits for the
batch ahead of it, so about two batch times is the floor), and the CPU seconds per request
each kind of Ray process spent (psutil over this cluster's processes): `proxy`, `ingress`,
`replicas`, `controller`, `ray` (raylets, GCS, agents), plus the client's. A last row runs
8 replicas with `batch_ms` 0: requests then cost only the serving layer, and its
throughput is `ceiling_rps`, the most the serving layer gave here; `busy` says how much of
a core each process kind used there, so the one near a whole core (an asyncio process
runs on one) is the bottleneck.

What limits it on this 2-core machine: every Ray process, the client and other users' work
share two cores, so the ceiling is the machine's CPU long before it is Serve's design
(`machine_busy` reports the share of both cores in use, everyone's). Serve spends about
20 ms of CPU on a request here (proxy ~7, ingress ~7, replica ~5), so two whole cores would
carry about 100 requests/s, and a shared pair carried 74. Hence the defaults: batch 8 of
1000 ms, 64 frames/s ideal at 8 replicas, a rate the machine carries; at 200 ms (320/s
ideal) the 8-replica row gives the same ~70/s, 0.2 of ideal. The single ingress replica
is the busiest process at the ceiling; past it a user adds ingress replicas
(`--ingress-replicas`, the builder's `ingress_replicas`) and machines, each with its own
proxy (Ray runs one per node). One run takes about 3 minutes.

`--json` prints one JSON object with `efficiency_8` (throughput over ideal at 8 replicas),
`ceiling_rps`, `cpu_ms_per_request` (Serve's own CPU per request in the ceiling row, where
the node holds nothing: proxy, ingress and replicas together; `cpu_ms_per_request_by_kind`
splits it) and the rows.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ((1, 1), (2, 2), (4, 4), (8, 4))
"""(replicas, Ray nodes)."""
CPUS_PER_NODE = 4
"""Logical CPUs each fake node advertises (the machine has 2 real ones)."""
REPLICA_CPUS = 0.5
WARMUP_S = 2.0
KINDS = ("proxy", "ingress", "replicas", "controller", "ray")
SERVE_KINDS = ("proxy", "ingress", "replicas")


def graph(replicas: int, batch: int, batch_ms: float) -> dict[str, Any]:
    """One `hold` node with its replicas, batch and CPU share written out (the planner's
    own choices would fit one machine)."""
    return {
        "capability": "hold",
        "version": "v1",
        "inputs": {"value": {"type": "number"}},
        "nodes": {
            "hold": {
                "type": "hold",
                "params": {"batch_ms": batch_ms},
                "inputs": {"value": "value"},
                "replicas": replicas,
                "resources": {"cpu": REPLICA_CPUS},
                "batch": {"max_size": batch, "wait_ms": 10},
            }
        },
        "outputs": {"value": "hold.value"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="frames per batch")
    parser.add_argument("--batch-ms", type=float, default=1000.0, help="how long a batch holds its replica")
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="measured seconds per configuration (after a warm-up)"
    )
    parser.add_argument("--ingress-replicas", type=int, default=1)
    parser.add_argument(
        "--configs", default=",".join(f"{r}x{n}" for r, n in CONFIGS), help="REPLICASxNODES,... (default: %(default)s)"
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the batch_ms 0 run")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # the load process: a JSON job on stdin
    args = parser.parse_args()
    if args.client:
        job = json.loads(sys.stdin.read())
        print(json.dumps(asyncio.run(drive(**job))))
        return
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",") if c]
    if not args.json:
        print_table(run(configs, args.batch, args.batch_ms, args.seconds, args.ingress_replicas, not args.no_ceiling))
        return
    # Ray's processes write to the stdout they inherit (a raylet's shutdown notes): point it
    # at stderr while they live, so stdout holds the one JSON object alone.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        report = run(
            configs,
            args.batch,
            args.batch_ms,
            args.seconds,
            args.ingress_replicas,
            not args.no_ceiling,
            log=lambda *_: None,
        )
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(report))


def run(
    configs: list[tuple[int, int]],
    batch: int,
    batch_ms: float,
    seconds: float,
    ingress_replicas: int,
    ceiling: bool,
    log: Any = print,
) -> dict[str, Any]:
    """Every configuration on one cluster that grows a node at a time, then the ceiling."""
    # Every process of the cluster (raylets are this process's children) finds the family;
    # a temp dir of its own keeps other Ray users on this machine off this cluster.
    temp = tempfile.mkdtemp(prefix="cgscale-")
    os.environ.update(
        {
            "CAPGRAPH_NODES": "benchmarks.hold:Hold",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "RAY_TMPDIR": temp,
        }
    )
    sys.path.insert(0, str(ROOT))
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from benchmarks.hold import Hold
    from benchmarks.soak import _free_port
    from capgraph.engine.registry import register

    register(Hold)  # the builder validates the graph in this process
    port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": CPUS_PER_NODE, "include_dashboard": False})
    rows: list[dict[str, Any]] = []
    try:
        ray.init(address=cluster.address, namespace="scale", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        nodes = 1
        runs = [(r, n, batch_ms) for r, n in sorted(configs, key=lambda c: (c[1], c[0]))]
        if ceiling:
            r, n = max(configs, key=lambda c: (c[0], c[1]))
            runs.append((r, n, 0.0))
        for replicas, want, hold_ms in runs:
            while nodes < want:
                cluster.add_node(num_cpus=CPUS_PER_NODE)
                nodes += 1
            log(
                f"{replicas} replicas on {want} node{'s' if want > 1 else ''}, "
                f"batch {batch} x {hold_ms:g} ms: deploying"
            )
            _deploy(graph(replicas, batch, hold_ms), ingress_replicas, port)
            clients = max(8, 2 * replicas * batch)
            # A whole number of batch times: completions come a batch at a time.
            window = max(1, round(seconds * 1000 / hold_ms)) * hold_ms / 1000 if hold_ms else seconds
            result = load(f"http://127.0.0.1:{port}/v1/hold", clients, window, serve_processes())
            ideal = replicas * batch * 1000 / hold_ms if hold_ms else None
            row = {
                "replicas": replicas,
                "nodes": want,
                "batch": batch,
                "batch_ms": hold_ms,
                "clients": clients,
                "ideal_rps": ideal,
                "efficiency": result["rps"] / ideal if ideal else None,
                **result,
            }
            rows.append(row)
            log(_line(row))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    eights = [r for r in rows if r["replicas"] == 8 and r["batch_ms"]]
    bare = next((r for r in rows if not r["batch_ms"]), None)  # the node's time at 0: all of it is Serve's
    return {
        "cpu_ms_per_request": sum(bare["cpu_ms_per_request"][k] for k in SERVE_KINDS) if bare else None,
        "cpu_ms_per_request_by_kind": {k: bare["cpu_ms_per_request"][k] for k in SERVE_KINDS} if bare else None,
        "cpus": os.cpu_count(),
        "batch": batch,
        "batch_ms": batch_ms,
        "seconds": seconds,
        "ingress_replicas": ingress_replicas,
        "efficiency_8": eights[-1]["efficiency"] if eights else None,
        "ceiling_rps": max((r["rps"] for r in rows), default=0.0),
        "bottleneck": _bottleneck(rows[-1]) if rows else None,
        "rows": rows,
    }


def _deploy(app_graph: dict[str, Any], ingress_replicas: int, port: int) -> None:
    import httpx
    from ray import serve

    from capgraph.serve.app import CapabilityArgs, build

    # preflight warn: today's pre-flight keys machines by IP address, and these fake nodes
    # share one, so it counts 4 nodes as one (the replicas themselves fit).
    args = CapabilityArgs(
        graph=app_graph, tuned=False, ingress_replicas=ingress_replicas, request_timeout_s=30, preflight="warn"
    )
    serve.run(build(args), name="scale", route_prefix="/")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the capability's /health is not 200 120 s after serve.operate.run")


def serve_processes(ingress: tuple[str, ...] = ("capgraph-ingress",)) -> dict[str, list[int]]:
    """This cluster's processes by kind: they are all this process's descendants. A worker
    is named by its title (`ray::ProxyActor`, `ray::ServeReplica:APP:DEPLOYMENT`...); a
    replica whose deployment is named in `ingress` is an ingress."""
    import psutil

    kinds: dict[str, list[int]] = {k: [] for k in KINDS}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "ProxyActor" in title:
            kinds["proxy"].append(proc.pid)
        elif "ServeReplica:" in title:
            kinds["ingress" if any(f":{name}" in title for name in ingress) else "replicas"].append(proc.pid)
        elif "ServeController" in title:
            kinds["controller"].append(proc.pid)
        else:
            kinds["ray"].append(proc.pid)
    return kinds


def load(url: str, clients: int, seconds: float, kinds: dict[str, list[int]]) -> dict[str, Any]:
    """The closed-loop load, from a process of its own (`--client`) so the client's CPU is
    not the driver's; it measures the cluster's CPU over exactly its measured window."""
    job = {"url": url, "clients": clients, "warmup_s": WARMUP_S, "seconds": seconds, "kinds": kinds}
    done = subprocess.run(
        [sys.executable, __file__, "--client", "-"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=WARMUP_S + seconds + 120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load client failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


async def drive(url: str, clients: int, warmup_s: float, seconds: float, kinds: dict[str, list[int]]) -> dict[str, Any]:
    import aiohttp
    import psutil

    procs = {kind: [p for p in map(process_of, pids) if p] for kind, pids in kinds.items()}
    me = psutil.Process()
    body = json.dumps({"inputs": {"value": 1.5}}).encode()
    headers = {"content-type": "application/json"}
    records: list[tuple[float, float, int]] = []
    start = time.monotonic()
    stop_at = start + warmup_s + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        while (began := time.monotonic()) < stop_at:
            try:
                async with session.post(url, data=body, headers=headers) as reply:
                    await reply.read()
                    status = reply.status
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            records.append((began, time.monotonic(), status))

    async def window() -> tuple[float, float, dict[str, float], dict[str, float], float]:
        await asyncio.sleep(warmup_s)
        t0, cpu0, mine0, busy0 = time.monotonic(), cpu_by_kind(procs), _seconds(me), _busy()
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        t1, cpu1, mine1, busy1 = time.monotonic(), cpu_by_kind(procs), _seconds(me), _busy()
        used = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
        used["client"] = mine1 - mine0
        busy = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1e-9)
        return t0, t1, used, {k: float(len(procs[k])) for k in procs}, busy

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        clocked = asyncio.ensure_future(window())
        await asyncio.gather(*(one(session) for _ in range(clients)))
        t0, t1, used, counts, busy = await clocked
    inside = [r for r in records if t0 <= r[1] <= t1]
    ok = sorted((r[1] - r[0]) * 1000 for r in inside if r[2] == 200)
    span = t1 - t0
    served = sum(used[k] for k in SERVE_KINDS)
    return {
        "rps": len(ok) / span,
        "ok": len(ok),
        "failed": len(inside) - len(ok),
        "p50_ms": statistics.median(ok) if ok else None,
        "p99_ms": _percentile(ok, 0.99),
        "cpu_ms_per_request": {k: 1000 * v / max(len(ok), 1) for k, v in used.items()},
        "serve_rps_per_cpu": len(ok) / served if served else None,
        "busy": {k: used[k] / span / max(counts.get(k, 1.0), 1.0) for k in KINDS},
        "processes": {k: int(v) for k, v in counts.items() if k != "ray"},
        "machine_busy": busy,
    }


def process_of(pid: int) -> Any:
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _seconds(proc: Any) -> float:
    try:
        times = proc.cpu_times()
    except Exception:  # gone meanwhile: it used nothing more
        return 0.0
    return times.user + times.system


def cpu_by_kind(procs: dict[str, list[Any]]) -> dict[str, float]:
    return {kind: sum(_seconds(p) for p in ps) for kind, ps in procs.items()}


def _busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, everyone's work."""
    import psutil

    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(times)
    return total - idle, total


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def _bottleneck(row: dict[str, Any]) -> str:
    """The Serve process kind busiest per process in the ceiling row, and how busy."""
    kind = max(SERVE_KINDS, key=lambda k: row["busy"][k])
    return f"{kind} ({row['busy'][kind]:.2f} of a core per process; machine {row['machine_busy']:.0%} busy)"


def _line(row: dict[str, Any]) -> str:
    eff = f"{row['efficiency']:.2f} of {row['ideal_rps']:.0f}/s" if row["ideal_rps"] else "ceiling"
    cpu = " ".join(f"{k} {row['cpu_ms_per_request'][k]:.2f}" for k in (*KINDS, "client"))
    p50, p99 = row["p50_ms"] or 0.0, row["p99_ms"] or 0.0
    return (
        f"  {row['rps']:7.1f} req/s ({eff}), p50 {p50:.0f} ms, p99 {p99:.0f} ms, {row['failed']} failed; "
        f"CPU ms/request: {cpu}; machine {row['machine_busy']:.0%} busy"
    )


def print_table(report: dict[str, Any]) -> None:
    print("\nreplicas nodes  batch_ms  clients   req/s    ideal  eff   p50 ms  p99 ms  serve ms/req  proxies  machine")
    for r in report["rows"]:
        serve_ms = sum(r["cpu_ms_per_request"][k] for k in SERVE_KINDS)
        ideal = f"{r['ideal_rps']:7.0f}" if r["ideal_rps"] else "      -"
        eff = f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "   -"
        print(
            f"{r['replicas']:8d} {r['nodes']:5d} {r['batch_ms']:9g} {r['clients']:8d} {r['rps']:7.1f} {ideal}  {eff} "
            f"{r['p50_ms'] or 0:8.0f} {r['p99_ms'] or 0:7.0f} {serve_ms:13.2f} "
            f"{r['processes']['proxy']:8d} {r['machine_busy']:7.0%}"
        )
    eff8 = report["efficiency_8"]
    print(f"\nefficiency_8 {eff8:.2f}" if eff8 is not None else "\nefficiency_8 -", end="")
    print(
        f"  ceiling_rps {report['ceiling_rps']:.1f}  bottleneck at the ceiling: {report['bottleneck']}  "
        f"({report['cpus']} CPUs)"
    )


if __name__ == "__main__":
    main()
