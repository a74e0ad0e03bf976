"""The Livepeer routes inside the real Ray Serve ingress (`capgraph serve`), end to end:
the graph is served in a subprocess with its own local Ray cluster, next to a fake
orchestrator. Registration waits for warm-up, a BYOC job goes through the orchestrator,
and stopping the service (Ctrl-C, or SIGTERM as Docker and Kubernetes send it) unregisters
it, stops its Ray and leaves no process behind."""

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.livepeer.lp_support import EDGES, ORCH_SECRET, TOKEN, FakeOrchestrator, data_url, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
MARK = "CAPGRAPH_TEST_MARK"  # in the service's environment, which every descendant inherits (but see `_ours`)
STOP_BOUND_S = 90.0  # generous: draining and stopping Ray take ~5-15 s, more on a loaded machine
STRAGGLERS_S = 10.0  # processes already told to stop may take a moment to go


@dataclass
class Service:
    """`capgraph serve` of the edges graph in a subprocess, with its own local Ray, registering
    with `orchestrator`."""

    process: subprocess.Popen
    port: int
    mark: str
    log: Path
    orchestrator: FakeOrchestrator
    seen: list[tuple[int, int]] = field(default_factory=list)
    """(/ready's status, registrations so far) at each poll of /ready."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            status = httpx.get(f"{self.url}/ready", timeout=3).status_code
        except httpx.HTTPError:
            status = 0
        self.seen.append((status, len(self.orchestrator.state.registrations)))
        return status == 200


def start(orchestrator: FakeOrchestrator, folder: Path) -> Service:
    port = free_port()
    mark = uuid.uuid4().hex
    env = dict(
        os.environ,
        LIVEPEER_ORCH_SECRET=ORCH_SECRET,
        CAPGRAPH_AUTH_TOKEN=TOKEN,
        RAY_ADDRESS="local",
        CAPGRAPH_LIVEPEER__URL=f"http://127.0.0.1:{port}",
        CAPGRAPH_LIVEPEER__BYOC__ORCHESTRATOR=orchestrator.url,
        CAPGRAPH_LIVEPEER__RUNNER__ORCHESTRATOR=orchestrator.url,
        CAPGRAPH_LIVEPEER__PROBE_S="0.5",
        **{MARK: mark},
    )
    code = (
        f"from serve.operate.run import serve_graph; raise SystemExit(serve_graph({str(EDGES)!r}, host='127.0.0.1', "
        f"port={port}, fuse='all', options={{'ingress_cpus': 0.1}}))"
    )
    folder.mkdir()
    log = folder / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(process, port, mark, log, orchestrator)


def serving(service: Service) -> None:
    """Waits until `service` is ready and registered, then until `serve.operate.run` has returned in it:
    /ready can answer before, and a stop then is a stop while it still deploys (exit 128 + the
    signal), not the clean stop of a serving service (exit 0)."""
    wait_for(service.ready, timeout=240, every=0.5)
    # Never registered while /ready said 503.
    assert all(registrations == 0 for status, registrations in service.seen if status == 503), service.seen
    wait_for(lambda: service.orchestrator.state.capabilities.get("edges-live"), timeout=10)
    wait_for(lambda: "is healthy after" in service.log.read_text(), timeout=60)


def stopped(service: Service, since: float) -> tuple[float | None, list[str]]:
    """The seconds `service` took to exit after the signal sent at `since` (None: not within
    STOP_BOUND_S of it) and what it left running. Whatever the outcome, nothing of it is left
    running afterwards: a failing run must not leak Ray processes into the rest of the suite."""
    stopped_in = None
    try:
        service.process.wait(max(0.0, since + STOP_BOUND_S - time.monotonic()))
        stopped_in = time.monotonic() - since
    except subprocess.TimeoutExpired:
        os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait(30)
    left = _left_behind(service.process.pid, service.mark)
    _kill_ours(service.process.pid, service.mark)
    return stopped_in, left


def assert_stopped_cleanly(service: Service, stop: signal.Signals, stopped_in: float | None, left: list[str]) -> None:
    text = service.log.read_text()
    tail = text[-3000:]
    assert stopped_in is not None, f"still running {STOP_BOUND_S:g} s after {stop.name}\n{tail}"
    assert not left, f"left behind after {stop.name}: {left}\n{tail}"
    assert service.process.returncode == 0, tail
    assert service.orchestrator.state.unregistrations == ["edges-live"], tail
    assert len(service.orchestrator.state.runner_unregistrations) == 1
    assert "shutting down: draining, unregistering, stopping the local Ray" in text, tail


@pytest.mark.slow
def test_served_on_ray_registers_when_warm_answers_jobs_and_stops_cleanly(orchestrator, tmp_path):
    """Two services start side by side, each with its own Ray and orchestrator (their starts
    overlap): the one stopped with SIGTERM answers a job on the way; the other is stopped
    with Ctrl-C, which its whole process group gets, Ray's own processes included."""
    other = FakeOrchestrator()
    other.start()
    sigterm = start(orchestrator, tmp_path / "sigterm")
    sigint = start(other, tmp_path / "sigint")
    try:
        serving(sigterm)
        wait_for(
            lambda: orchestrator.state.heartbeats and orchestrator.state.heartbeats[-1]["body"]["status"] == "ready",
            timeout=10,
        )
        answer = orchestrator.job("edges-live", {"inputs": {"image": data_url()}, "params": {"blend.opacity": 0.0}})
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["outputs"]) == {"image", "edges"}
        refused = httpx.post(f"{sigterm.url}/edges-live", json={"inputs": {"image": data_url()}})
        assert refused.status_code == 401
        serving(sigint)
        # The scan below sees Ray's own processes, the agents the issue found orphaned included:
        # "nothing left" means it.
        for service in (sigterm, sigint):
            running = _ours(service.process.pid, service.mark)
            assert any(cmdline.startswith("ray::RuntimeEnvAgent") for cmdline in running.values()), running
            assert any(cmdline.startswith("ray::ServeReplica") for cmdline in running.values()), running
    finally:
        since = time.monotonic()  # both are stopped at once
        _send(sigterm.process.pid, signal.SIGTERM)
        _send(sigint.process.pid, signal.SIGINT)
        try:
            after_sigterm = stopped(sigterm, since)
        finally:
            after_sigint = stopped(sigint, since)
            other.stop()
    assert_stopped_cleanly(sigterm, signal.SIGTERM, *after_sigterm)
    assert_stopped_cleanly(sigint, signal.SIGINT, *after_sigint)


def _send(pid: int, stop: signal.Signals) -> None:
    """Ctrl-C goes to the terminal's foreground process group; Docker and Kubernetes send
    SIGTERM to the main process alone."""
    if stop == signal.SIGINT:
        os.killpg(pid, signal.SIGINT)
    else:
        os.kill(pid, signal.SIGTERM)


def _ours(service: int, mark: str) -> dict[int, str]:
    """pid -> command line of each live process the service started, however deep: its
    environment holds `mark`, or it is in the service's session (`start_new_session`) with
    its environment overwritten.

    Ray's agents retitle themselves over their environment (`/proc/PID/environ` of
    `ray::DashboardAgent` starts with zeros where the mark may have been), so the mark alone
    misses them; the session alone would miss a process that left it (setsid), and could
    take in strangers once the service's pid is reused. Zombies are left out: they are
    gone but for an exit status.
    """
    needle = f"{MARK}={mark}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2 :].split()[:4]
            environ = (entry / "environ").read_bytes()
            overwritten = environ[:1] in (b"", b"\0")  # an environment never starts with an empty entry
            if state == "Z" or not (needle in environ.split(b"\0") or (int(session) == service and overwritten)):
                continue
            found[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            )
        except (OSError, ValueError):  # gone meanwhile, or another user's
            continue
    return found


def _left_behind(service: int, mark: str) -> list[str]:
    """The service's processes still running after a grace for stragglers, as 'pid cmdline'."""
    deadline = time.monotonic() + STRAGGLERS_S
    while (found := _ours(service, mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [f"{pid} {cmdline}" for pid, cmdline in found.items()]


def _kill_ours(service: int, mark: str) -> None:
    for pid in _ours(service, mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
