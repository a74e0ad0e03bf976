"""`capgraph tune GRAPH`: fit a graph's serving settings to this machine.

It loads every node, times each at batch sizes 1..`max_batch`, hands the costs to the
planner and writes the chosen settings as a tuned overlay (or prints them as YAML).
docs/planner.md ("`capgraph tune`").
"""

import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from capgraph.engine.errors import GraphInvalid
from capgraph.engine.plan import Plan
from capgraph.serve.compile import OVERLAY_FORMAT, Overlay, default_path, fingerprint, overlay_yaml

INGRESS_CPUS = 0.25
"""What the ingress is assumed to take when tuning (CapabilityArgs.ingress_cpus's default)."""


# -- measuring ---------------------------------------------------------------------------


def batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4 ... and `max_batch` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def example_frame(plan: Plan, size: int) -> dict[str, Any]:
    """One frame of graph inputs: each input's default, else a small example of its type."""
    from capgraph.engine.node import example_value

    return {
        name: spec.default if spec.default is not None else example_value(spec.type, size)
        for name, spec in plan.spec.inputs.items()
    }


def profile(
    plan: Plan,
    *,
    max_batch: int = 16,
    size: int = 64,
    params: Mapping[str, Any] | None = None,
    repeats: int = 5,
    progress: Any = None,
) -> tuple[dict[str, dict[int, float]], dict[str, int], str]:
    """Milliseconds per batch for every node and batch size, peak extra GPU bytes per node
    (CUDA only), and the device. `progress(description, advance)` reports each step."""
    from capgraph.engine.executor import check_inputs, pick_device
    from capgraph.engine.runloop import load_nodes

    step = progress or (lambda description, advance=1: None)
    device, dtype = pick_device(plan)
    node_params = plan.params_for(params)
    values = dict(check_inputs(plan, example_frame(plan, size)))
    nodes = {}
    for node_id in plan.nodes:
        step(f"loading {node_id}", 0)
        nodes.update(load_nodes(plan, [node_id], device, dtype))  # as a replica would: unread outputs skipped
        step(f"loaded {node_id}")
    inputs = {}
    for node_id, planned in plan.nodes.items():  # one frame through the graph: every node's real inputs
        inputs[node_id] = {port: values[str(src)] for port, src in planned.inputs.items()}
        out = nodes[node_id].run_batch([inputs[node_id]], [node_params[node_id]])[0]
        values.update({f"{node_id}.{port}": value for port, value in out.items()})
    timings: dict[str, dict[int, float]] = {}
    peaks: dict[str, int] = {}
    for node_id, node in nodes.items():
        timings[node_id] = {}
        for b in batch_sizes(max_batch):
            step(f"{node_id} at batch {b}", 0)
            batch, batch_params = [inputs[node_id]] * b, [node_params[node_id]] * b
            before = _cuda_reset(device)
            node.run_batch(batch, batch_params)  # new shapes: allocations, kernel choice
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                node.run_batch(batch, batch_params)
                runs.append((time.perf_counter() - start) * 1000.0)
            timings[node_id][b] = round(statistics.median(runs), 3)
            if before is not None:
                peaks[node_id] = max(peaks.get(node_id, 0), _cuda_peak() - before)
            step(f"{node_id} at batch {b}")
    return timings, peaks, device


def _cuda_reset(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _cuda_peak() -> int:
    import torch

    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def measured_fraction(weight_bytes: int, peak_extra_bytes: int, gpu_bytes: int) -> float:
    """A GPU fraction from what a node was seen to use: its weights, its largest batch's
    activations with a quarter more for luck, and 1 GiB for the CUDA context, in steps of 0.05."""
    import math

    need = (weight_bytes + 1.25 * peak_extra_bytes + (1 << 30)) / gpu_bytes
    return min(1.0, max(0.05, math.ceil(need * 20 - 1e-9) / 20))


# -- the command -------------------------------------------------------------------------


def tune_graph(
    path: str,
    *,
    max_batch: int = 16,
    size: int | None = None,
    params: Mapping[str, Any] | None = None,
    repeats: int = 5,
    output: str | None = None,
    print_yaml: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Profile, plan, print the table and write the overlay (or print it as YAML).
    `size`: the side of the example frame (default 64 px on tiny models, 512 on real
    ones); `params`: request params to profile with (`{"generate.steps": 4}`).
    Returns 0, 2 for an invalid graph, 1 when a node cannot load or run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from capgraph.engine.errors import InputError
    from capgraph.engine.validate import load_plan
    from capgraph.engine.weights import ModelMissing, models_mode

    out, err = out or sys.stdout, err or sys.stderr
    if not 1 <= max_batch <= 256:
        print(f"max_batch must be between 1 and 256, not {max_batch}", file=err)
        return 2
    try:
        plan = load_plan(path)
        plan.params_for(params)
    except GraphInvalid as exc:
        print(exc.render(), file=err)
        return 2
    except InputError as exc:
        print(f"--param {exc.field.removeprefix('params.')}: {exc.message}", file=err)
        return 2
    models = models_mode() or "real"
    side = size or (64 if models == "tiny" else 512)
    steps = len(plan.nodes) * (1 + len(batch_sizes(max_batch)))
    console = Console(file=err)
    try:
        with Progress(
            TextColumn("{task.description:<32}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("tuning", total=steps)
            timings, peaks, device = profile(
                plan,
                max_batch=max_batch,
                size=side,
                params=params,
                repeats=repeats,
                progress=lambda description, advance=1: bar.update(task, description=description, advance=advance),
            )
    except (ModelMissing, OSError, RuntimeError, ValueError) as exc:
        print(f"tuning '{plan.capability}' failed: {type(exc).__name__}: {exc}", file=err)
        return 1
    overlay = _overlay(plan, timings, peaks, device, models, side, params)
    compiled = _compile(plan, overlay)
    _print_table(
        plan, timings, compiled, device, models, side, Console(file=out, width=max(120, Console(file=out).width))
    )
    text = overlay_yaml(overlay, plan)
    if print_yaml:
        print(_paste_text(overlay, plan), file=out)
        return 0
    target = Path(output) if output else default_path(plan.capability)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(
        f"wrote {target}: `serve run`, `capgraph serve` and `capgraph plan` use it for this graph on this machine "
        f"({'pass args tuned: ' + str(target) if output else 'delete it to go back to the defaults'}).",
        file=out,
    )
    return 0


def _overlay(
    plan: Plan,
    timings: Mapping[str, Mapping[int, float]],
    peaks: Mapping[str, int],
    device: str,
    models: str,
    side: int,
    params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    from capgraph.serve.cluster import preflight

    cluster = preflight.local_cluster(probe_gpus=device.startswith("cuda"))
    machine = {
        "cpus": cluster.cpus,
        "gpus": cluster.gpus,
        "accelerator": cluster.accelerator,
        "device": device.split(":")[0],
        "models": models,
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    draft = {
        "format": OVERLAY_FORMAT,
        "capability": plan.capability,
        "fingerprint": fingerprint(plan),
        "machine": machine,
        "request": {"size": side, "params": dict(params or {})},
        "profile": {k: dict(v) for k, v in timings.items()},
        "nodes": {},
    }
    compiled = _compile(plan, draft)
    gpu_bytes = _gpu_bytes(device)
    nodes: dict[str, dict[str, Any]] = {}
    for unit in compiled.units:
        for node_id in unit.nodes:
            entry: dict[str, Any] = {}
            if len(unit.nodes) > 1:
                entry["group"] = unit.name
            entry["batch"] = {
                "max_size": dict(unit.chunks).get(node_id, unit.max_batch_size),
                "wait_ms": round(unit.batch_wait_s * 1000.0, 1),
            }
            if node_id in peaks and gpu_bytes and plan.nodes[node_id].spec.resources.gpu is None:
                weights = preflight.weight_file_bytes(plan.nodes[node_id]) or 0
                entry["resources"] = {"gpu": measured_fraction(weights, peaks[node_id], gpu_bytes)}
            if unit.replicas != 1:
                entry["replicas"] = unit.replicas if isinstance(unit.replicas, int) else unit.replicas.model_dump()
            nodes[node_id] = entry
    return draft | {"nodes": nodes}


def _compile(plan: Plan, overlay: Mapping[str, Any]) -> Any:
    from capgraph.serve.cluster import preflight
    from capgraph.serve.compile import compile_plan, machine_for

    cluster = preflight.local_cluster(probe_gpus=overlay["machine"]["device"] == "cuda")
    read = Overlay(
        "", plan.capability, overlay["fingerprint"], overlay["machine"], overlay["profile"], overlay["nodes"]
    )
    machine = machine_for([(m.cpus, m.memory) for m in cluster.machines], cluster.gpus, INGRESS_CPUS)
    return compile_plan(
        plan,
        machine=machine,
        tuned=read.nodes,
        measured=read.costs(),
        weight_bytes=preflight.weight_file_bytes,
        gpu_memory_gib=preflight.gpu_memory_gib(cluster) if cluster.gpus else None,
    )


def _gpu_bytes(device: str) -> int:
    if not device.startswith("cuda"):
        return 0
    import torch

    return torch.cuda.get_device_properties(0).total_memory


def _print_table(
    plan: Plan,
    timings: Mapping[str, Mapping[int, float]],
    compiled: Any,
    device: str,
    models: str,
    side: int,
    console: Any,
) -> None:
    from rich.table import Table

    sizes = sorted({b for t in timings.values() for b in t})
    table = Table(
        title=f"{plan.capability}: ms per batch on {device} ({models} models, {side} px frames)", title_justify="left"
    )
    table.add_column("node")
    table.add_column("family")
    for b in sizes:
        table.add_column(f"b={b}", justify="right")
    table.add_column("best ms/frame", justify="right")
    table.add_column("deployment")
    table.add_column("batch / wait", justify="right")
    table.add_column("a call", justify="right")
    table.add_column("threads", justify="right")
    table.add_column("gpu", justify="right")
    for unit in compiled.units:
        for node_id in unit.nodes:
            t = timings[node_id]
            best = min(t, key=lambda b: t[b] / b)
            table.add_row(
                node_id,
                plan.nodes[node_id].family.type,
                *(f"{t[b]:.1f}" if b in t else "" for b in sizes),
                f"{t[best] / best:.2f} (b={best})",
                unit.name,
                f"{unit.max_batch_size} / {unit.batch_wait_s * 1000:.1f} ms",
                str(dict(unit.chunks).get(node_id, unit.max_batch_size)),
                str(unit.threads),
                f"{unit.num_gpus:g}",
            )
    console.print(table)
    for unit in compiled.units:
        console.print(f"[b]{unit.name}[/b]: " + "; ".join(unit.why), highlight=False)


def _paste_text(overlay: Mapping[str, Any], plan: Plan) -> str:
    import yaml

    head = f"# add these fields to the nodes of {plan.file} (measured on this machine by capgraph tune)\n"
    return head + yaml.safe_dump({"nodes": dict(overlay["nodes"])}, sort_keys=False, default_flow_style=None, width=120)


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`generate.steps=4` strings (the CLI's --param) -> {"generate.steps": 4}; values are
    read as YAML scalars, so numbers and booleans keep their type."""
    import yaml

    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param '{pair}': expected node.param=value")
        result[key.strip()] = yaml.safe_load(value)
    return result
