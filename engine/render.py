"""Pictures of a graph: Mermaid text (for READMEs, always available), Graphviz DOT
(turned into SVG/PNG by the `dot` program where it is installed) and `picture`, the same
drawing as data, which the served console and `capgraph run --html` lay out in the browser.

All three show the same thing: graph inputs, each node with its id, family, GPU fraction and
the condition it runs on (`when upscale`; DOT draws such a node dashed),
every wire labelled `port -> port : Type`, and the graph outputs; given the deployments
the Serve compiler chose (deployment name -> node ids), each one is a box around its nodes.
"""

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from capgraph.engine.plan import Plan, Source


def _node_label(plan: Plan, node_id: str) -> tuple[str, str]:
    node = plan.nodes[node_id]
    extras = []
    if node.spec.resources.gpu is not None:
        extras.append(f"gpu {node.spec.resources.gpu:g}")
    if node.spec.group:
        extras.append(f"group {node.spec.group}")
    if node.when is not None:
        extras.append(f"when {node.when}")
    return node_id, node.family.type + (f" · {', '.join(extras)}" if extras else "")


def _edges(plan: Plan) -> list[tuple[str, str, str]]:
    """(from, to, label) for every wire, graph inputs and outputs included."""
    edges = []
    for node_id, node in plan.nodes.items():
        for port, src in node.inputs.items():
            src_type = plan.source_type(src)
            label = f"{src.port} → {port} : {src_type.title}" if src.node else f"{port} : {src_type.title}"
            edges.append((_id(src), node_id, label))
    for name, src in plan.outputs.items():
        label = f"{src.port} : {plan.output_type(name).title}"
        edges.append((_id(src), f"out_{name}", label))
    return edges


def _conditions(plan: Plan) -> list[tuple[str, str, str]]:
    """(source id, node, label) for every `when:`: a dotted edge from the Bool graph input
    or the switch (`sw_name`, drawn by `_switches`) to the node it turns on or off."""
    return [
        (f"sw_{n.when.name}" if n.when.name in plan.switches else f"in_{n.when.name}", n.id, f"when {n.when}")
        for n in plan.nodes.values()
        if n.when is not None
    ]


def _switches(plan: Plan) -> list[tuple[str, str]]:
    """(id, label) of each switch a node's `when:` reads."""
    used = {n.when.name for n in plan.nodes.values() if n.when is not None}
    return [
        (f"sw_{name}", f"{name} · switch, default {str(s.default).lower()}")
        for name, s in plan.switches.items()
        if name in used
    ]


def _id(src: Source) -> str:
    return f"in_{src.port}" if src.node is None else src.node


Deployments = Mapping[str, Sequence[str]]


def _boxes(plan: Plan, deployments: Deployments | None) -> list[tuple[str | None, list[str]]]:
    """(deployment or None, its nodes) in plan order; no deployments: one unboxed group."""
    if not deployments:
        return [(None, list(plan.nodes))]
    return [(name, [n for n in plan.nodes if n in members]) for name, members in deployments.items()]


def _boxed(
    plan: Plan,
    deployments: Deployments | None,
    open_box: Callable[[str], str],
    close_box: str,
    node: Callable[[str], str],
) -> list[str]:
    """Every node's line, those of one deployment between its box's opening and closing lines."""
    lines = []
    for box, members in _boxes(plan, deployments):
        if box is not None:
            lines.append(open_box(box))
        lines += [("  " if box is None else "    ") + node(node_id) for node_id in members]
        if box is not None:
            lines.append(close_box)
    return lines


def mermaid(plan: Plan, deployments: Deployments | None = None) -> str:
    lines = ["flowchart LR"]
    for name, spec in plan.spec.inputs.items():
        lines.append(f'  in_{name}[/"{name}<br/><i>{spec.type.title}</i>"/]')

    def node(node_id: str) -> str:
        title, sub = _node_label(plan, node_id)
        return f'{node_id}["<b>{title}</b><br/>{sub}"]'

    lines += _boxed(plan, deployments, lambda box: f'  subgraph dep_{box}["deployment {box}"]', "  end", node)
    for name in plan.outputs:
        lines.append(f'  out_{name}[\\"{name}"\\]')
    for switch, label in _switches(plan):
        lines.append(f'  {switch}{{{{"{label}"}}}}')
    for src, dst, label in _edges(plan):
        lines.append(f'  {src} -- "{label}" --> {dst}')
    for src, dst, label in _conditions(plan):
        lines.append(f'  {src} -. "{label}" .-> {dst}')
    return "\n".join(lines) + "\n"


def picture(plan: Plan, deployments: Deployments | None = None) -> dict[str, Any]:
    """The drawing as JSON-ready data: graph inputs, nodes (id, family, label, category,
    whether it runs a model), outputs, every wire with the label Mermaid and DOT give it,
    and each deployment's nodes; ids are those of `mermaid` and `dot` (`in_x`, `out_x`)."""

    def node(node_id: str) -> dict[str, Any]:
        title, sub = _node_label(plan, node_id)
        family = plan.nodes[node_id].family
        return {
            "id": title,
            "family": family.type,
            "label": sub,
            "category": family.category,
            "uses_gpu": family.uses_gpu,
            "when": str(plan.nodes[node_id].when) if plan.nodes[node_id].when else None,
        }

    return {
        "inputs": [
            {"id": f"in_{name}", "name": name, "type": spec.type.title} for name, spec in plan.spec.inputs.items()
        ],
        "nodes": [node(node_id) for node_id in plan.nodes],
        "outputs": [{"id": f"out_{name}", "name": name, "type": plan.output_type(name).title} for name in plan.outputs],
        "edges": [{"from": src, "to": dst, "label": label} for src, dst, label in _edges(plan)],
        "conditions": [{"from": src, "to": dst, "label": label} for src, dst, label in _conditions(plan)],
        "switches": [{"id": switch, "label": label} for switch, label in _switches(plan)],
        "deployments": [
            {"name": box, "nodes": members} for box, members in _boxes(plan, deployments) if box is not None
        ],
    }


def dot(plan: Plan, deployments: Deployments | None = None) -> str:
    lines = [
        f'digraph "{plan.capability}" {{',
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    for name, spec in plan.spec.inputs.items():
        lines.append(
            f'  in_{name} [shape=parallelogram, style=filled, fillcolor="#e8f0fe", label="{name}\\n{spec.type.title}"];'
        )

    def node(node_id: str) -> str:
        title, sub = _node_label(plan, node_id)
        fill = "#fde7e7" if plan.nodes[node_id].family.uses_gpu else "#eef7ee"
        style = "rounded,filled,dashed" if plan.nodes[node_id].when else "rounded,filled"  # runs on a branch only
        return f'{node_id} [shape=box, style="{style}", fillcolor="{fill}", label=<<b>{title}</b><br/>{sub}>];'

    lines += _boxed(
        plan,
        deployments,
        lambda box: f'  subgraph cluster_{box} {{ label="deployment {box}"; style="dashed"; color="#888888";',
        "  }",
        node,
    )
    for name in plan.outputs:
        lines.append(f'  out_{name} [shape=invhouse, style=filled, fillcolor="#fff4d6", label="{name}"];')
    for switch, label in _switches(plan):
        lines.append(f'  {switch} [shape=hexagon, style=filled, fillcolor="#f1ecfb", label="{label}"];')
    for src, dst, label in _edges(plan):
        lines.append(f'  {src} -> {dst} [label="{label}"];')
    for src, dst, label in _conditions(plan):
        lines.append(f'  {src} -> {dst} [label="{label}", style=dotted];')
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizMissing(RuntimeError):
    pass


def dot_to(fmt: str, source: str) -> bytes:
    """Render DOT text as `svg` or `png` with Graphviz's `dot` program."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(
            f"rendering {fmt.upper()} needs Graphviz's `dot` program, which is not installed. "
            "Install the 'graphviz' package (apt-get install graphviz, brew install graphviz), "
            "or write Mermaid text with `-o graph.mmd`."
        )
    done = subprocess.run([exe, f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot failed: {done.stderr.decode(errors='replace')[:400]}")
    return done.stdout
