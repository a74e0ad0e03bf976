"""Process control for `capgraph serve` and the builder: signals, stopping the local Ray a
process started, and stopping a local `serve run` whose application cannot be built.

Apart from `serve.operate.run` (what `capgraph serve` deploys and prints), and below the
builder that uses it, because none of this is about Serve: it is about processes, and leans
on Ray's private parts where Ray gives no other way (its SIGTERM handler, the processes
`ray.init` spawned, the job table).
"""

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LEFTOVER_GRACE_S = 5.0  # SIGTERM, then this long, then SIGKILL, for Ray processes outliving ray.shutdown()


def wait_until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM (both arrive as KeyboardInterrupt, see `StopSignals`)."""
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


class StopSignals:
    """SIGTERM behaves like Ctrl-C while `serve.operate.run.serve_graph` runs, and neither aborts the shutdown.

    Left to Ray, a SIGTERM reaches the core worker's crash handler (`*** SIGTERM received
    ***`), which aborts the driver: no `finally` runs, Serve is not drained (the
    orchestrator is never told) and the raylet's `ray::DashboardAgent` and
    `ray::RuntimeEnvAgent` are orphaned. `signal.signal` puts Python's handler back in
    front of it; raising KeyboardInterrupt in the main thread then takes the same path as
    Ctrl-C. Signal handlers can only be set from the main thread: elsewhere (an
    application embedding `serve_graph`) this does nothing and that application's handlers apply.
    """

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._original: dict[int, Any] = {}
        self._ray_sigterm: Any = None
        self._stopping = False
        self.received: int = signal.SIGINT  # the last stop signal; a KeyboardInterrupt from elsewhere counts as Ctrl-C

    def take(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._original = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    @contextmanager
    def keeping_sigterm(self) -> Iterator[None]:
        """Ours stays SIGTERM's handler while `ray.init` runs, which sets a Python one of its
        own (it kills Ray's processes, the raylet with one second's grace, and exits 1):
        Ray's is kept instead, for when Ray outlives this call. Only the core worker's
        crash handler, set in C++ near the end of `ray.init`, gets in first until
        `ray.init` returns and ours is set again."""
        if not self._original:
            yield
            return
        from ray._private import utils as ray_utils

        setter = getattr(ray_utils, "set_sigterm_handler", None)  # private: if Ray renames it, ours is set again after
        if setter is not None:
            ray_utils.set_sigterm_handler = self._keep_ray_sigterm
        try:
            yield
        finally:
            if setter is not None:
                ray_utils.set_sigterm_handler = setter
            self._keep_ray_sigterm(signal.signal(signal.SIGTERM, self._handle))

    def _keep_ray_sigterm(self, handler: Any) -> None:
        if handler != self._handle:
            self._ray_sigterm = handler

    def stopping(self) -> None:
        self._stopping = True

    def give_back(self, ray_running: bool) -> None:
        """The handlers found before; Ray's SIGTERM handler if Ray stays up (it stops Ray's processes)."""
        for sig, previous in self._original.items():
            if sig == signal.SIGTERM and ray_running and self._ray_sigterm is not None:
                previous = self._ray_sigterm
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        self._original = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if self._stopping:
            print(
                f"{signal.Signals(signum).name}: already shutting down, letting it finish (SIGKILL forces it)",
                file=self._out,
                flush=True,
            )
            return
        raise KeyboardInterrupt


@dataclass(frozen=True)
class LocalRay:
    """The Ray instance this process started: the processes `ray.init` spawned, and the
    session directory that names them.

    `ray.shutdown()` stops the processes `ray.init` spawned (raylet, gcs_server, dashboard,
    ...) but not always theirs, as it gives each one second before SIGKILL: the dashboard's
    head modules (`ray-dashboard-*Head-0`) outlive it every time here, and the raylet's
    `ray::DashboardAgent` and `ray::RuntimeEnvAgent` have been seen running minutes later,
    orphaned. So their descendants are recorded while they are still their parents, and
    whatever of them still runs after `ray.shutdown()` is terminated.
    """

    session_dir: str
    pids: tuple[int, ...]  # the processes ray.init spawned

    @classmethod
    def of(cls, node: Any) -> "LocalRay | None":
        """None when joined to a cluster: a driver that only connects spawns nothing, and
        that cluster's processes are never ours to stop (whatever `address` said: Ray
        may have found a running cluster on its own)."""
        if node is None or not node.all_processes:
            return None
        pids = tuple(info.process.pid for infos in node.all_processes.values() for info in infos)
        return cls(node.get_session_dir_path(), pids)

    def processes(self) -> list[Any]:
        """The processes of this Ray now: those spawned and all their descendants (agents, workers)."""
        import psutil

        found: dict[int, psutil.Process] = {}
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                found[pid] = root
                found.update((child.pid, child) for child in root.children(recursive=True))
            except psutil.Error:  # already gone
                continue
        return list(found.values())

    def stop_leftovers(self, recorded: list[Any], out: TextIO) -> None:
        """Terminate what of this Ray outlived `ray.shutdown()`: the recorded processes, and
        any whose command line names this session's directory (unique to it: other Ray
        instances on the machine are left alone)."""
        import psutil

        leftovers = {p.pid: p for p in recorded if _running(p)}
        leftovers.update((p.pid, p) for p in _naming(self.session_dir) if p.pid not in leftovers)
        if not leftovers:
            return
        names = ", ".join(f"{_name(p)} ({p.pid})" for p in leftovers.values())
        print(f"stopping {len(leftovers)} Ray process(es) that outlived ray.shutdown(): {names}", file=out, flush=True)
        _signal_all(leftovers.values(), lambda p: p.terminate())
        _, alive = psutil.wait_procs(list(leftovers.values()), timeout=LEFTOVER_GRACE_S)
        if alive:
            _signal_all(alive, lambda p: p.kill())
            psutil.wait_procs(alive, timeout=LEFTOVER_GRACE_S)


def _running(process: Any) -> bool:
    """Running and not a zombie (a zombie is gone already; it only waits to be reaped).
    `is_running` also tells a reused pid from the process recorded."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _naming(session_dir: str) -> list[Any]:
    """Running processes whose command line mentions `session_dir`, this one excepted."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.pid != os.getpid() and any(session_dir in part for part in cmdline) and _running(process):
            found.append(process)
    return found


def _name(process: Any) -> str:
    import psutil

    try:
        return process.name()
    except psutil.Error:  # gone meanwhile
        return "?"


def _signal_all(processes: Iterable[Any], send: Callable[[Any], None]) -> None:
    import psutil

    for process in processes:
        try:
            send(process)
        except psutil.Error:  # gone meanwhile, or not ours to signal
            continue


def stop_local_serve_run(log: Any) -> None:
    """Stop a `serve run CONFIG` waiting on an application whose build failed.

    Ray's `serve run CONFIG` (`ray/serve/scripts.py`, Ray 2.60) submits the config and then
    sleeps until Ctrl-C, whatever the build does: it does not poll the application's status,
    and no flag makes it exit on DEPLOY_FAILED (`--non-blocking` returns once the config is
    submitted, before the build). So the builder interrupts it as Ctrl-C would (it shuts
    Serve down and exits), when it runs on this machine and nothing is deployed yet; a
    cluster that already serves something is left alone.

    The driver is looked for among this process's ancestors first: a `serve run` that
    started its own Ray is the parent of the raylet that started this worker, found with no
    call to Ray. Only where it is not (a `serve run` that joined a cluster on this machine)
    is Ray's job table asked, once, for the driver of this job. Best effort: the failed
    application says why either way."""
    try:
        pid = _serve_run_ancestor() or _serve_run_driver()
        if pid is None or _serving():
            return
        log.error("capgraph: stopping `serve run` (pid %d): the graph cannot be deployed", pid)
        for handler in log.handlers:  # the line goes to the driver's log before it stops
            handler.flush()
        os.kill(pid, signal.SIGINT)
    except Exception as exc:
        log.debug("capgraph: could not stop serve run: %s", exc)


def _serve_run_ancestor() -> int | None:
    import psutil

    for process in psutil.Process().parents():
        try:
            if _is_serve_run(process.cmdline()):
                return process.pid
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return None


def _serve_run_driver() -> int | None:
    """The driver of this job when it runs on this machine and is a `serve run CONFIG`: its
    command line as Ray recorded it at `ray.init` (the job table's entrypoint)."""
    import shlex

    import ray
    from ray._private import state

    job_id = ray.get_runtime_context().get_job_id()
    here = ray.util.get_node_ip_address()
    for job in state.jobs():
        if job["JobID"] == job_id and not job["IsDead"] and job["DriverIPAddress"] == here:
            argv = shlex.split(job.get("Entrypoint") or "")
            return int(job["DriverPid"]) if _is_serve_run(argv) else None
    return None


def _is_serve_run(argv: list[str]) -> bool:
    """`serve run FILE.yaml`, however the `serve` script was started (by path, through python)."""
    names = [os.path.basename(a) for a in argv]
    return "serve" in names and "run" in argv and any(a.endswith((".yaml", ".yml")) for a in argv)


def _serving() -> bool:
    """Whether any application of this Serve instance has a deployment."""
    from ray import serve

    return any(app.deployments for app in serve.status().applications.values())
