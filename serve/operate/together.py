"""Several graphs served on one cluster: `capgraph serve graphs/a.yaml graphs/b.yaml`.

Each graph is a capability of its own, a Serve application at `/<capability>` (one graph
alone stays at `/`). A model that nodes of two or more of them load alike runs once, in an
application of its own with no route (`serve.compile.sharing`), deployed before the graphs that
call it. The pre-flight places every replica of every application on the cluster at once,
so a shared model's GPU share is counted once.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from capgraph.engine.errors import GraphError, GraphInvalid
from capgraph.engine.mounts import section_names
from capgraph.engine.plan import Plan
from capgraph.serve.app import Blueprint, CapabilityArgs, current_cluster, plan_app
from capgraph.serve.cluster import preflight
from capgraph.serve.compile import INGRESS, Compiled, application, sharing

MODEL_BUILDER = "capgraph.serve.app:build_model"


@dataclass(frozen=True)
class App:
    name: str
    args: CapabilityArgs
    route_prefix: str | None
    """None: no HTTP route (a shared model)."""
    model: bool = False
    """A shared model's application (`app.build_model`), else a graph's (`app.build`)."""
    users: tuple[tuple[str, str], ...] = ()
    """A shared model's: (capability, node id) of the nodes it runs for."""


def applications(paths: Sequence[str], plans: Sequence[Plan], settings: dict[str, Any]) -> list[App]:
    """The applications serving `paths` (validated as `plans`), shared models first.
    `settings`: the `CapabilityArgs` fields every application gets."""
    names = [p.capability for p in plans]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise GraphInvalid(
            [
                GraphError(
                    "capability",
                    f"two graphs served together are both capability '{twice[0]}': each needs a name of its own",
                    plans[0].file,
                )
            ]
        )
    # fuse: all keeps every node in its graph's one deployment: nothing runs elsewhere
    shared = sharing.find_shared(plans) if len(plans) > 1 and settings.get("fuse") != "all" else {}
    if len(plans) + len(shared) > 1:  # each is planned on its share of the machines
        settings = settings | {"share_of": len(plans) + len(shared)}
    apps = [
        App(m.app, CapabilityArgs(graph=m.graph, **settings), None, model=True, users=m.users) for m in shared.values()
    ]
    for path, plan in zip(paths, plans):
        uses = {node_id: m.app for node_id, m in sharing.shared_in(plan, shared).items()}
        prefix = "/" if len(plans) == 1 else f"/{plan.capability}"
        apps.append(App(plan.capability, CapabilityArgs(graph=str(path), shared=uses, **settings), prefix))
    return apps


def plan_all(apps: Sequence[App], cluster: preflight.Cluster | None = None) -> list[Blueprint]:
    """Each application's blueprint; with several, the pre-flight is the one of them all
    together (each blueprint's `problems` then says what of them all does not fit)."""
    if len(apps) == 1:
        return [plan_app(apps[0].args, cluster, ingress=not apps[0].model)]
    cluster = cluster or current_cluster()
    # Each application is planned on an even share of every machine's CPUs and memory (the
    # planner would otherwise give each all of them), as its builder in the cluster would
    # plan it (`share_of`); "share": not the live cluster, so each plan_app leaves the
    # machines' plug-ins to the one check below.
    share = cluster.share(len(apps), source="share")
    # (each plan_app's own pre-flight on its share is replaced by the one of them all below)
    blueprints = [replace(plan_app(a.args, share, ingress=not a.model), cluster=cluster) for a in apps]
    units = [
        replace(u, name=f"{a.name}/{u.name}")
        for a, b in zip(apps, blueprints)
        for u in b.compiled.units
        if u.remote is None
    ]
    ingresses = sum(a.args.ingress_replicas for a in apps if not a.model)
    together = Compiled(blueprints[0].compiled.plan, tuple(units), ())
    fit = preflight.place(together, cluster, apps[0].args.ingress_cpus, ingresses)
    checked = cluster.source == "ray" and apps[0].args.preflight != "off"
    plugins = [p for b in blueprints for p in preflight.check_plugins(b.compiled.plan)] if checked else []
    problems = tuple(fit.problems) + tuple(dict.fromkeys(plugins))
    return [
        Blueprint(
            b.compiled,
            b.cluster,
            tuple(n for n in b.notes if preflight.SCALING not in n) + tuple(n for n in fit.notes if _names(n, a)),
            problems,
            tuple(p for p in fit.placed if _of(p, a)),
        )
        for a, b in zip(apps, blueprints)
    ]


def _names(note: str, app: App) -> bool:
    return f"deployment '{app.name}/" in note


def _of(placed: preflight.Placed, app: App) -> bool:
    return placed.deployment.startswith(f"{app.name}/") or (placed.deployment == INGRESS and not app.model)


def serve_config(paths: Sequence[str], plans: Sequence[Plan]) -> dict[str, Any]:
    """A Serve config of several graph files' applications, shared models first: what
    `capgraph serve A B` deploys, for `serve deploy` (or a RayService's serveConfigV2). Each
    graph's entry is its file's own (aliases resolved, so the cluster needs no copy of the
    file), moved to `/<capability>` and told which of its nodes run in a shared model."""
    entries = []
    files = {plan.capability: application(path) for path, plan in zip(paths, plans)}
    for app in applications(paths, plans, {}):
        if app.model:  # the settings and environment of the first graph that uses it
            first = files[app.users[0][0]]
            args = {k: v for k, v in first["args"].items() if k not in {"graph", "shared", "fuse", *section_names()}}
            entries.append(
                {
                    "name": app.name,
                    "route_prefix": None,
                    "import_path": MODEL_BUILDER,
                    "args": args | {"graph": app.args.graph} | _share_of(app),
                }
                | ({"runtime_env": first["runtime_env"]} if first.get("runtime_env") else {})
            )
            continue
        entry = files[app.name]
        args = dict(entry["args"]) | ({"shared": app.args.shared} if app.args.shared else {}) | _share_of(app)
        entries.append({**entry, "name": app.name, "route_prefix": app.route_prefix, "args": args})
    return {"applications": entries}


def _share_of(app: App) -> dict[str, int]:
    """The builder plans the application on its share of the machines, as `plan_all` does."""
    return {"share_of": app.args.share_of} if app.args.share_of > 1 else {}
