"""Loading nodes and running a batch through them: the one loader (`load_nodes`) and the one
run loop (`run_nodes`) that the in-process executor and a Ray Serve replica share, over a
frame held as one dict of values by wire name. docs/graph-format.md has more.
"""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capgraph.engine.codecs import as_frame
from capgraph.engine.errors import InputError, NodeFailed
from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.plan import Plan, PlannedNode
from capgraph.engine.types import FRAME_TYPES
from capgraph.engine.video import Video
from capgraph.engine.weights import models_mode

log = logging.getLogger("capgraph")


def load_nodes(
    plan: Plan,
    node_ids: Sequence[str],
    device: str,
    dtype: str,
    report: dict[str, dict[str, Any]] | None = None,
    warmup: bool = True,
    logger: logging.Logger = log,
) -> dict[str, Node]:
    """Build, load and warm the nodes, one after another, each told which of its outputs
    the graph reads (`Node.wanted`). Returns them in the order given
    and fills `report` (what /health and `capgraph run` show) as each one becomes ready;
    says what it loads on `logger` (a Serve replica passes Ray's, whose lines reach `serve run`).

    Not in parallel threads: diffusers loads through accelerate's `init_empty_weights`,
    which patches `torch.nn.Module` for the whole process, so a transformers model built
    in another thread meanwhile gets its parameters on the meta device and fails."""
    report = report if report is not None else {}

    def one(node_id: str) -> Node:
        planned = plan.nodes[node_id]
        logger.info("capgraph: node '%s' (%s) loading on %s (%s)", node_id, planned.family.type, device, dtype)
        start = time.perf_counter()
        node = planned.build()
        node.wanted = plan.read_outputs(node_id)  # before load and warm-up: neither computes unread outputs
        node.load(device, dtype)
        loaded = time.perf_counter()
        if warmup:
            node.warmup()
        warm = time.perf_counter()
        report[node_id] = {
            "loaded": True,
            "warm": warmup,
            "device": device,
            "dtype": dtype,
            "weight_bytes": node.weight_bytes,
            "models": node.models(),
            "models_mode": models_mode(),
            "load_s": round(loaded - start, 3),
            "warmup_s": round(warm - loaded, 3),
        }
        return node

    return {node_id: one(node_id) for node_id in node_ids}


def run_nodes(
    plan: Plan,
    nodes: Mapping[str, Node],
    node_ids: Sequence[str],
    values: Sequence[dict[str, Any]],
    params: Sequence[Mapping[str, NodeParams]],
    *,
    chunks: Mapping[str, int] | None = None,
    release: Mapping[str, Sequence[str]] | None = None,
    active: Sequence[frozenset[str]] | None = None,
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[str, float, int], None] | None = None,
) -> dict[str, float]:
    """Run `node_ids` (in plan order) over a batch: `values[i]` holds frame i's values by
    wire name and gets each node's outputs; `params[i]` frame i's params by node id. Each
    node's `run_batch` runs once for the batch, or in `chunks[node_id]`-frame pieces.
    `active[i]` (`Plan.active`) names the nodes that run for frame i: a node runs on the
    frames it is active for, and not at all when it is active for none (it is then missing
    from the timings). `release[node_id]` names nodes whose outputs no one reads once
    `node_id` has run: they are dropped then, so the allocator can reuse frames.
    `on_start(node_id)` and `on_done(node_id, ms, batch_size)` let a caller follow along.
    A node over a clip (`PlannedNode.clip`) runs over every frame of its frames' clips, in
    calls of at most `chunks[node_id]` (else `PlannedNode.max_frames`) frames, and gives
    each frame its outputs as Videos. Returns ms per node that ran, and for a node over a
    clip `node.batch`, the frames per call (as served answers say it).

    InputError passes through; anything else a node raises is a NodeFailed naming it."""
    timings: dict[str, float] = {}
    for node_id in node_ids:
        planned = plan.nodes[node_id]
        rows = [i for i in range(len(values)) if active is None or node_id in active[i]]
        if rows and planned.clip:
            timings.update(_run_clip(planned, nodes[node_id], values, params, rows, active, chunks, on_start, on_done))
        elif rows:
            node = nodes[node_id]
            timings[node_id] = _run_one(planned, node, values, params, rows, active, chunks, on_start, on_done)
        for done in (release or {}).get(node_id, ()):
            keys = [f"{done}.{port}" for port in plan.nodes[done].family.outputs]
            for frame in values:
                for key in keys:
                    frame.pop(key, None)
    return timings


def _run_one(
    planned: PlannedNode,
    node: Node,
    values: Sequence[dict[str, Any]],
    params: Sequence[Mapping[str, NodeParams]],
    rows: Sequence[int],
    active: Sequence[frozenset[str]] | None,
    chunks: Mapping[str, int] | None,
    on_start: Callable[[str], None] | None,
    on_done: Callable[[str, float, int], None] | None,
) -> float:
    """One node over the frames `rows` of the batch; returns its milliseconds."""
    node_id, count = planned.id, len(rows)
    batch = _gather(planned, values, rows, active)
    step = (chunks or {}).get(node_id) or count
    if on_start is not None:
        on_start(node_id)
    start = time.perf_counter()
    out = _call(planned, node, batch, [params[i][node_id] for i in rows], step)
    ms = (time.perf_counter() - start) * 1000.0
    for i, produced in zip(rows, out):
        for port, value in produced.items():
            values[i][f"{node_id}.{port}"] = value
    if on_done is not None:
        on_done(node_id, ms, min(step, count))
    return ms


def _run_clip(
    planned: PlannedNode,
    node: Node,
    values: Sequence[dict[str, Any]],
    params: Sequence[Mapping[str, NodeParams]],
    rows: Sequence[int],
    active: Sequence[frozenset[str]] | None,
    chunks: Mapping[str, int] | None,
    on_start: Callable[[str], None] | None,
    on_done: Callable[[str, float, int], None] | None,
) -> dict[str, float]:
    """A node over a clip: every frame of each row's clips (the other inputs repeated for each)
    through `run_batch` in calls of at most `step` frames, the outputs put back together
    as one Video per row and port; a per-frame map becomes grey RGB frames."""
    node_id = planned.id
    flat: list[Frame] = []
    owners: list[int] = []
    fps: dict[int, float] = {}
    for j, frame in enumerate(_gather(planned, values, rows, active)):
        clips: dict[str, Video] = {port: frame[port] for port in planned.clip if port in frame}
        lengths = {port: len(clip) for port, clip in clips.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(
                f"{node_id}.{next(iter(lengths))}",
                f"node '{node_id}' runs over clips of different lengths ({lengths}); give it clips of one length",
            )
        if not clips:  # an optional port whose clip a skipped branch did not make
            raise InputError(f"{node_id}.{min(planned.clip)}", f"node '{node_id}' runs over a clip, and got none")
        first = next(iter(clips.values()))
        fps[j] = first.fps
        for t in range(len(first)):
            flat.append({**frame, **{port: clip.frames[t] for port, clip in clips.items()}})
            owners.append(j)
    own = [params[rows[j]][node_id] for j in owners]
    step = (chunks or {}).get(node_id) or planned.max_frames
    if on_start is not None:
        on_start(node_id)
    start = time.perf_counter()
    out = _call(planned, node, flat, own, step)
    ms = (time.perf_counter() - start) * 1000.0
    kinds = {port: planned.family.outputs[port].type for port in out[0]} if out else {}
    for j, i in enumerate(rows):
        mine = [o for o, owner in zip(out, owners) if owner == j]
        for port, kind in kinds.items():
            if kind in FRAME_TYPES:  # the rest have no clip form: validation lets nothing read them
                shown = [as_frame(kind, o[port]) for o in mine]
                if len({f.shape for f in shown}) > 1:  # a clip is frames of one size
                    raise NodeFailed(
                        f"node '{node_id}' gave frames of different sizes over a clip "
                        f"({sorted({f.shape[:2] for f in shown})}); a node over a clip must keep one size",
                        node=node_id,
                    )
                values[i][f"{node_id}.{port}"] = Video.of(shown, fps[j])
    batch = min(step, len(flat))
    if on_done is not None:
        on_done(node_id, ms, batch)
    return {node_id: ms, f"{node_id}.batch": float(batch)}


def _gather(
    planned: PlannedNode, values: Sequence[dict[str, Any]], rows: Sequence[int], active: Sequence[frozenset[str]] | None
) -> list[Frame]:
    """Each row's inputs of the node, by port."""

    def may_lack(port: str, src: Any, i: int) -> bool:
        # an optional port fed by a graph input the frame did not bring is left out: a model shared
        # by several graphs (`serve.compile.sharing`) takes every port one of them wires as a graph input,
        # and each frame brings its own graph's; so is one whose node is skipped for the frame (a branch).
        # A node's output missing otherwise stays an error
        skipped = src.node is not None and active is not None and src.node not in active[i]
        return planned.family.inputs[port].optional and (src.node is None or skipped)

    return [
        {
            port: values[i][str(src)]
            for port, src in planned.inputs.items()
            if str(src) in values[i] or not may_lack(port, src, i)
        }
        for i in rows
    ]


def _call(planned: PlannedNode, node: Node, batch: list[Frame], own: list[NodeParams], step: int) -> list[Frame]:
    """`run_batch` over `batch` in calls of at most `step` frames; a node's failure names it."""
    count = len(batch)
    try:
        out = [o for j in range(0, count, step) for o in node.run_batch(batch[j : j + step], own[j : j + step])]
    except InputError:
        raise
    except Exception as exc:
        raise _failed(planned, batch, exc) from exc
    if len(out) != count:
        raise _failed(planned, batch, RuntimeError(f"returned {len(out)} results for {count} frames"))
    return out


def release_schedule(plan: Plan) -> dict[str, list[str]]:
    """For each node, the nodes whose results nobody needs once it has run."""
    kept = {src.node for src in plan.outputs.values() if src.node}
    last_reader: dict[str, str] = {}
    for node_id, node in plan.nodes.items():  # topological order: the last write wins
        for src in node.inputs.values():
            if src.node is not None:
                last_reader[src.node] = node_id
    schedule: dict[str, list[str]] = {node_id: [] for node_id in plan.nodes}
    for producer, reader in last_reader.items():
        if producer not in kept:
            schedule[reader].append(producer)
    return schedule


def _failed(node: PlannedNode, batch: Sequence[Mapping[str, Any]], cause: BaseException) -> NodeFailed:
    """A node raised while running: the error names the node, its family and what it was given."""
    shapes = ", ".join(f"{k}={_shape(v)}" for k, v in (batch[0].items() if batch else ()))
    return NodeFailed(
        f"node '{node.id}' ({node.family.type}) failed on a batch of {len(batch)} [{shapes}]: "
        f"{type(cause).__name__}: {cause}",
        node.id,
    )


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{getattr(value, 'dtype', '')}{list(shape)}"
    return type(value).__name__
