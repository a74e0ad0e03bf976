"""Pre-flight: will the compiled graph fit the cluster, before anything is deployed?

Every replica is placed machine by machine as Ray places it, and whatever finds no room
is named (Ray would leave it PENDING without a word). Also: what the cluster is, its GPU
memory, and the bytes of a node's weight files. docs/serving.md ("Pre-flight").
"""

import copy
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from capgraph.engine.plan import Plan, PlannedNode
from capgraph.serve.compile import GIB, INGRESS, Compiled, Unit, compile_plan, find_overlay

log = logging.getLogger("capgraph.serve")

KNOWN_GPU_GIB = {
    "H200": 141.0,
    "H100": 80.0,
    "A100": 40.0,
    "L40S": 48.0,
    "L40": 48.0,
    "A10G": 24.0,
    "L4": 24.0,
    "A10": 24.0,
    "T4": 16.0,
    "V100": 16.0,
}
"""Memory of Ray's `accelerator_type` names, smallest variant where there are two."""


SCALING = "would not fit beside the rest"
"""In every sentence of `Fit.notes` (and of its problems about replicas above the minimum)."""


@dataclass(frozen=True)
class Machine:
    name: str
    cpus: float
    gpus: int
    memory: float = 0.0
    """Bytes of memory for tasks and actors (0: unknown); bounds the planner's CPU replicas."""


@dataclass(frozen=True)
class Cluster:
    machines: tuple[Machine, ...]
    accelerator: str | None = None
    source: str = "ray"

    @property
    def gpus(self) -> int:
        return sum(m.gpus for m in self.machines)

    @property
    def cpus(self) -> float:
        return sum(m.cpus for m in self.machines)

    def share(self, parts: int, source: str | None = None) -> "Cluster":
        """An even share of every machine's CPUs and memory, for one of `parts` applications
        served together (their GPU fractions follow their weights, as written)."""
        machines = tuple(replace(m, cpus=m.cpus / parts, memory=m.memory / parts) for m in self.machines)
        return Cluster(machines, self.accelerator, source or self.source)

    def describe(self) -> str:
        kind = f" {self.accelerator}" if self.accelerator else ""
        return (
            f"{self.gpus}{kind} GPU and {self.cpus:g} CPU on {len(self.machines)} "
            f"machine{'s' if len(self.machines) != 1 else ''}"
        )


def cluster_from_ray() -> Cluster:
    """The live nodes of the Ray cluster this process is connected to."""
    import ray

    machines, accelerator = [], None
    alive = [node for node in ray.nodes() if node.get("Alive")]
    addresses = [node.get("NodeManagerAddress", "?") for node in alive]
    for node, address in zip(alive, addresses):
        res = node.get("Resources", {})
        # Machines sharing an address (several Ray nodes on one host) are told apart by node id.
        name = address if addresses.count(address) == 1 else f"{address} ({node.get('NodeID', '?')[:8]})"
        machines.append(Machine(name, float(res.get("CPU", 0)), int(res.get("GPU", 0)), float(res.get("memory", 0))))
        accelerator = accelerator or next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None)
    return Cluster(tuple(machines), accelerator, "ray")


def local_cluster(probe_gpus: bool) -> Cluster:
    """This machine as the local Ray instance `serve run` is about to start would see it:
    `RAY_OVERRIDE_RESOURCES` first, then the CPU count and (when asked) torch's GPU count."""
    override = json.loads(os.environ.get("RAY_OVERRIDE_RESOURCES") or "{}")
    cpus = float(override.get("CPU", os.cpu_count() or 1))
    gpus = override.get("GPU")
    accelerator = None
    if gpus is None:
        gpus, accelerator = _torch_gpus() if probe_gpus else (0, None)
    return Cluster(
        (Machine("local", cpus, int(gpus), float(override.get("memory", _memory_bytes()))),), accelerator, "local"
    )


def _memory_bytes() -> float:
    """This machine's memory, as Ray counts what tasks may use (70 % of it)."""
    try:
        return 0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0.0


def _torch_gpus() -> tuple[int, str | None]:
    try:
        import torch
    except ImportError:
        return 0, None
    if not torch.cuda.is_available():
        return 0, None
    return torch.cuda.device_count(), torch.cuda.get_device_name(0)


def gpu_memory_gib(cluster: Cluster) -> float | None:
    """Memory of one GPU: the one this process sees, else the cluster's accelerator type."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) != "":
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_properties(0).total_memory / GIB
        except ImportError:
            pass
    name = (cluster.accelerator or "").upper()
    return next((gib for key, gib in KNOWN_GPU_GIB.items() if key in name), None)


def weight_file_bytes(planned: PlannedNode) -> int | None:
    """Bytes of a model node's weight files on this machine, or None where any is missing.

    Counts one file of each variant pair (`x.safetensors` / `x.fp16.safetensors`: the
    smaller) and prefers safetensors over other formats in a folder, as loaders do.
    Tiny models count as 0: they take a few MB.
    """
    from capgraph.engine.weights import model_dir, models_mode, split_weights

    if models_mode() == "tiny":
        return 0
    total = 0
    for model in planned.build().models():
        path = Path(model).expanduser()
        if not path.exists():
            repo, file = split_weights(model)
            try:
                from huggingface_hub import snapshot_download

                path = Path(snapshot_download(repo, cache_dir=model_dir(), local_files_only=True))
            except Exception:  # not cached (or not an id at all): unknown
                return None
            if file is not None:
                path = path / file
                if not path.exists():
                    return None
        total += _folder_weight_bytes(path)
    return total


def _folder_weight_bytes(path: Path) -> int:
    from capgraph.engine.weights import WEIGHT_SUFFIXES

    if path.is_file():
        return path.stat().st_size
    by_folder: dict[Path, list[Path]] = {}
    for file in path.rglob("*"):
        if file.suffix in WEIGHT_SUFFIXES and file.is_file():
            by_folder.setdefault(file.parent, []).append(file)
    total = 0
    for files in by_folder.values():
        kind = next(s for s in WEIGHT_SUFFIXES if any(f.suffix == s for f in files))
        variants: dict[str, int] = {}
        for f in files:
            if f.suffix == kind:
                stem = f.name.replace(".fp16", "").replace(".bf16", "")
                size = f.stat().st_size  # follows the HF cache's symlinks to blobs
                variants[stem] = min(size, variants.get(stem, size))
        total += sum(variants.values())
    return total


@dataclass
class _Gpu:
    machine: str
    index: int
    free: float = 1.0
    holders: list[str] | None = None


@dataclass(frozen=True)
class Placed:
    """Where one replica would go: a machine, and the GPUs (index, fraction) it takes there."""

    replica: str
    deployment: str
    machine: str
    gpus: tuple[tuple[int, float], ...] = ()
    cpus: float = 0.0

    def describe(self) -> str:
        on = ", ".join(f"GPU {i} ({f:g})" for i, f in self.gpus)
        return f"{self.replica} -> {self.machine}" + (f" {on}" if on else "") + f", {self.cpus:g} CPU"


@dataclass(frozen=True)
class Fit:
    placed: tuple[Placed, ...]
    problems: tuple[str, ...]
    """What finds no place, one sentence each, naming what holds the GPUs it could have used."""
    notes: tuple[str, ...] = ()
    """Replicas an autoscaling deployment may scale to that would find no CPU (Ray's
    autoscaler would leave them pending): a note, not a problem, as the minimum runs."""


def place(compiled: Compiled, cluster: Cluster, ingress_cpus: float, ingress_replicas: int = 1) -> Fit:
    """Every replica (at its deployment's minimum count) placed machine by machine.

    Largest GPU ask first; a fraction below 1 goes on one GPU of one machine, on the fullest
    that still has room (how Ray packs fractions: four 0.25 nodes share one GPU, two 0.6
    nodes need two GPUs, on one machine or two), whole GPUs on one machine. Among the
    machines that fit, a replica goes where its deployment has the fewest replicas yet:
    Ray Serve spreads a deployment's replicas over machines.
    """
    cpus = {m.name: m.cpus for m in cluster.machines}
    gpus = [_Gpu(m.name, i, 1.0, []) for m in cluster.machines for i in range(m.gpus)]
    asks = [(u, i) for u in compiled.units for i in range(u.min_replicas)]
    asks.sort(key=lambda a: (-a[0].num_gpus, -a[0].num_cpus))
    placed: list[Placed] = []
    problems = []
    for unit, index in asks:
        label = unit.name if unit.min_replicas == 1 else f"{unit.name} (replica {index + 1} of {unit.min_replicas})"
        found = _place(label, unit.name, unit.num_gpus, unit.num_cpus, cpus, gpus, placed)
        if isinstance(found, str):
            problems.append(found + _explain(unit, gpus, cluster))
        else:
            placed.append(found)
    for index in range(ingress_replicas):
        label = INGRESS if ingress_replicas == 1 else f"{INGRESS} (replica {index + 1} of {ingress_replicas})"
        found = _place(label, INGRESS, 0.0, ingress_cpus, cpus, gpus, placed)
        if isinstance(found, str):
            problems.append(found)
        else:
            placed.append(found)
    scaled, notes = _check_most(compiled, cluster, cpus, gpus, placed)
    return Fit(tuple(placed), tuple(problems) + scaled, notes)


def _check_most(
    compiled: Compiled, cluster: Cluster, cpus: dict[str, float], gpus: list[_Gpu], placed: list[Placed]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Whether the replicas autoscaling deployments may add (up to their maximum) would fit
    beside everything placed, on what that leaves: one sentence per deployment that would
    not. Notes, not problems: the minimum runs, and an autoscaling cluster may add machines."""
    short = _unplaced_extra(compiled, dict(cpus), copy.deepcopy(gpus), list(placed))
    short_of_gpus = _unplaced_extra(compiled, {m: float("inf") for m in cpus}, copy.deepcopy(gpus), list(placed))
    problems, notes = [], []
    for unit in compiled.units:
        count = short.get(unit.name, 0)
        if not count:
            continue
        what = f"{unit.num_gpus:g} GPU and {unit.num_cpus:g} CPU" if unit.num_gpus else f"{unit.num_cpus:g} CPU"
        sentence = (
            f"deployment '{unit.name}' may scale to {unit.max_replicas} replicas, but {count} of them "
            f"({what} each) {SCALING}: Ray's autoscaler would leave "
            f"{'it' if count == 1 else 'them'} pending"
        )
        if short_of_gpus.get(unit.name):  # a note too: an autoscaling cluster (KubeRay) may add the machines
            notes.append(sentence + f"; lower 'replicas.max' on {', '.join(unit.nodes)} or its GPU share, or add GPUs")
        else:
            notes.append(sentence + f"; lower 'replicas.max' or 'resources.cpu' on {', '.join(unit.nodes)}")
    return tuple(problems), tuple(notes)


def _unplaced_extra(
    compiled: Compiled, cpus: dict[str, float], gpus: list[_Gpu], placed: list[Placed]
) -> dict[str, int]:
    """Deployment -> how many of its replicas above the minimum find no place."""
    extra = [(u, i) for u in compiled.units for i in range(u.min_replicas, u.max_replicas)]
    extra.sort(key=lambda a: (-a[0].num_gpus, -a[0].num_cpus))
    missing: dict[str, int] = {}
    for unit, index in extra:
        label = f"{unit.name} (replica {index + 1} of {unit.max_replicas})"
        found = _place(label, unit.name, unit.num_gpus, unit.num_cpus, cpus, gpus, placed)
        if isinstance(found, str):
            missing[unit.name] = missing.get(unit.name, 0) + 1
        else:
            placed.append(found)
    return missing


def check_fit(compiled: Compiled, cluster: Cluster, ingress_cpus: float, ingress_replicas: int = 1) -> list[str]:
    """What does not fit, one sentence each; empty when every replica has a place."""
    return list(place(compiled, cluster, ingress_cpus, ingress_replicas).problems)


def _place(
    label: str, deployment: str, gpu: float, cpu: float, cpus: dict[str, float], gpus: list[_Gpu], placed: list[Placed]
) -> Placed | str:
    eps = 1e-6
    options: list[tuple[str, list[_Gpu]]] = []
    for machine, free_cpu in cpus.items():
        if free_cpu + eps < cpu:
            continue
        mine = [g for g in gpus if g.machine == machine]
        if gpu <= 0:
            chosen: list[_Gpu] = []
        elif gpu < 1:
            fits = [g for g in mine if g.free + eps >= gpu]
            if not fits:
                continue
            chosen = [min(fits, key=lambda g: g.free)]
        else:
            whole = [g for g in mine if g.free >= 1 - eps]
            if len(whole) < gpu:
                continue
            chosen = whole[: int(gpu)]
        options.append((machine, chosen))
    if not options:
        what = f"{gpu:g} GPU and {cpu:g} CPU" if gpu else f"{cpu:g} CPU"
        return f"deployment '{label}' needs {what} and does not fit"
    siblings = {m: sum(1 for p in placed if p.deployment == deployment and p.machine == m) for m, _ in options}
    machine, chosen = min(options, key=lambda o: siblings[o[0]])  # stable: the first machine among equals
    cpus[machine] -= cpu
    for g in chosen:
        g.free -= min(gpu, 1.0)
        g.holders.append(f"{label} ({min(gpu, 1.0):g})")
    return Placed(label, deployment, machine, tuple((g.index, min(gpu, 1.0)) for g in chosen), cpu)


def _explain(unit: Unit, gpus: Iterable[_Gpu], cluster: Cluster) -> str:
    if unit.num_gpus <= 0:
        return f": the cluster has {cluster.cpus:g} CPU in all; lower 'resources.cpu' on its nodes."
    taken = [
        f"GPU {g.index} on {g.machine} has {g.free:.2f} free, taken by {', '.join(g.holders) or 'nothing'}"
        for g in gpus
    ]
    detail = "; ".join(taken) if taken else "the cluster has no GPU"
    return f": {detail}. Nodes: {', '.join(unit.nodes)} ({unit.gpu_note or 'no note'})."


def demand(compiled: Compiled) -> str:
    """`1.25 GPU and 1.5 CPU over 5 replicas` (minimum replicas)."""
    gpu = sum(u.num_gpus * u.min_replicas for u in compiled.units)
    cpu = sum(u.num_cpus * u.min_replicas for u in compiled.units)
    count = sum(u.min_replicas for u in compiled.units)
    return f"{gpu:g} GPU and {cpu:g} CPU over {count} node replica{'s' if count != 1 else ''}"


def plugin_origins(plan: Plan) -> dict[str, tuple[str, str]]:
    """The plug-in packages the plan's nodes come from: package -> (version here, the nodes
    that need it). Built-in families need nothing beyond capgraph."""
    from capgraph.engine.registry import origin

    found: dict[str, list[str]] = {}
    versions: dict[str, str] = {}
    for node_id, planned in plan.nodes.items():
        where = origin(planned.family.type)
        if where is not None and where.plugin:
            found.setdefault(where.package, []).append(f"'{node_id}' ({planned.family.type})")
            versions[where.package] = where.version
    return {package: (versions[package], ", ".join(nodes)) for package, nodes in found.items()}


def _installed(packages: list[str]) -> tuple[str, dict[str, str]]:
    """On one machine: its address and the installed version of each package ('' if none)."""
    from importlib import metadata

    import ray

    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = ""
    return ray.util.get_node_ip_address(), versions


def check_plugins(plan: Plan, timeout_s: float = 60.0, plugins: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """Every live machine of the connected Ray cluster must have the plug-in packages the
    plan's families come from, at the version this machine has: a replica placed where
    one is missing would only fail to unpickle its nodes ("No module named ..."). One
    zero-CPU task per machine asks; what is missing is named with the pip command.
    `plugins` (default: `plugin_origins(plan)`) as that returns them."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    plugins = plugin_origins(plan) if plugins is None else plugins
    if not plugins or not ray.is_initialized():
        return []
    ask = ray.remote(num_cpus=0)(_installed)
    machines = [n for n in ray.nodes() if n.get("Alive")]
    pending = [
        ask.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(sorted(plugins))
        for n in machines
    ]
    problems = []
    try:
        answers = ray.get(pending, timeout=timeout_s)
    except Exception as exc:  # a machine that cannot run a task cannot run a replica either; say so, do not guess
        return [f"could not check the plug-in packages {', '.join(sorted(plugins))} on every machine: {exc}"]
    for address, versions in answers:
        for package, (version, nodes) in sorted(plugins.items()):
            has = versions[package]
            if has == version:
                continue
            state = "does not have" if not has else f"has {package} {has}, not"
            problems.append(
                f"machine {address} {state} {package} {version}, which node(s) {nodes} come from: "
                f"pip install '{package}=={version}' there (or into the cluster's image or runtime_env)."
            )
    return problems


def deployments(plan: Plan) -> dict[str, tuple[str, ...]]:
    """Deployment name -> its nodes, as the builder would compile `plan` here (this
    machine's tuned overlay included, when it matches). No Ray, no torch: for pictures
    (`capgraph render`), where only the grouping matters."""
    cluster = local_cluster(probe_gpus=False)
    overlay, _ = find_overlay(plan, None, "cuda" if cluster.gpus else "cpu")
    compiled = compile_plan(
        plan, tuned=overlay.nodes if overlay else None, measured=overlay.costs() if overlay else None
    )
    return {u.name: u.nodes for u in compiled.units}
