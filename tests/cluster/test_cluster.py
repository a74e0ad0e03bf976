"""A graph served across a Ray cluster of three machines (tests/cluster/conftest.py), as an
operator would: `serve deploy` as the README says, `capgraph plan --address` showing where
each replica would land, `capgraph serve --address` joining the cluster with the settings
of the shell it runs in, replicas spread over the machines, and a machine lost under load."""

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.soak import run_load
from tests.cluster.conftest import Served
from tests.cluster.raycluster import SERVE
from tests.conftest import GRAPHS
from tests.livepeer.lp_support import wait_for
from tests.reliability.support import probe_health
from tests.serve.support import frame, png_b64, wait_health

pytestmark = pytest.mark.slow
CAPGRAPH = [sys.executable, "-m", "capgraph"]


def spread_graph(tmp_path: Path) -> Path:
    """Depth with two replicas of half a GPU each: Ray spreads them over the two workers."""
    graph = yaml.safe_load((GRAPHS / "depth.yaml").read_text())
    graph.pop("applications")
    graph["capability"] = "spread"
    graph["nodes"]["depth"] |= {
        "replicas": 2,
        "resources": {"gpu": 0.5, "cpu": 0.5},
        "batch": {"max_size": 4, "wait_ms": 5},
    }
    path = tmp_path / "spread.yaml"
    path.write_text(yaml.safe_dump(graph))
    return path


def body() -> dict:
    return {"inputs": {"image": png_b64(frame())}}


def state(served: Served, query: str) -> list[dict]:
    """Rows of Ray's state API on the head (`nodes?...`, `actors?...`), with the cluster's token."""
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    reply = httpx.get(
        f"{served.cluster.dashboard}/api/v0/{query}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return reply.json()["data"]["result"]["result"]


def replicas_by_machine(served: Served, deployment: str) -> dict[str, int]:
    """Running replicas of `deployment` per machine (`machine_b`, `machine_c`), from Ray's state API."""
    machine = {
        n["node_id"]: next((k for k in n["resources_total"] if k.startswith("machine_")), "head")
        for n in state(served, "nodes?limit=100&detail=1")
    }
    found: dict[str, int] = {}
    for actor in state(
        served, "actors?limit=1000&detail=1&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
    ):
        if actor["class_name"].startswith("ServeReplica:") and actor["class_name"].endswith(f":{deployment}"):
            where = machine.get(actor["node_id"], "?")
            found[where] = found.get(where, 0) + 1
    return found


def test_serve_deploy_as_the_readme_says(three_machines: Served):
    """`serve deploy graphs/depth.yaml --address http://HEAD:8265` with Ray's token
    authentication on, the file unchanged. The workers were started without the tiny-model
    settings: the replicas there get them from the application."""
    deployed = subprocess.run(
        [SERVE, "deploy", str(GRAPHS / "depth.yaml"), "--address", three_machines.cluster.dashboard],
        env=three_machines.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deployed.returncode == 0, deployed.stderr
    try:
        wait_health(three_machines.url, 180)
        reply = httpx.post(f"{three_machines.url}/v1/depth", json=body(), timeout=60)
        assert reply.status_code == 200, reply.text
        assert sum(replicas_by_machine(three_machines, "depth").values()) == 1
        assert "head" not in replicas_by_machine(three_machines, "depth")  # the head holds no replica
    finally:
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import ray; from ray import serve; ray.init(address={three_machines.cluster.address!r}, "
                "log_to_driver=False); serve.delete('depth')",
            ],
            env=three_machines.env,
            timeout=120,
        )


def test_capgraph_plan_shows_the_machine_each_replica_lands_on(three_machines: Served, tmp_path: Path):
    planned = subprocess.run(
        [*CAPGRAPH, "plan", str(spread_graph(tmp_path)), "--address", three_machines.cluster.address, "--json"],
        env=three_machines.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert planned.returncode == 0, planned.stderr
    summary = json.loads(planned.stdout)
    assert summary["cluster"] == "2 GPU and 4 CPU on 3 machines"
    depth = [p for p in summary["placement"] if p["deployment"] == "depth"]
    assert len({p["machine"] for p in depth}) == 2 and all(p["gpus"] == [{"index": 0, "fraction": 0.5}] for p in depth)
    assert "joined the Ray cluster" in planned.stderr


def test_capgraph_serve_joins_the_cluster_spreads_and_survives_losing_a_machine(three_machines: Served, tmp_path: Path):
    """Served from a shell whose settings the workers lack (a tiny-model folder of its own):
    the replicas build their tiny models there, on both workers. Then the machine holding
    one depth replica (and not the ingress) dies under load: the frames it held fail at once
    with a retryable 503, /health names the node, Ray places a replacement on the machine
    left, and /health comes back to 200. When the machine returns, one replica moves back
    to it under load, with /health at 200 and no frame lost."""
    tiny = tmp_path / "tiny"
    server, text = start_serving(three_machines, [spread_graph(tmp_path)], tiny, "is healthy after")
    try:
        assert "joined the Ray cluster at 127.0.0.1:" in text and "2 GPU and 4 CPU on 3 machines" in text, text[-3000:]
        assert "is healthy after" in text, text[-3000:]
        assert (tiny / "v2").is_dir()  # built on the workers from the shell's setting, not the head's
        assert replicas_by_machine(three_machines, "depth") == {"machine_b": 1, "machine_c": 1}
        ingress = replicas_by_machine(three_machines, "capgraph-ingress")
        victim = "c" if "machine_b" in ingress else "b"
        _lose_a_machine_under_load(three_machines, victim)
        three_machines.cluster.restart(victim)
        wait_for(lambda: f"machine_{victim}" in _machines(three_machines), timeout=60, every=0.5)  # the machine is back
        _spread_again_under_load(three_machines)
    finally:
        rest = stop_serving(server)
    assert "disconnecting from the Ray cluster" in rest
    served = httpx.get(f"{three_machines.url}/-/routes", timeout=10).json()
    assert served == {}  # its application is gone; the cluster and Serve stay up


def start_serving(served: Served, graphs: list[Path], tiny: Path, healthy: str) -> tuple[subprocess.Popen, str]:
    """`capgraph serve GRAPHS --address` on the head's proxy port, from a shell whose
    tiny-model folder is `tiny` (the workers have none): the process, and what it printed
    up to the line saying `healthy` (or until it exited)."""
    port = int(served.url.rsplit(":", 1)[1])
    env = served.env | {"CAPGRAPH_TINY_DIR": str(tiny)}
    server = subprocess.Popen(
        [*CAPGRAPH, "serve", *map(str, graphs), "--address", served.cluster.address, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    for line in server.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if healthy in line or server.poll() is not None:
            break
    return server, "".join(lines)


def stop_serving(server: subprocess.Popen) -> str:
    """Ctrl-C, as a user stops it: it must exit 0. Returns what it printed on the way out."""
    server.send_signal(signal.SIGINT)
    rest, _ = server.communicate(timeout=120)
    assert server.returncode == 0, rest[-3000:]
    return rest


def _machines(served: Served) -> set[str]:
    nodes = state(served, "nodes?limit=100&detail=1")
    return {k for n in nodes if n["state"] == "ALIVE" for k in n["resources_total"] if k.startswith("machine_")}


def _lose_a_machine_under_load(served: Served, victim: str) -> None:
    url = served.url
    probes: list[tuple[float, int, str]] = []
    lost: list[float] = []

    async def scenario():
        start = time.monotonic()

        def probe():
            return probe_health(url, start, probes, lambda: time.monotonic() - start < 25)

        async def lose():
            await asyncio.sleep(3.0)
            lost.append(time.monotonic() - start)
            await asyncio.to_thread(served.cluster.lose, victim)

        load, *_ = await asyncio.gather(run_load(url + "/v1/spread", body(), 4, 25.0, timeout_s=90), probe(), lose())
        return load

    load = asyncio.run(scenario())
    lost_at = lost[0]
    down = [(t, text) for t, status, text in probes if t > lost_at and status == 503]
    back = next((t for t, status, _ in probes if down and t > down[0][0] and status == 200), None)
    failed = [r for r in load.records if r.status != 200]
    print(
        f"\nlost machine {victim}: {len(load.records)} requests, {len(failed)} failed "
        f"({sorted({r.status for r in failed})}, in {[round(r.seconds, 2) for r in failed]} s); "
        f"/health 503 {down[0][0] - lost_at if down else float('nan'):.1f} s "
        f"after, 200 again {(back - lost_at) if back else float('nan'):.1f} s after"
    )
    assert down, "health never turned 503 after the machine was lost"
    assert "depth" in down[0][1]  # names the node that lost a replica
    for record in failed:  # only frames the lost replica held: refused at once, retryable
        assert record.status == 503 and record.retry_after == "1", record
        assert record.seconds < 15, record
    assert all(r.seconds < 60 for r in load.records)  # none waited for its timeout
    if back is None:
        wait_health(url, 90)
    assert replicas_by_machine(served, "depth") == {f"machine_{'b' if victim == 'c' else 'c'}": 2}
    for _ in range(3):
        assert httpx.post(url + "/v1/spread", json=body(), timeout=60).status_code == 200


def _spread_again_under_load(served: Served) -> None:
    """The returned machine has a free GPU, the other holds both depth replicas (its GPU
    full): the newer replica moves, Ray drains it and starts its replacement there."""
    url = served.url
    probes: list[tuple[float, int, str]] = []
    spread: list[float] = []
    stop = asyncio.Event()

    async def scenario():
        start = time.monotonic()

        async def watch():
            while time.monotonic() - start < 150:
                if await asyncio.to_thread(replicas_by_machine, served, "depth") == {"machine_b": 1, "machine_c": 1}:
                    spread.append(time.monotonic() - start)
                    await asyncio.sleep(3.0)  # a little load on the replica that moved
                    break
                await asyncio.sleep(1.0)
            stop.set()

        load, *_ = await asyncio.gather(
            run_load(url + "/v1/spread", body(), 2, 160.0, timeout_s=90, stop=stop),
            probe_health(url, start, probes, lambda: not stop.is_set(), every_s=0.5),
            watch(),
        )
        return load

    load = asyncio.run(scenario())
    failed = [r for r in load.records if r.status != 200]
    print(
        f"machine back: spread again {spread[0] if spread else float('nan'):.1f} s after, "
        f"{len(load.records)} requests, {len(failed)} failed; /health {sorted({status for _, status, _ in probes})}"
    )
    assert spread, f"the replicas did not spread again: {replicas_by_machine(served, 'depth')}"
    assert not failed, failed[:3]
    assert {status for _, status, _ in probes} == {200}, [p for p in probes if p[1] != 200][:3]
    assert any('"moving"' in text for _, _, text in probes)  # /health said which node was moving


def test_two_graphs_share_one_model_that_autoscales_over_the_machines(three_machines: Served, tmp_path: Path):
    """`capgraph serve near.yaml edges.yaml --address ...`: the two graphs' depth nodes run
    in one shared deployment, `replicas: {min: 1, max: 2}` with short delays. Under load on
    both capabilities it rises to two replicas on the workers and returns to one when the
    load stops; every request is answered."""
    depth = yaml.safe_load((GRAPHS / "depth.yaml").read_text())
    depth.pop("applications")
    node = depth["nodes"]["depth"] | {
        "resources": {"gpu": 0.5, "cpu": 0.5},
        "batch": {"max_size": 1, "wait_ms": 0},
        "replicas": {
            "min": 1,
            "max": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 1,
            "downscale_delay_s": 4,
            "look_back_period_s": 2,
        },
    }
    near = depth | {"capability": "near", "nodes": {"depth": node}}
    edges = {
        "capability": "edges",
        "inputs": {"image": "image"},
        "nodes": {"d": node, "edges": {"type": "canny", "inputs": {"image": "image"}}},
        "outputs": {"depth_map": "d.depth_map", "edges": "edges.edges"},
    }
    paths = [tmp_path / f"{name}.yaml" for name in ("near", "edges")]
    for path, graph in zip(paths, (near, edges)):
        path.write_text(yaml.safe_dump(graph))
    server, text = start_serving(three_machines, paths, tmp_path / "tiny", "capability 'edges' is healthy after")
    try:
        assert "serving near's depth, edges's d" in text and "capability 'edges' is healthy after" in text, text[-3000:]
        assert sum(replicas_by_machine(three_machines, "depth").values()) == 1  # one copy for both graphs
        counts: list[dict[str, int]] = []

        async def load_until_scaled():
            stop = asyncio.Event()

            async def watch():
                start = time.monotonic()
                while time.monotonic() - start < 60 and not stop.is_set():
                    counts.append(await asyncio.to_thread(replicas_by_machine, three_machines, "depth"))
                    if sum(counts[-1].values()) == 2:
                        stop.set()
                    await asyncio.sleep(1.0)
                stop.set()

            loads = await asyncio.gather(
                *(
                    run_load(f"{three_machines.url}/{name}/v1/{name}", body(), 4, 60.0, timeout_s=60, stop=stop)
                    for name in ("near", "edges")
                ),
                watch(),
            )
            return [r for load in loads[:2] for r in load.records]

        records = asyncio.run(load_until_scaled())
        assert sum(counts[-1].values()) == 2 and "head" not in counts[-1], (
            counts
        )  # where they fit (Ray's SPREAD: round robin)
        assert records and all(r.status == 200 for r in records), [r for r in records if r.status != 200][:3]
        wait_for(lambda: sum(replicas_by_machine(three_machines, "depth").values()) == 1, timeout=60, every=1.0)
        for name in ("near", "edges"):
            assert httpx.post(f"{three_machines.url}/{name}/v1/{name}", json=body(), timeout=60).status_code == 200
    finally:
        stop_serving(server)
