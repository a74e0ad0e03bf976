"""The Ray Serve application builder: `import_path: capgraph.serve.app:build`.

A graph file's `applications:` entry names this builder and carries the graph in `args`,
so `serve run FILE`, `serve deploy FILE` and `capgraph serve` build the same way: validate,
compile into units, pre-flight against the cluster, bind the unit replicas and the ingress.
An invalid graph or one that does not fit never reaches Ray. docs/serving.md explains the
steps and where an invalid graph stops.
"""

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import RayServeException

from capgraph.engine.errors import GraphError, GraphInvalid
from capgraph.engine.mounts import mounts, section_names
from capgraph.engine.plan import Plan
from capgraph.engine.validate import load_plan, plan_from_data
from capgraph.engine.values import MAX_PIXELS
from capgraph.engine.yamlload import YamlProblem, load_yaml
from capgraph.serve.capability import MAX_BODY_BYTES, RETRY_AFTER_S, Capability, Settings
from capgraph.serve.cluster import environment, preflight, stop_local_serve_run
from capgraph.serve.compile import (
    INGRESS,
    Compiled,
    Cost,
    Remote,
    Unit,
    compile_plan,
    find_overlay,
    machine_for,
    measured_costs,
    sharing,
)
from capgraph.serve.replica import UnitReplica, stuck_after

log = logging.getLogger("ray.serve")


class MachineArgs(BaseModel):
    """One machine the application is planned for (`CapabilityArgs.machines`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=253)
    cpus: float = Field(gt=0, le=100_000)
    gpus: int = Field(0, ge=0, le=64)
    memory_bytes: float = Field(0, ge=0, description="memory for tasks and actors (0: unknown)")


class CapabilityArgs(BaseModel):
    """The `args` of a capgraph application in a Serve config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    graph: dict[str, Any] | str = Field(
        description="the graph's sections (capability, inputs, nodes, outputs...) or a graph file path"
    )
    fuse: Literal["auto", "groups", "all", "none"] = Field(
        "auto",
        description="auto: the planner fuses cheap nodes into the bottleneck's deployment (groups as written); "
        "groups: fuse only nodes sharing a `group`; all: one deployment; none: one per node",
    )
    tuned: str | bool | None = Field(
        None,
        description="a tuned overlay file (capgraph tune); default: this machine's own for "
        "this graph, where it matches; false: ignore overlays",
    )
    batching: bool = Field(True, description="batch concurrent frames per node (false: every call runs alone)")
    preflight: Literal["fail", "warn", "off"] = Field(
        "fail", description="what to do when the graph does not fit the cluster"
    )
    gpu_memory_gib: float | None = Field(None, gt=0, le=1024, description="GPU memory for deriving unset GPU fractions")
    max_pixels: int = Field(MAX_PIXELS, ge=64, le=1 << 28, description="largest image a request may send")
    max_body_bytes: int = Field(MAX_BODY_BYTES, ge=1024, le=1 << 31, description="largest request body")
    request_timeout_s: float = Field(60.0, gt=0, le=3600, description="answer 504 past this")
    ingress_replicas: int = Field(1, ge=1, le=1024)
    ingress_cpus: float = Field(0.25, gt=0, le=64)
    max_concurrency: int = Field(256, ge=1, le=100_000, description="requests one ingress replica holds at once")
    max_queued_requests: int = Field(
        256,
        ge=1,
        le=100_000,
        description="requests Ray's HTTP proxy queues for the ingress "
        "once every ingress replica holds max_concurrency; the next gets 503 with Retry-After",
    )
    health_check_period_s: float = Field(
        10.0, gt=0, le=3600, description="how often Ray calls each replica's check_health"
    )
    stuck_after_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="a node replica whose batch runs longer than this "
        "fails its health check and Ray replaces it (a hung node); default: max(3 x "
        "request_timeout_s, request_timeout_s + 30)",
    )
    machines: list[MachineArgs] | None = Field(
        None,
        description="plan and pre-flight for these machines instead of the "
        "connected cluster's: where the cluster grows after the build (KubeRay starts "
        "workers once the head is up; `capgraph kuberay` writes its worker machines here)",
    )
    share_of: int = Field(
        1,
        ge=1,
        le=1000,
        description="applications served together on this cluster (capgraph serve A B "
        "and capgraph serve-config set it): this one is planned on 1/share_of of every machine's CPUs and memory",
    )
    shared: dict[str, str] = Field(
        default_factory=dict,
        description="node id -> the application running its model for "
        "several graphs (`capgraph serve A B` sets it; serve.compile.sharing): no copy of it is deployed here",
    )

    @model_validator(mode="after")
    def _stuck_after_the_timeout(self) -> "CapabilityArgs":
        """A batch still inside its deadline is not hung: replacing its replica would fail it."""
        if self.stuck_after_s is not None and self.stuck_after_s < self.request_timeout_s:
            raise ValueError(
                f"stuck_after_s ({self.stuck_after_s:g}) must be at least request_timeout_s "
                f"({self.request_timeout_s:g})"
            )
        return self


# Each installed mount's section (engine.mounts: Livepeer's `livepeer`) is an argument too,
# read from the graph file when `graph` is a path; the model stays strict about every other key.
CapabilityArgs = create_model(
    "CapabilityArgs",
    __base__=CapabilityArgs,
    __doc__=CapabilityArgs.__doc__,
    **{
        name: (
            dict[str, Any] | None,
            Field(None, description=f"the graph file's `{name}:` section (a mount's settings)"),
        )
        for name in sorted(section_names())
    },
)


class BuildRefused(RayServeException):
    """The graph is invalid or does not fit: Serve records the message without retrying."""


@dataclass(frozen=True)
class Blueprint:
    """Everything decided before Ray is asked for anything."""

    compiled: Compiled
    cluster: preflight.Cluster
    notes: tuple[str, ...]
    """Warnings and decisions to show the user (CPU fallback, derived fractions)."""
    problems: tuple[str, ...]
    """What does not fit the cluster."""
    placed: tuple[preflight.Placed, ...] = ()
    """Where each replica would go, machine by machine (empty with preflight off)."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (what `capgraph serve --dry-run --json` prints)."""
        return {
            "capability": self.compiled.plan.capability,
            "cluster": self.cluster.describe(),
            "demand": preflight.demand(self.compiled),
            "deployments": [
                {
                    "name": u.name,
                    "nodes": list(u.nodes),
                    "num_gpus": u.num_gpus,
                    "num_cpus": u.num_cpus,
                    "threads": u.threads,
                    "replicas": u.replicas if isinstance(u.replicas, int) else u.replicas.model_dump(),
                    "max_batch_size": u.max_batch_size,
                    "batch_wait_s": u.batch_wait_s,
                    "max_ongoing_requests": u.max_ongoing_requests,
                    "reads_from": list(u.upstream),
                    "gpu": u.gpu_note,
                    "why": list(u.why),
                    "runs_in": u.remote.app if u.remote else None,
                }
                for u in self.compiled.units
            ],
            "placement": [
                {
                    "replica": p.replica,
                    "deployment": p.deployment,
                    "machine": p.machine,
                    "gpus": [{"index": i, "fraction": f} for i, f in p.gpus],
                    "num_cpus": p.cpus,
                    "where": p.describe(),
                }
                for p in self.placed
            ],
            "notes": list(self.notes),
            "problems": list(self.problems),
        }


def build(args: CapabilityArgs) -> Application:
    """The builder `serve run` and `serve deploy` call."""
    try:
        blueprint = plan_app(args)
    except GraphInvalid as exc:
        _refuse(exc.render())
    if blueprint.problems and args.preflight == "fail":
        _refuse(fit_report(blueprint))
    return bind(blueprint, args)


def plan_app(args: CapabilityArgs, cluster: preflight.Cluster | None = None, *, ingress: bool = True) -> Blueprint:
    """Validate, compile and pre-flight; raises GraphInvalid for an invalid graph.
    `cluster` defaults to the connected Ray cluster, else this machine. `ingress=False`:
    an application with no HTTP ingress of its own (a shared model's)."""
    plan = load_graph(args.graph)
    _check_mounts(plan, mount_sections(args))
    cluster = cluster or _planned_for(args) or current_cluster()
    # served with others (`share_of`), it is planned on its share of the machines and fitted
    # on the whole (where the others' replicas go is their builders' to check); a share
    # given already (`serve.operate.together.plan_all`) is this application's
    share = cluster.share(args.share_of) if args.share_of > 1 and cluster.source != "share" else cluster
    memory = args.gpu_memory_gib or (preflight.gpu_memory_gib(cluster) if cluster.gpus else None)
    overlay, tuned_notes = find_overlay(plan, args.tuned, "cuda" if cluster.gpus else "cpu")
    ingress_replicas = args.ingress_replicas if ingress else 0
    machine = machine_for(
        [(m.cpus, m.memory) for m in share.machines], cluster.gpus, args.ingress_cpus * ingress_replicas
    )
    measured = overlay.costs() if overlay else _served_costs(plan, args, "cuda" if cluster.gpus else "cpu", tuned_notes)
    compiled = compile_plan(
        plan,
        fuse=args.fuse,
        batching=args.batching,
        weight_bytes=preflight.weight_file_bytes,
        gpu_memory_gib=memory,
        machine=machine,
        tuned=overlay.nodes if overlay else None,
        measured=measured,
        remote=_remotes(plan, args.shared),
    )
    notes = tuned_notes + list(compiled.warnings) + [str(w) for w in plan.warnings]
    notes += [
        f"node(s) {nodes} come from the plug-in {package} {version}; every machine that runs them needs it"
        for package, (version, nodes) in preflight.plugin_origins(plan).items()
    ]
    wanted = [u for u in compiled.units if u.num_gpus > 0]
    if wanted and cluster.gpus == 0:
        names = ", ".join(
            n for u in wanted for n in u.nodes if plan.nodes[n].family.uses_gpu or plan.nodes[n].spec.resources.gpu
        )
        compiled = compiled.on_cpu("no GPU in the cluster: CPU fallback")
        notes.append(
            f"no GPU in the cluster ({cluster.describe()}): running {names} on the CPU in float32; "
            "the same graph uses the GPU where there is one."
        )
    fit = preflight.place(compiled, cluster, args.ingress_cpus, ingress_replicas) if args.preflight != "off" else None
    problems = list(fit.problems) if fit else []
    notes += list(fit.notes) if fit else []
    if args.preflight != "off" and cluster.source == "ray":
        problems += preflight.check_plugins(plan)
    for note in notes:
        log.warning("capgraph: %s", note)
    return Blueprint(compiled, cluster, tuple(notes), tuple(problems), fit.placed if fit else ())


def _remotes(plan: Plan, shared: dict[str, str]) -> dict[str, Remote]:
    """The nodes whose model another application runs; a node that would load something
    else than that application's model is refused (its load-time params differ)."""
    remotes = {}
    for node_id, app in shared.items():
        if node_id not in plan.nodes:
            raise GraphInvalid(
                [GraphError("shared", f"args.shared names node '{node_id}', which the graph does not have", plan.file)]
            )
        key = sharing.share_key(plan.nodes[node_id])
        if key is None or sharing.MODEL_APP_PREFIX + key != app:
            raise GraphInvalid(
                [
                    GraphError(
                        "shared",
                        f"node '{node_id}' does not load the model application '{app}' runs "
                        f"(its family or load-time params differ)",
                        plan.file,
                        node=node_id,
                    )
                ]
            )
        remotes[node_id] = Remote(app, plan.nodes[node_id].family.type, sharing.alias(plan, node_id))
    return remotes


def build_model(args: CapabilityArgs) -> Application:
    """The builder of a model shared by several graphs (`serve.compile.sharing`): the one node of
    `args.graph` as a deployment with no HTTP route, called by those graphs' ingresses."""
    try:
        blueprint = plan_app(args, ingress=False)
    except GraphInvalid as exc:
        _refuse(exc.render())
    if blueprint.problems and args.preflight == "fail":
        _refuse(fit_report(blueprint))
    return bind_model(blueprint, args)


def bind_model(blueprint: Blueprint, args: CapabilityArgs) -> Application:
    """A shared model's one deployment, as its application's ingress (it has no route)."""
    (unit,) = blueprint.compiled.units
    return _bind_unit(blueprint.compiled, unit, args)


def _served_costs(plan: Plan, args: CapabilityArgs, device: str, notes: list[str]) -> dict[str, Cost] | None:
    """Costs replicas measured serving this graph here before (`serve.compile.overlay.measured_costs`),
    unless overlays are switched off; a note says they are used."""
    if args.tuned is False:
        return None
    costs = measured_costs(plan, device)
    if costs:
        shown = ", ".join(f"{n} {c.per_frame(min(c.batch_ms)):.3g} ms" for n, c in costs.items())
        notes.append(
            f"costs measured while serving this graph on this machine ({shown} a frame); "
            "capgraph tune measures them thoroughly"
        )
    return costs or None


def load_graph(graph: dict[str, Any] | str) -> Plan:
    """The graph from a builder's args: its sections, or a file path."""
    if isinstance(graph, str):
        return load_plan(graph)
    return plan_from_data(graph, "args.graph")


def mount_sections(args: CapabilityArgs) -> dict[str, dict[str, Any] | None]:
    """Each mount's section: as passed in args, else from the graph file when `graph` is a path."""
    given = {name: getattr(args, name) for name in section_names()}
    if all(v is not None for v in given.values()) or not isinstance(args.graph, str):
        return given
    try:
        tree = load_yaml(Path(args.graph).read_text(encoding="utf-8"))
    except (OSError, YamlProblem):
        return given
    tree = tree if isinstance(tree, dict) else {}
    return {
        name: value if value is not None else (dict(tree[name]) if isinstance(tree.get(name), dict) else None)
        for name, value in given.items()
    }


def _check_mounts(plan: Plan, sections: dict[str, dict[str, Any] | None]) -> None:
    """Every mount's section must be valid before anything starts."""
    for name, mount in mounts().items():
        try:
            mount.settings(plan, sections.get(name))
        except ValueError as exc:
            raise GraphInvalid([GraphError(name, str(exc), plan.file)]) from None


def request_timeout(args: CapabilityArgs, plan: Plan) -> float:
    """The request timeout: the one `args` set, else the longest any node's family asks for
    (`Node.request_timeout_s`: a clip takes minutes), at least the default."""
    if "request_timeout_s" in args.model_fields_set:
        return args.request_timeout_s
    asked = [n.family.request_timeout_s for n in plan.nodes.values() if n.family.request_timeout_s]
    return max([args.request_timeout_s, *asked])


def bind(blueprint: Blueprint, args: CapabilityArgs) -> Application:
    """One UnitReplica deployment per unit, and the ingress holding their handles."""
    compiled = blueprint.compiled
    args = args.model_copy(update={"request_timeout_s": request_timeout(args, compiled.plan)})
    handles = {unit.name: _bind_unit(compiled, unit, args) for unit in compiled.units if unit.remote is None}
    settings = Settings(
        max_pixels=args.max_pixels,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout_s,
        mounts=mount_sections(args),
        health_check_period_s=args.health_check_period_s,
    )
    # Ray's proxy queues without bound by default: past `max_queued_requests` it answers
    # 503 with Retry-After itself, as the ingress's own admission limit does.
    backpressure = BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S)
    ingress = serve.deployment(Capability).options(
        name=INGRESS,
        num_replicas=args.ingress_replicas,
        max_ongoing_requests=args.max_concurrency,
        max_queued_requests=args.max_queued_requests,
        backpressure_config=backpressure,
        ray_actor_options=environment.with_forwarded({"num_cpus": args.ingress_cpus}),
        **_rollover(args),
    )
    return ingress.bind(compiled, handles, settings)


def _rollover(args: CapabilityArgs) -> dict[str, Any]:
    """A redeploy starts the new replicas before it stops the old ones (surge), and an old
    replica finishes what it holds before it goes: an update under load fails nothing."""
    return {"max_surge_percent": 100, "graceful_shutdown_timeout_s": args.request_timeout_s + 5.0}


def _bind_unit(compiled: Compiled, unit: Unit, args: CapabilityArgs) -> Application:
    options = unit.deployment_options() | {"health_check_period_s": args.health_check_period_s} | _rollover(args)
    options["ray_actor_options"] = environment.with_forwarded(options["ray_actor_options"])
    log.info(
        "capgraph: deployment '%s' runs %s (%s GPU, %s CPU, %d threads, batch %d, wait %.1f ms): %s",
        unit.name,
        ", ".join(unit.nodes),
        unit.num_gpus,
        unit.num_cpus,
        unit.threads,
        unit.max_batch_size,
        unit.batch_wait_s * 1000,
        "; ".join(unit.why),
    )
    # never under the timeout: a family's longer one (`request_timeout`) may pass a stuck_after_s set for the default
    stuck_after_s = max(args.stuck_after_s or stuck_after(args.request_timeout_s), args.request_timeout_s)
    return serve.deployment(UnitReplica).options(**options).bind(compiled.plan, unit, stuck_after_s)


def _planned_for(args: CapabilityArgs) -> preflight.Cluster | None:
    if not args.machines:
        return None
    return preflight.Cluster(
        tuple(preflight.Machine(m.name, m.cpus, m.gpus, m.memory_bytes) for m in args.machines), source="args"
    )


def current_cluster() -> preflight.Cluster:
    """The connected Ray cluster, else this machine as a local Ray would see it."""
    import ray

    if ray.is_initialized():
        return preflight.cluster_from_ray()
    return preflight.local_cluster(probe_gpus=True)


def fit_report(blueprint: Blueprint) -> str:
    lines = [
        f"capability '{blueprint.compiled.plan.capability}' does not fit the cluster "
        f"({preflight.demand(blueprint.compiled)} wanted; the cluster has {blueprint.cluster.describe()}):"
    ]
    lines += [f"  - {p}" for p in blueprint.problems]
    lines.append(
        "Lower 'resources.gpu' or 'replicas' on these nodes, put nodes in a 'group', or pass args "
        "preflight: warn to deploy anyway (e.g. on an autoscaling cluster)."
    )
    return "\n".join(lines)


def _refuse(message: str) -> None:
    """Stop the build with `message`: exit 2 in the CLI process, a failed application
    (and a stopped local `serve run`) inside the cluster."""
    print(message, file=sys.stderr, flush=True)
    if not _inside_cluster():
        raise SystemExit(2)
    stop_local_serve_run(log)
    raise BuildRefused(message)


def _inside_cluster() -> bool:
    """Whether this is a Ray worker (the controller's build task) rather than a driver."""
    import ray
    from ray._private.worker import WORKER_MODE, global_worker

    return ray.is_initialized() and global_worker.mode == WORKER_MODE
