"""Torch threads that follow the load: replicas on one machine share its cores through one
small file; a lone replica takes them all, busy ones split them by weight, and together they
never hold more than the machine has."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from capgraph.serve.cluster.cores import CoreShare


def test_a_replica_alone_takes_every_core_up_to_its_cap(tmp_path: Path) -> None:
    with CoreShare(4, 0.75, path=tmp_path / "cores", key="depth").batch() as threads:
        assert threads == 4
    with CoreShare(4, 0.75, cap=2, path=tmp_path / "cores", key="gpu-unit").batch() as threads:
        assert threads == 2


def test_a_busy_machine_is_never_oversubscribed_and_waiters_get_their_share(tmp_path: Path) -> None:
    """B arrives while A holds both cores: B sleeps rather than add a third thread, and runs
    on one as soon as A's batch ends; A's next batch, B still busy, gets the other."""
    path = tmp_path / "cores"
    a, b = CoreShare(2, 0.75, path=path, key="a"), CoreShare(2, 0.75, path=path, key="b")
    got: list[int] = []
    release = threading.Event()

    def replica_b() -> None:
        with b.batch() as threads:
            got.append(threads)
            release.wait(5)

    with a.batch() as first:
        assert first == 2
        waiter = threading.Thread(target=replica_b)
        waiter.start()
        time.sleep(0.2)
        assert got == []  # waiting: both cores are A's
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [1]
    with a.batch() as second:
        assert second == 1
    release.set()
    waiter.join(5)


def test_many_replicas_at_once_hold_at_most_the_cores(tmp_path: Path) -> None:
    path, held, worst = tmp_path / "cores", {}, [0]
    lock = threading.Lock()

    def replica(name: str, weight: float) -> None:
        share = CoreShare(3, weight, path=path, key=name)
        for _ in range(20):
            with share.batch() as threads:
                with lock:
                    held[name] = threads
                    worst[0] = max(worst[0], sum(held.values()))
                time.sleep(0.002)
                with lock:
                    held[name] = 0

    workers = [threading.Thread(target=replica, args=(f"r{i}", w)) for i, w in enumerate((1.0, 0.5, 0.5, 0.25))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert 1 <= worst[0] <= 3


def test_cores_held_by_a_replica_that_died_come_back(tmp_path: Path) -> None:
    path = tmp_path / "cores"
    code = (
        "import time; from pathlib import Path; from capgraph.serve.cluster.cores import CoreShare\n"
        f"with CoreShare(2, 1.0, path=Path({str(path)!r})).batch() as t:\n    print(t, flush=True); time.sleep(60)\n"
    )
    dead = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert dead.stdout.readline().strip() == "2"
    dead.kill()
    dead.wait()
    with CoreShare(2, 1.0, path=path, key=str(os.getpid())).batch() as threads:
        assert threads == 2
