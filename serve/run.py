"""`capgraph serve GRAPH`: the same builder as `serve run`, with checks before Ray starts.

    from serve.run import serve_graph
    raise SystemExit(serve_graph("graphs/hybrid.yaml", host="127.0.0.1", port=8000))

The graph is validated before Ray is started, and pre-flighted against the cluster before
anything is deployed; the call returns once every node is loaded and warm (or blocks
serving until Ctrl-C). Exit codes: 0 served, 2 invalid graph, 3 does not fit, 1 the
deployment failed.
"""

import json
import sys
import time
from typing import Any, Literal, TextIO

from engine.errors import GraphInvalid

EXIT_INVALID = 2
EXIT_DOES_NOT_FIT = 3
EXIT_DEPLOY_FAILED = 1


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
    further `CapabilityArgs` fields (e.g. `{"request_timeout_s": 30}`).
    """
    from serve.app import CapabilityArgs, _fit_report, bind, load_graph, plan_app

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
    from ray import serve

    ray.init(address=address, namespace="serve", log_to_driver=True)
    code = EXIT_DEPLOY_FAILED
    try:
        try:
            blueprint = plan_app(args)
        except GraphInvalid as exc:
            print(exc.render(), file=sys.stderr)
            return EXIT_INVALID
        if blueprint.problems and preflight == "fail":
            print(_fit_report(blueprint), file=sys.stderr)
            return EXIT_DOES_NOT_FIT
        serve.start(http_options={"host": host, "port": port})
        started = time.monotonic()
        try:
            serve.run(bind(blueprint, args), name=plan.capability, route_prefix="/")
        except Exception as exc:  # Ray's own message says which replica failed and why
            print(f"deploying '{plan.capability}' failed: {exc}", file=sys.stderr)
            return EXIT_DEPLOY_FAILED
        url = f"http://{host}:{port}"
        print(f"capability '{plan.capability}' is healthy after {time.monotonic() - started:.1f}s: "
              f"POST {url}/v1/{plan.capability} (schema: {url}/v1/{plan.capability}/schema, health: {url}/health, docs: {url}/docs)",
              file=out, flush=True)
        if blocking:
            try:
                while True:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                print("shutting down", file=out)
        code = 0
        return code
    finally:
        if blocking or code != 0:
            serve.shutdown()
            ray.shutdown()


def deployments(plan: Any) -> dict[str, tuple[str, ...]]:
    """Deployment name -> its nodes, as the builder would compile `plan` here (this
    machine's tuned overlay included, when it matches). No Ray, no torch: for pictures
    (`capgraph render`), where only the grouping matters."""
    from serve import preflight
    from serve.compiler import compile_plan
    from serve.tune import find_overlay

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
