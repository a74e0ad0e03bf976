"""The tuned overlay: the serving settings `capgraph tune` measured for a graph on this
machine (file format, where it lives, reading it back at build time), and the costs
replicas measure while serving, which the next plan reads. docs/planner.md has the rules.
"""

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capgraph.engine.errors import GraphError, GraphInvalid
from capgraph.engine.plan import Plan
from capgraph.serve.compile.planner import Cost

TUNED_DIR_ENV = "CAPGRAPH_TUNED_DIR"
OVERLAY_FORMAT = 1
PLACEMENT_FIELDS = ("group", "batch", "resources", "replicas")


def tuned_dir() -> Path:
    return Path(os.environ.get(TUNED_DIR_ENV) or Path.home() / ".cache" / "capgraph" / "tuned")


def default_path(capability: str) -> Path:
    return tuned_dir() / f"{capability}.yaml"


def fingerprint(plan: Plan) -> str:
    """What the measurements depend on: families, params and wiring (placement fields
    excluded, so pasting the tuned settings into the graph keeps the overlay valid)."""
    shape = {
        "nodes": {
            n.id: {
                "type": n.family.type,
                "params": n.params.model_dump(mode="json"),
                "inputs": {port: str(src) for port, src in n.inputs.items()},
            }
            for n in plan.nodes.values()
        },
        "outputs": {name: str(src) for name, src in plan.outputs.items()},
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Overlay:
    """A tuned overlay file, read back."""

    path: str
    capability: str
    fingerprint: str
    machine: Mapping[str, Any]
    """cpus, gpus, accelerator, device (cpu or cuda) and models (tiny or real) it was measured on."""
    profile: Mapping[str, Mapping[int, float]]
    """Milliseconds per batch, by node and batch size."""
    nodes: Mapping[str, Mapping[str, Any]]
    """The chosen settings as graph-node fields."""
    request: Mapping[str, Any] = field(default_factory=dict)

    def costs(self) -> dict[str, Cost]:
        return {
            node: Cost({int(b): float(ms) for b, ms in sizes.items()}, "measured")
            for node, sizes in self.profile.items()
            if sizes
        }


def measured_path(capability: str, unit: str) -> Path:
    """Where a replica of `unit` records what its nodes cost while serving (one file a unit)."""
    return tuned_dir() / f"{capability}.measured.{unit}.json"


def write_measured(plan: Plan, unit: str, device: str, profile: Mapping[str, Mapping[int, float]]) -> None:
    """Record milliseconds per batch, by node and batch size, as one replica measured them
    serving real frames on this machine (replaced whole: the newest replica's view wins)."""
    from capgraph.engine.weights import models_mode

    path = measured_path(plan.capability, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "fingerprint": fingerprint(plan),
        "device": device,
        "models": models_mode() or "real",
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "profile": {node: {str(b): round(ms, 3) for b, ms in sorted(sizes.items())} for node, sizes in profile.items()},
    }
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(record), encoding="utf-8")
    os.replace(partial, path)  # readers see the old file or the new one, never half of one


def measured_costs(plan: Plan, device: str) -> dict[str, Cost]:
    """What replicas measured serving this graph (same nodes, params and wiring, models and
    device) on this machine, when it covers every node; else none: declared figures and
    measured ones are not on one scale."""
    from capgraph.engine.weights import models_mode

    costs: dict[str, Cost] = {}
    for path in sorted(tuned_dir().glob(f"{plan.capability}.measured.*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (record.get("fingerprint"), record.get("device"), record.get("models")) != (
            fingerprint(plan),
            device,
            models_mode() or "real",
        ):
            continue
        for node, sizes in (record.get("profile") or {}).items():
            if node in plan.nodes and sizes:
                costs[node] = Cost({int(b): float(ms) for b, ms in sizes.items()}, "measured")
    return costs if set(costs) == set(plan.nodes) else {}


def read_overlay(path: str | Path) -> Overlay:
    """Raises ValueError naming what is wrong with the file."""
    import yaml

    try:
        tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read tuned overlay {path}: {exc}") from None
    if not isinstance(tree, dict) or tree.get("format") != OVERLAY_FORMAT:
        raise ValueError(f"{path} is not a capgraph tuned overlay (format {OVERLAY_FORMAT}); re-run capgraph tune")
    nodes = tree.get("nodes") or {}
    for node_id, fields in nodes.items():
        unknown = set(fields or {}) - set(PLACEMENT_FIELDS)
        if unknown:
            raise ValueError(
                f"{path}: node '{node_id}' has {', '.join(sorted(unknown))}; "
                f"an overlay sets only {', '.join(PLACEMENT_FIELDS)}"
            )
    return Overlay(
        str(path),
        str(tree.get("capability", "")),
        str(tree.get("fingerprint", "")),
        tree.get("machine") or {},
        tree.get("profile") or {},
        nodes,
        tree.get("request") or {},
    )


def find_overlay(plan: Plan, tuned: str | bool | None, device: str) -> tuple[Overlay | None, list[str]]:
    """The overlay to apply, and notes saying which one or why none. `tuned`: a path, False
    to ignore overlays, None for this machine's own (`default_path`). `device`: cpu or cuda,
    what the cluster will run on. A named file that cannot be read is a GraphInvalid."""
    if tuned is False or (isinstance(tuned, str) and tuned.lower() in ("false", "off", "no", "none")):
        return None, []
    from capgraph.engine.weights import models_mode

    path = Path(tuned) if isinstance(tuned, str) else default_path(plan.capability)
    if tuned is None and not path.exists():
        return None, []
    try:
        overlay = read_overlay(path)
    except ValueError as exc:
        if tuned is None:
            return None, [f"{exc}; serving with the planner's defaults"]
        raise GraphInvalid([GraphError("tuned", str(exc), plan.file)]) from None
    models = models_mode() or "real"
    problems = []
    if overlay.fingerprint != fingerprint(plan):
        problems.append("the graph's nodes, params or wiring changed since")
    if overlay.machine.get("models") != models:
        problems.append(f"it was measured on {overlay.machine.get('models')} models, this runs {models} ones")
    if overlay.machine.get("device") != device:
        problems.append(f"it was measured on {overlay.machine.get('device')}, this runs on {device}")
    if problems:
        return None, [f"tuned overlay {path} ignored: {'; '.join(problems)}. Re-run: capgraph tune {plan.file}"]
    return overlay, [
        f"tuned overlay {path} applied (measured {overlay.machine.get('when', '?')}); the graph's own fields still win"
    ]


def overlay_yaml(overlay: Mapping[str, Any], plan: Plan) -> str:
    """An overlay's text, as `capgraph tune` writes it: a header saying what it is, then the YAML."""
    import yaml

    head = (
        f"# capgraph tune {plan.file}: serving settings for '{plan.capability}' on this machine.\n"
        "# Read by serve run / capgraph serve / capgraph plan while the graph's nodes, params and wiring,\n"
        "# the models (tiny or real) and the device kind match; the graph file's own fields win.\n"
        "# profile: milliseconds per batch, by batch size. nodes: the chosen graph-node fields.\n"
    )
    return head + yaml.safe_dump(dict(overlay), sort_keys=False, default_flow_style=None, width=120)
