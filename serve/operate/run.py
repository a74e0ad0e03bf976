"""`capgraph serve GRAPH`: the same builder as `serve run`, with checks before Ray starts.

The graph is validated before Ray starts and pre-flighted before anything is deployed;
it serves until Ctrl-C or SIGTERM, then drains and stops the Ray it started.
docs/serving.md ("Stopping") has the exit codes and the steps.
"""

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal, TextIO

from capgraph.engine.errors import GraphInvalid
from capgraph.serve.cluster import LocalRay, StopSignals, wait_until_stopped

EXIT_INVALID = 2
EXIT_DOES_NOT_FIT = 3
EXIT_DEPLOY_FAILED = 1
EXIT_SIGNALLED = 128  # + the signal's number, as shells report it: 130 Ctrl-C, 143 SIGTERM


def serve_graph(
    path: str | Sequence[str],
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
    """Serve one graph file, or several together, on Ray Serve; returns an exit code.

    Several graphs are each a capability of their own at `/<capability>`, and models they
    load alike run once for all of them (`serve.operate.together`). `address` joins a running Ray
    cluster (default: start a local one). `dry_run` prints the deployments the planner
    chose, with its reasons, and the pre-flight (JSON with `as_json`) without deploying.
    `tuned` names a tuned overlay (default: the one `capgraph tune` wrote for this graph on
    this machine; False ignores it). `options` are further `CapabilityArgs` fields (e.g.
    `{"request_timeout_s": 30}`). Blocking, it serves until Ctrl-C or SIGTERM, then drains
    and stops what it started.
    """
    from capgraph.serve.app import load_graph
    from capgraph.serve.operate.together import applications

    out = out or sys.stdout
    paths = [str(path)] if isinstance(path, (str, os.PathLike)) else [str(p) for p in path]
    settings = {"fuse": fuse, "batching": batching, "preflight": preflight, "tuned": tuned, **(options or {})}
    try:
        plans = [load_graph(p) for p in paths]  # before Ray: a typo costs no cluster start
        apps = applications(paths, plans, settings)
        if dry_run:
            return _dry_run(apps, address, as_json, out)
    except GraphInvalid as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INVALID
    except ClusterUnreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_DEPLOY_FAILED

    signals = StopSignals(out)
    signals.take()  # from before ray.init: a SIGTERM while Ray starts stops it like Ctrl-C too
    code = EXIT_DEPLOY_FAILED
    try:
        with signals.keeping_sigterm():
            _start_ray(address, out)
        code = deploy_apps(apps, host, port, out)
        if code == 0 and blocking:
            wait_until_stopped()
        return code
    except ClusterUnreachable as exc:
        print(exc, file=sys.stderr)
        return code
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the capability was healthy
        code = EXIT_SIGNALLED + signals.received
        return code
    finally:
        stopping = blocking or code != 0
        signals.stopping()  # from here on a second Ctrl-C or SIGTERM is noted, not obeyed: the cleanup runs to its end
        try:
            if stopping:
                _shut_down([a.name for a in apps], out)
        finally:
            signals.give_back(ray_running=not stopping)


class ClusterUnreachable(RuntimeError):
    """`--address` names no Ray cluster this process can join."""


def _start_ray(address: str | None, out: TextIO, *, quiet: bool = False) -> None:
    """Join the cluster at `address` (`auto`: the one `ray start` left on this machine) and
    say which, or start a local Ray of this process's own.

    Without an address `ray.init()` would silently join a cluster `ray start` left running
    (or `RAY_ADDRESS`), whose machines may lack this process's settings: capgraph starts
    its own unless asked, and says so. A cluster started with `ray start` uses token
    authentication (Ray 2.52 and later): joining finds its token where `ray start` wrote it
    (`~/.ray/auth_token`) or in `RAY_AUTH_TOKEN` / `RAY_AUTH_TOKEN_PATH`.
    """
    import ray
    from ray._private import services

    if address is None:
        running = os.environ.get("RAY_ADDRESS") or services.find_bootstrap_address(None)
        ray.init(
            address="local", namespace="serve", log_to_driver=not quiet, logging_level="WARNING" if quiet else "INFO"
        )
        if running:
            print(
                f"note: a Ray cluster is running at {running}; capgraph started a local Ray of its own. "
                f"Pass --address {running if os.environ.get('RAY_ADDRESS') else 'auto'} to serve on that cluster.",
                file=out,
                flush=True,
            )
        return
    try:
        ray.init(
            address=address, namespace="serve", log_to_driver=not quiet, logging_level="WARNING" if quiet else "INFO"
        )
    except Exception as exc:  # ConnectionError, an authentication error, a bad address: Ray's words say which
        raise ClusterUnreachable(_join_failure(address, exc)) from None
    from capgraph.serve.cluster import cluster_from_ray

    cluster = cluster_from_ray()
    at = ray.get_runtime_context().gcs_address if address == "auto" else address
    print(f"joined the Ray cluster at {at}: {cluster.describe()}", file=out, flush=True)
    for machine in cluster.machines:
        print(f"  {machine.name}: {machine.cpus:g} CPU, {machine.gpus} GPU", file=out, flush=True)


def _join_failure(address: str, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ""
    if "token" in text.lower() or "authentic" in text.lower():
        hint = (
            " The cluster uses token authentication: copy its token (`ray get-auth-token` on the head) to "
            "~/.ray/auth_token here, or set RAY_AUTH_TOKEN."
        )
    elif address != "auto":
        hint = " Check the head's GCS address (`ray status` on the head prints it; port 6379 by default)."
    return f"could not join the Ray cluster at '{address}': {text}.{hint}"


def _dry_run(apps: Sequence[Any], address: str | None, as_json: bool, out: TextIO) -> int:
    """The plan and its pre-flight: against this machine as described, or (with `address`)
    against the live cluster, which it joins and leaves without deploying anything."""
    from capgraph.serve.operate.together import plan_all

    if address is None:
        blueprints = plan_all(apps)
    else:
        import ray

        _start_ray(address, sys.stderr if as_json else out, quiet=True)
        try:
            blueprints = plan_all(apps)
        finally:
            ray.shutdown()
    summaries = [
        b.describe() | {"application": a.name, "route_prefix": a.route_prefix} for a, b in zip(apps, blueprints)
    ]
    if as_json:
        json.dump(summaries[0] if len(summaries) == 1 else {"applications": summaries}, out, indent=2)
        out.write("\n")
    else:
        problems = summaries[0]["problems"] if len(summaries) > 1 else []  # the pre-flight of them all: said once
        for summary in summaries:
            _print_blueprint(summary | ({"problems": []} if problems else {}), out)
        for problem in problems:
            print(f"does not fit: {problem}", file=out)
    fails = any(b.problems for b in blueprints) and apps[0].args.preflight == "fail"
    return EXIT_DOES_NOT_FIT if fails else 0


def deploy_apps(apps: Sequence[Any], host: str, port: int, out: TextIO) -> int:
    """Plan `apps` (`serve.operate.together.applications`) against the connected cluster,
    pre-flight them together, start Serve (or find it running) and deploy them, shared
    models first; 0 once every one is healthy."""
    from ray import serve

    from capgraph.serve.app import bind, bind_model, fit_report
    from capgraph.serve.operate.together import plan_all

    try:
        blueprints = plan_all(apps)
    except GraphInvalid as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INVALID
    refused = next((b for b in blueprints if b.problems), None)
    if refused is not None and apps[0].args.preflight == "fail":
        if len(apps) == 1:
            print(fit_report(refused), file=sys.stderr)
        else:
            print(
                f"the graphs served together ({', '.join(a.name for a in apps if not a.model)}, "
                f"and the models they share) do not fit the cluster ({refused.cluster.describe()}):",
                file=sys.stderr,
            )
            print("\n".join(f"  - {p}" for p in refused.problems), file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    serve.start(http_options={"host": host, "port": port})
    url = f"http://{host}:{port}"
    for app, blueprint in zip(apps, blueprints):  # shared models first: the graphs' ingresses call them
        started = time.monotonic()
        try:
            if app.model:
                serve.run(bind_model(blueprint, app.args), name=app.name, route_prefix=None)
            else:
                serve.run(bind(blueprint, app.args), name=app.name, route_prefix=app.route_prefix)
        except Exception as exc:  # Ray's own message says which replica failed and why
            print(f"deploying '{app.name}' failed: {exc}", file=sys.stderr)
            return EXIT_DEPLOY_FAILED
        deploying = time.monotonic() - started
        if app.model:
            users = ", ".join(f"{cap}'s {node}" for cap, node in app.users)
            print(f"shared model '{app.name}' is healthy after {deploying:.1f}s, serving {users}", file=out, flush=True)
            continue
        base = url + (app.route_prefix.rstrip("/") if app.route_prefix else "")
        local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}" + (
            app.route_prefix.rstrip("/") if app.route_prefix else ""
        )
        waited = _until_healthy(f"{local}/health")
        print(
            f"capability '{app.name}' is healthy after {waited:.1f}s from the start of this process (deploying took "
            f"{deploying:.1f}s): POST {base}/v1/{app.name} (schema: {base}/v1/{app.name}/schema, "
            f"health: {base}/health, docs: {base}/docs)",
            file=out,
            flush=True,
        )
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


def _shut_down(names: Sequence[str], out: TextIO) -> None:
    """Drain, then stop the local Ray this process started, or leave a joined cluster.

    On its own Ray, `serve.shutdown()` drains every replica; on a joined cluster only this
    graph's applications are deleted (drained the same way): the cluster may serve other
    graphs, and Serve stays up for them. The ingress's lifespan ends there, which is where
    the Livepeer registrar unregisters from the orchestrator.
    """
    import ray
    from ray import serve

    from capgraph.serve.compile import MODEL_APP_PREFIX

    node = ray._private.worker._global_node  # set as soon as ray.init started or found a node
    if node is None and not ray.is_initialized():
        return
    local = LocalRay.of(node)
    print(
        "shutting down: draining, unregistering, "
        f"{'stopping the local Ray' if local else 'disconnecting from the Ray cluster'}",
        file=out,
        flush=True,
    )
    started = time.monotonic()
    try:
        if (
            ray.is_initialized() and local
        ):  # else ray.init was cut short: nothing deployed, and serve.shutdown would start a Ray
            serve.shutdown()
        elif ray.is_initialized():
            running = serve.status().applications
            others = [name for name in running if name not in names]
            for name in reversed(names):  # the graphs, then the models they shared
                if name not in running:
                    continue
                if name.startswith(MODEL_APP_PREFIX) and others:  # another session's graphs may call it
                    print(
                        f"left the shared model '{name}' running: the cluster serves {', '.join(others)} too "
                        f"(`serve shutdown` or a `serve deploy` without it removes it)",
                        file=out,
                        flush=True,
                    )
                    continue
                serve.delete(name)
    finally:
        processes = (
            local.processes() if local else []
        )  # before ray.shutdown: afterwards the agents have no parent to find them by
        ray.shutdown()
        if local:
            local.stop_leftovers(processes, out)
    print(f"stopped in {time.monotonic() - started:.1f}s", file=out, flush=True)


def _print_blueprint(summary: dict[str, Any], out: TextIO) -> None:
    print(f"{summary['capability']}: {summary['demand']} on {summary['cluster']}", file=out)
    for d in summary["deployments"]:
        reads = f" <- {', '.join(d['reads_from'])}" if d["reads_from"] else ""
        if d["runs_in"]:
            print(
                f"  {d['name']}: {', '.join(d['nodes'])} | "
                f"runs in the shared model application '{d['runs_in']}'{reads}",
                file=out,
            )
            continue
        print(
            f"  {d['name']}: {', '.join(d['nodes'])} | "
            f"gpu {d['num_gpus']:g} cpu {d['num_cpus']:g} threads {d['threads']} | "
            f"replicas {d['replicas']} | batch {d['max_batch_size']} / {d['batch_wait_s'] * 1000:g} ms | "
            f"max_ongoing_requests {d['max_ongoing_requests']}{reads}",
            file=out,
        )
        for reason in d["why"]:
            print(f"      {reason}", file=out)
    if summary["placement"]:
        print(
            "  placement (Ray spreads a deployment's replicas over machines; GPU fractions pack onto one GPU):",
            file=out,
        )
        for p in summary["placement"]:
            print(f"    {p['where']}", file=out)
    for note in summary["notes"]:
        print(f"  note: {note}", file=out)
    for problem in summary["problems"]:
        print(f"  does not fit: {problem}", file=out)
