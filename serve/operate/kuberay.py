"""A KubeRay RayService manifest for a graph file: `capgraph kuberay GRAPH --image IMAGE`.

Pure data: nothing here starts Ray or talks to Kubernetes. `serveConfigV2` is the file's
own `applications:` entry, secrets come from a Kubernetes Secret, the head holds no
replica and the worker group is sized from the plan. docs/cluster.md ("Kubernetes with KubeRay").
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from capgraph.engine.errors import GraphError, GraphInvalid
from capgraph.engine.spec import Autoscale
from capgraph.serve.app import CapabilityArgs, plan_app
from capgraph.serve.cluster import environment, preflight
from capgraph.serve.compile import Compiled, application

API_VERSION = "ray.io/v1"
SERVE_PORT = 8000
HEALTH_PATH = "/health"
RAY_MEMORY_SHARE = 0.7
"""Ray gives tasks and actors 70 % of a machine's memory; the rest is its object store."""
MAX_WORKERS = 1024
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|k|M|G|T)?$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
"""A Kubernetes object name short enough for the names KubeRay derives from it."""
_UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}


@dataclass(frozen=True)
class Shape:
    """One pod: its CPUs, memory (a Kubernetes quantity such as `32Gi`) and GPUs."""

    cpus: float
    memory: str
    gpus: int = 0

    def machine(self, name: str) -> preflight.Machine:
        return preflight.Machine(name, self.cpus, self.gpus, RAY_MEMORY_SHARE * memory_bytes(self.memory))

    def resources(self) -> dict[str, dict[str, str]]:
        """Requests equal to limits, as KubeRay advises: Ray counts a pod's CPUs and memory
        from its limits, and the scheduler then reserves exactly that."""
        amounts = {"cpu": f"{self.cpus:g}", "memory": self.memory}
        if self.gpus:
            amounts["nvidia.com/gpu"] = str(self.gpus)
        return {"requests": dict(amounts), "limits": dict(amounts)}


HEAD = Shape(cpus=2, memory="8Gi")
"""GCS, dashboard, Serve controller and proxy: no replica runs on the head."""
WORKER = Shape(cpus=8, memory="32Gi", gpus=1)


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    shape: Shape
    min_workers: int
    max_workers: int


@dataclass(frozen=True)
class Manifest:
    """The RayService, and what its user must know to apply it."""

    resource: dict[str, Any]
    workers: WorkerGroup
    forwarded: tuple[str, ...]
    """Variables set in the application's runtime_env."""
    secrets: tuple[str, ...]
    """Variables the containers read from `secret_name` instead."""
    secret_name: str
    notes: tuple[str, ...]

    def to_yaml(self) -> str:
        return yaml.dump(self.resource, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=120)

    def describe(self) -> dict[str, Any]:
        w = self.workers
        return {
            "name": self.resource["metadata"]["name"],
            "worker_group": w.name,
            "min_workers": w.min_workers,
            "max_workers": w.max_workers,
            "worker": {"cpus": w.shape.cpus, "memory": w.shape.memory, "gpus": w.shape.gpus},
            "forwarded": list(self.forwarded),
            "secrets": list(self.secrets),
            "secret_name": self.secret_name,
            "notes": list(self.notes),
        }


def memory_bytes(quantity: str) -> float:
    """Bytes in a Kubernetes memory quantity (`32Gi`, `512Mi`, `8G`, `1000000`)."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"'{quantity}' is not a memory quantity such as 32Gi, 512Mi or 8G")
    return float(match["number"]) * _UNITS[match["unit"]]


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"'{name}' is not a RayService name: lowercase letters, digits and '-', at most 40 characters")
    return name


def rayservice(
    path: str | Path,
    image: str,
    worker: Shape = WORKER,
    head: Shape = HEAD,
    name: str | None = None,
    gpu_memory_gib: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> Manifest:
    """The RayService for the graph file at `path`, run from `image` (capgraph and its
    models installed, the Ray version of this install)."""
    import ray

    entry = application(path)
    if gpu_memory_gib is not None:
        # The cluster's builder must size unset GPU fractions as this plan does.
        entry["args"] = {**entry["args"], "gpu_memory_gib": gpu_memory_gib}
    try:
        args = CapabilityArgs(**entry["args"])
    except ValidationError as exc:
        raise GraphInvalid([GraphError("args", f"applications[0].args: {_first(exc)}", str(path))]) from None
    # The builder runs on the head pod, where this machine's `capgraph tune` overlay is not.
    sizing = args if args.tuned is not None else args.model_copy(update={"tuned": False})
    blueprint = plan_app(sizing, cluster=preflight.Cluster((worker.machine("worker-1"),), source="kuberay"))
    compiled = blueprint.compiled
    gpus = any(u.num_gpus > 0 for u in compiled.units)
    if not gpus:
        worker = replace(worker, gpus=0)
    lowest = workers_needed(compiled, worker, args, "min")
    highest = max(lowest, workers_needed(compiled, worker, args, "max"))
    group = WorkerGroup("gpu-workers" if gpus else "cpu-workers", worker, lowest, highest)
    # KubeRay submits serveConfigV2 once the head is up, before any worker has joined: the
    # builder there plans for the workers to come (GPUs included), not for the bare head.
    planned = [
        {"name": m.name, "cpus": m.cpus, "gpus": m.gpus, "memory_bytes": m.memory}
        for m in (worker.machine(f"worker-{i + 1}") for i in range(group.max_workers))
    ]
    entry["args"] = {**entry["args"], "machines": planned}

    name = check_name(name or compiled.plan.capability)
    secret_name = f"{name}-secrets"
    env = environment.forwarded(environ)
    secrets = tuple(k for k in env if environment.is_secret(k))
    plain_env = {k: v for k, v in env.items() if k not in secrets}
    runtime_env = dict(entry.get("runtime_env") or {})
    runtime_env["env_vars"] = {**plain_env, **(runtime_env.get("env_vars") or {})}  # the file's own win
    app = {**entry, "runtime_env": runtime_env} if runtime_env["env_vars"] else entry
    container_env = [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": k}}} for k in secrets]

    spec = {
        "serveConfigV2": yaml.dump({"applications": [app]}, Dumper=_BlockDumper, sort_keys=False, width=120),
        # Only worker pods carry traffic, each ready once the capability answers /health 200.
        "excludeHeadPodFromServeSvc": True,
        "rayClusterConfig": {
            "rayVersion": ray.__version__,
            # Ray 2.60 turns token authentication on for `ray start`; KubeRay makes the token.
            "authOptions": {"mode": "token"},
            "enableInTreeAutoscaling": group.max_workers > group.min_workers,
            "headGroupSpec": {
                "rayStartParams": {"num-cpus": "0", "num-gpus": "0"},
                "template": {"spec": {"containers": [_container("ray-head", image, head, container_env, head=True)]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": group.name,
                    "replicas": group.min_workers,
                    "minReplicas": group.min_workers,
                    "maxReplicas": group.max_workers,
                    "rayStartParams": {},
                    "template": {
                        "spec": {"containers": [_container("ray-worker", image, worker, container_env, head=False)]}
                    },
                }
            ],
        },
    }
    resource = {"apiVersion": API_VERSION, "kind": "RayService", "metadata": {"name": name}, "spec": spec}
    notes = list(blueprint.notes) + list(blueprint.problems)
    return Manifest(resource, group, tuple(plain_env), secrets, secret_name, tuple(notes))


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"


def workers_needed(compiled: Compiled, worker: Shape, args: CapabilityArgs, which: Literal["min", "max"]) -> int:
    """How many worker machines of `worker`'s shape hold every deployment's `which`
    ("min" or "max") replicas and the ingress, placed as pre-flight places them."""
    if which == "max":
        units = tuple(
            replace(u, replicas=u.replicas.max) if isinstance(u.replicas, Autoscale) else u for u in compiled.units
        )
        compiled = replace(compiled, units=units)
    replicas = sum(u.min_replicas for u in compiled.units) + args.ingress_replicas
    problems: list[str] = []
    for count in range(1, min(replicas, MAX_WORKERS) + 1):
        machines = tuple(worker.machine(f"worker-{i + 1}") for i in range(count))
        problems = preflight.check_fit(
            compiled, preflight.Cluster(machines, source="kuberay"), args.ingress_cpus, args.ingress_replicas
        )
        if not problems:
            return count
    raise GraphInvalid(
        [
            GraphError(
                "kuberay",
                f"{p} on any number of worker machines with {worker.gpus} GPU, "
                f"{worker.cpus:g} CPU and {worker.memory} each; give workers more GPUs or CPUs",
                compiled.plan.file,
            )
            for p in problems
        ]
    )


def _container(name: str, image: str, shape: Shape, env: list[dict[str, Any]], head: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image, "resources": shape.resources()}
    if env:
        container["env"] = env
    ports = (
        [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ]
        if head
        else []
    )
    container["ports"] = ports + [{"containerPort": SERVE_PORT, "name": "serve"}]
    if not head:
        container["readinessProbe"] = {
            "httpGet": {"path": HEALTH_PATH, "port": SERVE_PORT},
            "initialDelaySeconds": 10,
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 1,
        }
    return container


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as `|` blocks, as KubeRay's samples write them,
    and no `&id001` anchors where two containers share a list: a manifest reads plainly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)
