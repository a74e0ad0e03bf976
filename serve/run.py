"""`capgraph serve GRAPH`: the same builder as `serve run`, with checks before Ray starts.

    from capgraph.serve.run import serve_graph
    raise SystemExit(serve_graph("graphs/hybrid.yaml", host="127.0.0.1", port=8000))

The graph is validated before Ray is started, and pre-flighted against the cluster before
anything is deployed; the call returns once every node is loaded and warm (or blocks
serving until Ctrl-C or SIGTERM). Exit codes: 0 served, 2 invalid graph, 3 does not fit,
1 the deployment failed, 130 (Ctrl-C) or 143 (SIGTERM) stopped before it was healthy.

Stopping: SIGTERM (what Docker and Kubernetes send) stops it like Ctrl-C does. Serve is
drained (each replica's lifespan ends: the ingress unregisters from the orchestrator),
then the local Ray that this call started is stopped, and any of its processes that
outlive `ray.shutdown()` (e.g. `ray::DashboardAgent`, `ray::RuntimeEnvAgent`) are
terminated. A joined cluster (`address`) is only disconnected from, never stopped.
"""

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from capgraph.engine.errors import GraphInvalid

EXIT_INVALID = 2
EXIT_DOES_NOT_FIT = 3
EXIT_DEPLOY_FAILED = 1
EXIT_SIGNALLED = 128  # + the signal's number, as shells report it: 130 Ctrl-C, 143 SIGTERM

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LEFTOVER_GRACE_S = 5.0  # SIGTERM, then this long, then SIGKILL, for Ray processes outliving ray.shutdown()


def serve_graph(
    path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    fuse: Literal["auto", "groups", "all", "none"] = "auto",
    batching: bool = True,
    preflight: Literal["fail", "warn", "off"] = "fail",
    address: str | None = None,
    dry_run: bool = False,
    as_json: bool = False,
    blocking: bool = True,
    options: dict[str, Any] | None = None,
    tuned: str | bool | None = None,
    out: TextIO | None = None,
) -> int:
    """Serve one graph file on Ray Serve; returns an exit code.

    `address` joins a running Ray cluster (default: start a local one). `dry_run` prints
    the deployments the planner chose, with its reasons, and the pre-flight (JSON with
    `as_json`) without starting Ray. `tuned` names a tuned overlay (default: the one
    `capgraph tune` wrote for this graph on this machine; False ignores it). `options` are
    further `CapabilityArgs` fields (e.g. `{"request_timeout_s": 30}`). Blocking, it
    serves until Ctrl-C or SIGTERM, then drains and stops what it started.
    """
    from capgraph.serve.app import CapabilityArgs, load_graph, plan_app

    out = out or sys.stdout
    args = CapabilityArgs(graph=str(path), fuse=fuse, batching=batching, preflight=preflight, tuned=tuned, **(options or {}))
    try:
        plan = load_graph(args.graph)  # before Ray: a typo costs no cluster start
        if dry_run:
            blueprint = plan_app(args)
            _print_blueprint(blueprint.describe(), as_json, out)
            return EXIT_DOES_NOT_FIT if blueprint.problems and preflight == "fail" else 0
    except GraphInvalid as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INVALID

    import ray

    signals = _StopSignals(out)
    signals.take()  # from before ray.init: a SIGTERM while Ray starts stops it like Ctrl-C too
    code = EXIT_DEPLOY_FAILED
    try:
        with signals.keeping_sigterm():
            ray.init(address=address, namespace="serve", log_to_driver=True)
        code = _deploy(plan.capability, args, host, port, out)
        if code == 0 and blocking:
            _serve_until_stopped()
        return code
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the capability was healthy
        code = EXIT_SIGNALLED + signals.received
        return code
    finally:
        stopping = blocking or code != 0
        signals.stopping()  # from here on a second Ctrl-C or SIGTERM is noted, not obeyed: the cleanup runs to its end
        try:
            if stopping:
                _shut_down(out)
        finally:
            signals.give_back(ray_running=not stopping)


def _deploy(capability: str, args: Any, host: str, port: int, out: TextIO) -> int:
    """Plan against the cluster, pre-flight, start Serve and deploy; 0 once healthy."""
    from ray import serve

    from capgraph.serve.app import _fit_report, bind, plan_app

    try:
        blueprint = plan_app(args)
    except GraphInvalid as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INVALID
    if blueprint.problems and args.preflight == "fail":
        print(_fit_report(blueprint), file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    serve.start(http_options={"host": host, "port": port})
    started = time.monotonic()
    try:
        serve.run(bind(blueprint, args), name=capability, route_prefix="/")
    except Exception as exc:  # Ray's own message says which replica failed and why
        print(f"deploying '{capability}' failed: {exc}", file=sys.stderr)
        return EXIT_DEPLOY_FAILED
    url = f"http://{host}:{port}"
    deploying = time.monotonic() - started
    waited = _until_healthy(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/health")
    print(f"capability '{capability}' is healthy after {waited:.1f}s from the start of this process (deploying took "
          f"{deploying:.1f}s): POST {url}/v1/{capability} (schema: {url}/v1/{capability}/schema, health: {url}/health, "
          f"docs: {url}/docs)", file=out, flush=True)
    return 0


def _until_healthy(health_url: str, limit_s: float = 30.0) -> float:
    """Seconds from this process's start to /health answering 200: the time a user waits.
    Deployed means every replica is warm, so that is at most a moment later; the wait is
    bounded and, should /health not say so in time, the time so far is what is reported."""
    import urllib.error
    import urllib.request

    import psutil

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health_url, timeout=2) as reply:
                if reply.status == 200:
                    break
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    return time.time() - psutil.Process().create_time()


def _serve_until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM (both arrive as KeyboardInterrupt, see `_StopSignals`)."""
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass


class _StopSignals:
    """SIGTERM behaves like Ctrl-C while `serve_graph` runs, and neither aborts the shutdown.

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
            print(f"{signal.Signals(signum).name}: already shutting down, letting it finish (SIGKILL forces it)",
                  file=self._out, flush=True)
            return
        raise KeyboardInterrupt


def _shut_down(out: TextIO) -> None:
    """Drain Serve, then stop the local Ray this process started, or leave a joined cluster.

    `serve.shutdown()` drains every replica; the ingress's lifespan ends there, which is
    where the Livepeer registrar unregisters from the orchestrator.
    """
    import ray
    from ray import serve

    node = ray._private.worker._global_node  # set as soon as ray.init started or found a node
    if node is None and not ray.is_initialized():
        return
    local = _LocalRay.of(node)
    print(f"shutting down: draining, unregistering, {'stopping the local Ray' if local else 'disconnecting from the Ray cluster'}",
          file=out, flush=True)
    started = time.monotonic()
    try:
        if ray.is_initialized():  # else ray.init was cut short: nothing deployed, and serve.shutdown would start a Ray
            serve.shutdown()
    finally:
        processes = local.processes() if local else []  # before ray.shutdown: afterwards the agents have no parent to find them by
        ray.shutdown()
        if local:
            local.stop_leftovers(processes, out)
    print(f"stopped in {time.monotonic() - started:.1f}s", file=out, flush=True)


@dataclass(frozen=True)
class _LocalRay:
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
    def of(cls, node: Any) -> "_LocalRay | None":
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


def deployments(plan: Any) -> dict[str, tuple[str, ...]]:
    """Deployment name -> its nodes, as the builder would compile `plan` here (this
    machine's tuned overlay included, when it matches). No Ray, no torch: for pictures
    (`capgraph render`), where only the grouping matters."""
    from capgraph.serve import preflight
    from capgraph.serve.compiler import compile_plan
    from capgraph.serve.overlay import find_overlay

    cluster = preflight.local_cluster(probe_gpus=False)
    overlay, _ = find_overlay(plan, None, "cuda" if cluster.gpus else "cpu")
    compiled = compile_plan(plan, tuned=overlay.nodes if overlay else None, measured=overlay.costs() if overlay else None)
    return {u.name: u.nodes for u in compiled.units}


def _print_blueprint(summary: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        json.dump(summary, out, indent=2)
        out.write("\n")
        return
    print(f"{summary['capability']}: {summary['demand']} on {summary['cluster']}", file=out)
    for d in summary["deployments"]:
        reads = f" <- {', '.join(d['reads_from'])}" if d["reads_from"] else ""
        print(f"  {d['name']}: {', '.join(d['nodes'])} | gpu {d['num_gpus']:g} cpu {d['num_cpus']:g} threads {d['threads']} | "
              f"replicas {d['replicas']} | batch {d['max_batch_size']} / {d['batch_wait_s'] * 1000:g} ms | "
              f"max_ongoing_requests {d['max_ongoing_requests']}{reads}", file=out)
        for reason in d["why"]:
            print(f"      {reason}", file=out)
    for note in summary["notes"]:
        print(f"  note: {note}", file=out)
    for problem in summary["problems"]:
        print(f"  does not fit: {problem}", file=out)
