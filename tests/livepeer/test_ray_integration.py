"""The Livepeer routes inside the real Ray Serve ingress (`capgraph serve`), end to end:
the graph is served in a subprocess with its own local Ray cluster, next to a fake
orchestrator. Registration waits for warm-up, a BYOC job goes through the orchestrator,
and stopping the service unregisters it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.livepeer.lp_support import EDGES, ORCH_SECRET, TOKEN, data_url, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_served_on_ray_registers_when_warm_answers_jobs_and_unregisters(orchestrator, tmp_path):
    port = free_port()
    env = dict(os.environ, LIVEPEER_ORCH_SECRET=ORCH_SECRET, CAPGRAPH_AUTH_TOKEN=TOKEN, RAY_ADDRESS="local",
               CAPGRAPH_LIVEPEER__URL=f"http://127.0.0.1:{port}", CAPGRAPH_LIVEPEER__BYOC__ORCHESTRATOR=orchestrator.url,
               CAPGRAPH_LIVEPEER__RUNNER__ORCHESTRATOR=orchestrator.url, CAPGRAPH_LIVEPEER__PROBE_S="0.5")
    code = (f"from serve.run import serve_graph; raise SystemExit(serve_graph({str(EDGES)!r}, host='127.0.0.1', "
            f"port={port}, fuse='all', options={{'ingress_cpus': 0.1}}))")
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        service = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        seen = []

        def ready() -> bool:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=3).status_code
            except httpx.HTTPError:
                status = 0
            seen.append((status, len(orchestrator.state.registrations)))
            return status == 200

        wait_for(ready, timeout=240, every=0.5)
        # Never registered while /ready said 503.
        assert all(registrations == 0 for status, registrations in seen if status == 503), seen
        wait_for(lambda: orchestrator.state.capabilities.get("edges-live"), timeout=10)
        wait_for(lambda: orchestrator.state.heartbeats and orchestrator.state.heartbeats[-1]["body"]["status"] == "ready", timeout=10)
        answer = orchestrator.job("edges-live", {"inputs": {"image": data_url()}, "params": {"blend.opacity": 0.0}})
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["outputs"]) == {"image", "edges"}
        refused = httpx.post(f"http://127.0.0.1:{port}/edges-live", json={"inputs": {"image": data_url()}})
        assert refused.status_code == 401
    finally:
        os.killpg(service.pid, signal.SIGINT)  # what Ctrl-C does: Serve shuts down, the lifespan unregisters
        try:
            service.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(30)
    assert orchestrator.state.unregistrations == ["edges-live"], log.read_text()[-3000:]
    assert len(orchestrator.state.runner_unregistrations) == 1
