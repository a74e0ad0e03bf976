"""Ray's own CLI on capgraph graph files, as a user runs it: `serve run graphs/hybrid.yaml`
in a subprocess (its own local Ray: no GPU, so the CPU fallback), and the clean exits of
`serve run` on a graph that does not validate."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GRAPHS, ROOT
from tests.serve.conftest import TINY_ENV
from tests.serve.support import decode_b64_png, frame, free_port, png_b64, wait_health

SERVE = str(Path(sys.executable).with_name("serve"))


def env() -> dict[str, str]:
    """Tiny models, offline, and never the test session's own cluster: with RAY_ADDRESS=local
    (`serve run --address` defaults to it), `serve run` starts a local Ray instance of its own,
    as on a laptop, even where a `ray start` cluster runs on this machine, which it would join
    otherwise (and a build failing there would leave it waiting on a cluster that serves
    something)."""
    return (
        os.environ
        | TINY_ENV
        | {"CAPGRAPH_TINY_DIR": os.environ["CAPGRAPH_TINY_DIR"], "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"}
    )


def with_port(graph: Path, folder: Path, port: int, edit: tuple[str, str] | None = None) -> Path:
    """The graph file as it is, plus the HTTP port (Ray has no `--port` for `serve run`;
    8000 may be taken by another test run on this machine)."""
    text = graph.read_text()
    if edit:
        text = text.replace(*edit)
    copy = folder / graph.name
    copy.write_text(text + f"\nhttp_options: {{host: 127.0.0.1, port: {port}}}\n")
    return copy


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [SERVE, "run", *args],
        cwd=ROOT,
        env=env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, timeout_s: float = 60) -> int:
    """Ctrl-C (serve run shuts Serve and its local Ray down), then kill what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group: raylet, GCS and workers started under it
    except ProcessLookupError:
        pass
    return proc.wait(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, float]]:
    port = free_port()
    log = tmp_path / "serve.log"
    started = time.monotonic()
    proc = start([str(with_port(GRAPHS / "hybrid.yaml", tmp_path, port))], log)
    try:
        yield f"http://127.0.0.1:{port}", log, started
    finally:
        stop(proc)


@pytest.mark.slow
def test_serve_run_graph_file(served):
    url, log, started = served
    seen = wait_health(url, 180)
    print(f"\n`serve run graphs/hybrid.yaml`: /health 200 {time.monotonic() - started:.1f}s after the process started")
    assert seen[-1] == 200 and 503 in seen, f"503 before 200 expected, saw {seen}"  # loading is never claimed ready
    inputs = {"image": png_b64(frame()), "prompt": "a castle"}
    reply = httpx.post(
        url + "/v1/hybrid-depth-sdxl", json={"inputs": inputs, "params": {"generate.steps": 2}}, timeout=120
    )
    assert reply.status_code == 200, reply.text
    assert decode_b64_png(reply.json()["outputs"]["image"]).shape == (256, 256, 3)
    deadline = time.monotonic() + 15  # Ray forwards replica logs to `serve run` in batches
    while "is healthy" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    text = log.read_text()
    assert text.count("no GPU in the cluster") == 1  # the CPU fallback, said once, by the builder
    assert "node 'generate' (sdxl) loading on cpu" in text and "bytes of weights" in text
    assert "capability 'hybrid-depth-sdxl' is healthy" in text


def test_serve_run_builder_refuses_an_invalid_graph():
    """`serve run capgraph.serve.app:build graph=...` runs the builder before Ray starts: exit 2 with
    the same message as `capgraph validate`, and nothing left running."""
    start = time.monotonic()
    done = subprocess.run(
        [SERVE, "run", "capgraph.serve.app:build", "graph=tests/graphs/bad_param_range.yaml"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "tests/graphs/bad_param_range.yaml:" in done.stderr and "error" in done.stderr
    assert "Started a local Ray instance" not in done.stderr + done.stdout
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_serve_run_config_with_an_invalid_graph_exits(tmp_path: Path):
    """The config form builds inside the cluster: the application fails with the errors and
    the waiting `serve run` is stopped instead of hanging in DEPLOY_FAILED."""
    bad = with_port(GRAPHS / "edges.yaml", tmp_path, free_port(), ("low_threshold: 100", "low_threshold: 1000"))
    log = tmp_path / "serve.log"
    proc = start([str(bad)], log)
    try:
        proc.wait(120)
    finally:
        stop(proc)
    text = log.read_text()
    assert "args.graph: node 'edges': low_threshold: Input should be less than or equal to 255" in text
    assert "stopping `serve run`" in text
