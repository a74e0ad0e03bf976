"""No hang can cost a CI run: a test that hangs fails in its time limit with every thread's
stack (pytest-timeout, as configured in pyproject.toml), and a run that hangs outside any
test is stopped by `.ci/bounded`, which prints where it was. Both are shown here on the
deadlock that once hung this suite: a thread waiting in `ThreadPoolExecutor.submit` for
concurrent.futures' module-wide lock, which another thread holds for ever."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

DEADLOCK = """
import concurrent.futures
import concurrent.futures.thread
import threading


def deadlock() -> None:
    # What the SDK's finalizer met: the lock `submit` takes, held by a thread that never lets go.
    concurrent.futures.thread._global_shutdown_lock.acquire()
    waiter = threading.Thread(
        target=lambda: concurrent.futures.ThreadPoolExecutor(1).submit(print), name="server", daemon=True
    )
    waiter.start()
    waiter.join()
"""


def test_a_hanging_test_fails_in_its_time_limit_with_every_threads_stack(tmp_path: Path):
    (tmp_path / "test_hangs.py").write_text(DEADLOCK + "\n\ndef test_hangs():\n    deadlock()\n")
    start = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "--timeout",
            "3",
            str(tmp_path / "test_hangs.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    took = time.monotonic() - start
    out = run.stdout + run.stderr
    assert run.returncode != 0, out[-2000:]
    assert "timeout: 3.0s" in out and "timeout method: thread" in out, out[
        :2000
    ]  # the project's method, this test's limit
    assert "+ Timeout +" in out, out[-2000:]
    assert "Stack of server" in out and "in submit" in out, out[-3000:]  # the thread that waits, and where
    assert "test_hangs" in out
    assert took < 60, f"the hanging test took {took:.0f}s to fail"


@pytest.mark.skipif(not (ROOT / ".ci" / "bounded").exists(), reason="needs the repository's .ci folder")
def test_a_run_that_hangs_outside_any_test_is_stopped_and_says_where(tmp_path: Path):
    script = tmp_path / "hangs_at_exit.py"
    script.write_text(
        DEADLOCK
        + textwrap.dedent("""
        threading.Thread(target=deadlock, name="left-behind").start()  # not a daemon: exit joins it for ever
        print("tests done", flush=True)
    """)
    )
    start = time.monotonic()
    run = subprocess.run(
        ["bash", str(ROOT / ".ci" / "bounded"), "3", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - start
    assert run.returncode == 124, run.stdout[-2000:] + run.stderr[-2000:]
    assert "tests done" in run.stdout and "still running after 3s" in run.stdout
    assert "submit" in run.stdout and "left-behind" in run.stdout, run.stdout[-3000:]  # py-spy's stacks
    assert took < 60


@pytest.mark.skipif(not (ROOT / ".ci" / "bounded").exists(), reason="needs the repository's .ci folder")
def test_a_bounded_run_keeps_ctrl_c(tmp_path: Path):
    """bash starts a background command with SIGINT ignored, and every process under it
    would inherit that: tests that stop a `serve run` with Ctrl-C then wait for ever."""
    probe = "import signal; print('ctrl-c:', signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    bounded = ["bash", str(ROOT / ".ci" / "bounded"), "60", sys.executable, "-c", probe]
    # as CI may start it, and as a shell's `.ci/run &` does: with SIGINT ignored already
    ignoring = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *bounded]
    for command in (bounded, ignoring):
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "ctrl-c: True" in run.stdout, run.stdout + run.stderr
