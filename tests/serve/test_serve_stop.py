"""How `capgraph serve` stops, without Ray: SIGTERM is Ctrl-C while it serves, a second
signal does not cut the shutdown short, and the processes of its own Ray session that
outlive `ray.shutdown()` are terminated, nobody else's. (Served on a real Ray and
stopped with either signal: tests/livepeer/test_ray_integration.py.)"""

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from capgraph.serve.cluster.process import LocalRay as _LocalRay
from capgraph.serve.cluster.process import StopSignals as _StopSignals
from capgraph.serve.operate.run import EXIT_SIGNALLED


def _sleeper(*argv: str) -> subprocess.Popen:
    """A process that waits to be stopped; `argv` shows in its command line."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:  # whatever the test did: none outlives it
        process.kill()
        process.wait(10)


def test_sigterm_is_ctrl_c_while_taken_and_the_handlers_found_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signals = _StopSignals(io.StringIO())
    signals.take()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)  # the handler runs at the latest here (it cuts the sleep short)
        assert EXIT_SIGNALLED + signals.received == 143
    finally:
        signals.give_back(ray_running=False)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_signal_during_the_shutdown_is_noted_not_obeyed():
    out = io.StringIO()
    signals = _StopSignals(out)
    signals.take()
    try:
        signals.stopping()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handlers have run by now
    finally:
        signals.give_back(ray_running=False)
    assert "SIGTERM: already shutting down" in out.getvalue()
    assert "SIGINT: already shutting down" in out.getvalue()


def test_a_joined_cluster_is_not_ours_to_stop():
    assert _LocalRay.of(None) is None


def test_leftovers_of_the_session_are_stopped_and_other_processes_left_alone(sleepers, tmp_path: Path):
    session = str(tmp_path / f"session_{uuid.uuid4().hex}")
    other_session = str(tmp_path / f"session_{uuid.uuid4().hex}")
    recorded = _sleeper()  # e.g. ray::DashboardAgent: recorded while the raylet was its parent
    naming = _sleeper(f"--session-dir={session}")  # e.g. the dashboard's head modules
    other = _sleeper(f"--session-dir={other_session}")  # another Ray instance on this machine
    bystander = _sleeper()
    sleepers.extend([recorded, naming, other, bystander])
    out = io.StringIO()

    _LocalRay(session, pids=()).stop_leftovers([psutil.Process(recorded.pid)], out)

    # Reaped by stop_leftovers already (poll() then says 0, not -SIGTERM): ended is what counts.
    assert recorded.poll() is not None and naming.poll() is not None
    assert other.poll() is None and bystander.poll() is None
    assert "stopping 2 Ray process(es) that outlived ray.shutdown()" in out.getvalue()


def test_nothing_left_says_nothing(sleepers, tmp_path: Path):
    gone = _sleeper()
    sleepers.append(gone)
    process = psutil.Process(gone.pid)
    gone.kill()
    gone.wait(10)
    out = io.StringIO()

    _LocalRay(str(tmp_path / "session_gone"), pids=()).stop_leftovers([process], out)

    assert out.getvalue() == ""
