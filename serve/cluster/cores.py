"""Torch threads that follow the load: one machine's cores, shared by the capgraph replicas
busy on it at this moment (`CAPGRAPH_SHARE_CORES=1`).

Before each batch a replica registers in a shared file in /dev/shm (under `flock`) and takes
cores in proportion to its CPU weight, never more than are free; it gives them back after.
docs/cluster.md ("The code, module by module") has why and how.
"""

import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LINGER_S = 0.01
"""How long a replica counts as busy after its batch: longer than the gap between two batches
of a replica under load (a millisecond or two), shorter than the gap between a lone
caller's requests (its answer, the next request, the proxy and the ingress: 15 ms and more).
Without it, replicas under load saw each other idle at every batch boundary, took every core
in turn and ran their batches one after the other on two-thread teams, at a third the speed."""


def default_path() -> Path:
    """The machine's share file: one per user, in memory where the machine has /dev/shm."""
    folder = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return folder / f"capgraph-cores-{os.getuid()}.json"


SHARE_ENV = "CAPGRAPH_SHARE_CORES"
"""`1` turns the sharing on. Off by default: measured side by side on the 2-core machine
(`benchmarks/serve.py --json`, tiny hybrid chain), replicas with the planner's fixed
threads served 6.19 / 16.2 / 19.0 req/s at concurrency 1 / 8 / 32 and shared cores 5.34 /
14.0 / 17.6: a lone tiny-model frame gains nothing from a second thread, and the lock and
the thread changes cost. To be measured again on a machine with many cores."""


def sharing_on() -> bool:
    return os.environ.get(SHARE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def machine_cores() -> int:
    """The cores this process may use: what Ray was told this machine has (`--num-cpus`), at
    most the cores the process is allowed to run on; outside Ray, the latter."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import ray

        if ray.is_initialized():
            here = ray.get_runtime_context().get_node_id()
            told = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == here), 0)
            if told >= 1:
                return max(1, min(allowed, int(told)))
    except Exception:  # no Ray, or Ray cannot say: the process's own affinity
        pass
    return max(1, allowed)


class CoreShare:
    """One replica's claim on its machine's cores. `weight`: its CPU share (any positive
    number; only ratios matter). `cap`: the most threads it ever takes (default: all).
    `key` names it in the file (default: its process id, which also tells whether it is alive).

    A core is a lock file (`<path>.<i>`), held with `flock` for the batch: a replica waiting
    for one sleeps in the kernel until it is released (no polling, whose wake-ups would stall
    the running replica's threads), and a replica that dies releases its cores with its
    process. The share file only says who is busy, with what weight."""

    def __init__(
        self, cores: int, weight: float, *, cap: int | None = None, path: Path | None = None, key: str | None = None
    ):
        self.cores, self.weight = max(1, cores), max(weight, 1e-3)
        self.cap = max(1, min(cap or self.cores, self.cores))
        self.path = path or default_path()
        self.key = key or str(os.getpid())
        self.start = int(self.key) % self.cores if self.key.isdigit() else hash(self.key) % self.cores
        """The core it waits on when none is free: replicas spread over them."""

    @contextmanager
    def batch(self) -> Iterator[int]:
        """Hold cores for one batch; yields how many threads to run it on."""
        busy = 0.0

        def register(entries: dict[str, Any]) -> None:
            nonlocal busy
            entries[self.key] = {"weight": self.weight, "until": None}
            busy = sum(e["weight"] for e in entries.values())

        self._with_entries(register)
        fair = max(1, min(self.cap, math.floor(self.cores * self.weight / busy + 1e-9)))
        held: list[Any] = []
        try:
            held = self._take(fair)
            yield len(held)
        finally:
            for f in held:
                f.close()  # closing the file releases its lock
            # still counted as busy for LINGER_S: a replica under load starts its next batch
            # within a millisecond or two, and the others must not take its cores meanwhile
            self._with_entries(
                lambda entries: entries.__setitem__(self.key, {"weight": self.weight, "until": time.time() + LINGER_S})
            )

    def _take(self, wanted: int) -> list[Any]:
        """Up to `wanted` free cores at once; none free: wait for one."""
        held = []
        for i in range(self.cores):
            if len(held) == wanted:
                break
            f = open(f"{self.path}.{(self.start + i) % self.cores}", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(f)
            except BlockingIOError:
                f.close()
        if not held:
            f = open(f"{self.path}.{self.start}", "a")
            fcntl.flock(f, fcntl.LOCK_EX)  # asleep until its holder's batch ends
            held.append(f)
        return held

    def _with_entries(self, change: Any) -> None:
        """Read, change and write the share file under its lock; entries of dead processes dropped."""
        self.path.touch(exist_ok=True)
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                text = f.read()
                entries: dict[str, Any] = json.loads(text) if text.strip() else {}
            except ValueError:  # a torn file from a killed writer: start over
                entries = {}
            now = time.time()
            entries = {k: e for k, e in entries.items() if _alive(k) and (e.get("until") is None or e["until"] > now)}
            change(entries)
            f.seek(0)
            f.truncate()
            f.write(json.dumps(entries))
            f.flush()


def _alive(key: str) -> bool:
    """Whether the process an entry names still runs (keys that are not pids always are)."""
    if not key.isdigit():
        return True
    try:
        os.kill(int(key), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
