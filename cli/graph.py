"""Graph commands: validate, run, nodes, schema, render."""

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from capgraph.cli.common import GraphArg, JsonOpt, emit_json, err, load_graph, out, print_problems
from capgraph.engine.errors import GraphInvalid, InputError
from capgraph.engine.plan import Plan
from capgraph.engine.types import PortType


def validate(
    graphs: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="graph files")],
    as_json: JsonOpt = False,
) -> None:
    """Check graph files: YAML, node types, params, wiring, port types, cycles."""
    from capgraph.engine.validate import load_plan
    from capgraph.engine.yamlload import load_yaml
    from capgraph.serve.compile import check_deployment_sections

    report, failed = [], False
    for path in graphs:
        try:
            plan = load_plan(path)
            problems = list(plan.warnings) + check_deployment_sections(
                load_yaml(path.read_text(encoding="utf-8")), plan, str(path)
            )
            ok = not any(p.severity == "error" for p in problems)
        except GraphInvalid as exc:
            problems, ok = exc.problems, False
        failed = failed or not ok
        report.append({"file": str(path), "valid": ok, "problems": [p.to_dict() for p in problems]})
        if not as_json:
            print_problems(problems)
            if ok:
                out.print(
                    f"[green]✓[/green] {path}: valid ({len(plan.nodes)} node{'s' if len(plan.nodes) != 1 else ''}, "
                    f"capability '{plan.capability}')",
                    highlight=False,
                )
            else:
                count = sum(p.severity == "error" for p in problems)
                err.print(f"[red]✗[/red] {path}: {count} error{'s' if count != 1 else ''}", highlight=False)
    if as_json:
        emit_json(report if len(report) > 1 else report[0])
    raise typer.Exit(1 if failed else 0)


def run(
    graph: GraphArg,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="NAME=VALUE; images are file paths")] = [],
    sets: Annotated[list[str], typer.Option("--set", "-s", help="NODE.PARAM=VALUE or SWITCH=VALUE (YAML value)")] = [],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the outputs")] = Path("out"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: CUDA if present)")] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", help="also write the run (picture, inputs, outputs, timings) as one self-contained HTML file"
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a graph in this process on one frame and write its outputs to a folder."""
    from capgraph.engine.codecs import from_arg
    from capgraph.engine.executor import Executor

    plan = load_graph(graph, sets)
    frame: dict[str, Any] = {}
    for item in inputs:
        name, eq, value = item.partition("=")
        if not eq:
            raise typer.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--input")
        spec = plan.spec.inputs.get(name)
        if spec is None:
            raise InputError(
                f"--input {name}",
                f"the graph has no input '{name}'; its inputs are {', '.join(plan.spec.inputs) or '(none)'}",
            )
        frame[name] = from_arg(spec.type, value, f"--input {name}")
    executor = Executor(plan, device=device)
    with err.status(f"loading {len(plan.nodes)} nodes on {executor.device}…", spinner="dots"):
        load_s = executor.load()
    start = time.perf_counter()
    result = executor.run([frame])
    total_ms = (time.perf_counter() - start) * 1000.0
    files = write_outputs(plan, result.outputs[0], output)
    if html is not None:
        write_report(
            plan, frame, result.outputs[0], result.timings_ms | {"total": total_ms}, load_s, executor.device, html
        )
    if as_json:
        emit_json(
            {
                "outputs": files,
                "timings_ms": result.timings_ms,
                **({"skipped": list(result.skipped[0])} if plan.conditions else {}),
                "total_ms": total_ms,
                "load_s": load_s,
                "device": executor.device,
            }
            | ({"html": str(html)} if html is not None else {})
        )
        return
    table = Table(title=f"{plan.capability} on {executor.device}", title_justify="left")
    for column, justify in (("node", "left"), ("type", "left"), ("load s", "right"), ("run ms", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for node_id, node in plan.nodes.items():
        ran = f"{result.timings_ms[node_id]:.1f}" if node_id in result.timings_ms else f"skipped (when {node.when})"
        if f"{node_id}.batch" in result.timings_ms:  # over a clip: frames per call
            ran += f" ({result.timings_ms[f'{node_id}.batch']:.0f} frames a call)"
        table.add_row(node_id, node.family.type, f"{load_s.get(node_id, 0):.2f}", ran)
    table.add_row("[b]total[/b]", "", f"{sum(load_s.values()):.2f}", f"[b]{total_ms:.1f}[/b]")
    out.print(table)
    for name, path in files.items():
        out.print(f"[green]→[/green] {name}: {path}", highlight=False)
    if html is not None:
        out.print(f"[green]→[/green] report: {html}", highlight=False)


def write_report(
    plan: Plan,
    frame: dict[str, Any],
    outputs: dict[str, Any],
    timings_ms: dict[str, float],
    load_s: dict[str, float],
    device: str,
    path: Path,
) -> None:
    """The run as one HTML file (`serve.capability.report`), its nodes boxed as `capgraph render` boxes them."""
    from capgraph.engine.executor import check_inputs
    from capgraph.serve.capability import run_report
    from capgraph.serve.cluster import deployments

    page = run_report(plan, check_inputs(plan, frame), outputs, timings_ms, load_s, device, deployments(plan))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


def write_outputs(plan: Plan, values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write each output as a file a person can open (PNG, NPY, MP4) and the rest as JSON."""
    import numpy as np

    from capgraph.engine.values import encode_image
    from capgraph.engine.video import encode_video

    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {}
    for name, value in values.items():
        kind = plan.output_type(name)
        if kind is PortType.IMAGE:
            (folder / f"{name}.png").write_bytes(encode_image(value))
            written[name] = str(folder / f"{name}.png")
        elif kind in (PortType.MASK, PortType.DEPTH_MAP):
            np.save(folder / f"{name}.npy", value)
            (folder / f"{name}.png").write_bytes(encode_image(value))
            written[name] = str(folder / f"{name}.png")
        elif kind is PortType.SEGMENTATION_MAP:
            np.save(folder / f"{name}.npy", value)
            written[name] = str(folder / f"{name}.npy")
        elif kind is PortType.MASKS:
            np.savez(folder / f"{name}.npz", **{k: np.asarray(v) for k, v in value.items()})
            written[name] = str(folder / f"{name}.npz")
        elif kind is PortType.VIDEO:
            (folder / f"{name}.mp4").write_bytes(encode_video(value))
            written[name] = str(folder / f"{name}.mp4")
        elif kind is PortType.BYTES:
            suffix = ".png" if value[:4] == b"\x89PNG" else ".jpg" if value[:2] == b"\xff\xd8" else ".bin"
            (folder / f"{name}{suffix}").write_bytes(value)
            written[name] = str(folder / f"{name}{suffix}")
        else:
            written[name] = value
    (folder / "outputs.json").write_text(json.dumps(written, indent=2, default=str) + "\n")
    return written


def nodes(
    family: Annotated[str | None, typer.Argument(help="show one family")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The node catalogue: every family's ports, types and params."""
    from capgraph.engine.errors import did_you_mean
    from capgraph.engine.registry import broken, catalogue

    families = catalogue()
    if family is not None and family not in families:
        why = broken(family) or did_you_mean(family, families, allowed_label="Registered types")
        err.print(f"[red]unknown node type '{family}'.[/red] {escape(why)}", highlight=False)
        raise typer.Exit(1)
    chosen = {family: families[family]} if family else families
    entries = {name: describe_family(fam) for name, fam in chosen.items()}
    if as_json:
        emit_json(entries)
        return
    for name, entry in entries.items():
        found = entry["origin"] or {"via": "built-in"}
        source = (
            ""
            if found["via"] == "built-in"
            else f" from {' '.join(filter(None, (found['package'], found['version']))) or found['via']}"
        )
        table = Table(
            title=f"[b]{name}[/b] ({entry['category']}){source} — {entry['description']}",
            title_justify="left",
            show_header=True,
        )
        for column in ("", "name", "type", "default", "about"):
            table.add_column(column)
        for port_name, p in entry["inputs"].items():
            table.add_row("in", port_name, p["type"], "optional" if p["optional"] else "", p["doc"])
        for port_name, p in entry["outputs"].items():
            table.add_row("out", port_name, p["type"], "", p["doc"])
        for param, p in entry["params"].items():
            marker = "param*" if p["per_request"] else "param"
            table.add_row(marker, param, p["type"], json.dumps(p.get("default")), p["doc"])
        out.print(table)
    out.print("param* = a request may set it per call ('params': {'node.param': value})", style="dim")


def describe_family(family: Any) -> dict[str, Any]:
    """A family's catalogue entry, generated from its code (never hand-written)."""
    schema = family.Params.model_json_schema()
    params = {}
    for name, field in family.Params.model_fields.items():
        prop = schema.get("properties", {}).get(name, {})
        kind = (
            prop.get("type")
            or " | ".join(x.get("type", x.get("$ref", "?").split("/")[-1]) for x in prop.get("anyOf", []))
            or "object"
        )
        if "enum" in prop:
            kind = " | ".join(map(str, prop["enum"]))
        params[name] = {
            "type": kind,
            "default": field.default if field.default is not None or not field.is_required() else None,
            "required": field.is_required(),
            "doc": field.description or "",
            "per_request": name in family.request_params,
        }
    from capgraph.engine.registry import origin

    ports = lambda mapping: {n: {"type": p.label, "doc": p.doc, "optional": p.optional} for n, p in mapping.items()}  # noqa: E731
    found = origin(family.type)
    return {
        "category": family.category,
        "origin": {"package": found.package, "version": found.version, "via": found.via} if found else None,
        "description": family.doc(),
        "uses_gpu": family.uses_gpu,
        "inputs": ports(family.inputs),
        "outputs": ports(family.outputs),
        "params": params,
    }


def schema(output: Annotated[Path | None, typer.Option("--output", "-o", help="write to a file")] = None) -> None:
    """The JSON Schema of graph files, for editors (YAML language server) and CI."""
    from capgraph.engine.registry import catalogue
    from capgraph.engine.spec import json_schema_for

    text = json.dumps(json_schema_for(catalogue()), indent=2) + "\n"
    if output:
        output.write_text(text)
        err.print(f"[green]→[/green] {output}", highlight=False)
    else:
        sys.stdout.write(text)


def render(
    graph: GraphArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help=".mmd/.md (Mermaid), .dot, .svg or .png")
    ] = None,
    deployments: Annotated[
        bool,
        typer.Option(
            "--deployments/--no-deployments", help="box the nodes by the Ray Serve deployment they compile to"
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Draw a graph: Mermaid text always, SVG/PNG through Graphviz's `dot`; nodes boxed by
    the deployment the Serve compiler puts them in (`capgraph plan` says why)."""
    from capgraph.engine.render import dot, dot_to, mermaid

    plan = load_graph(graph)
    boxes = None
    if deployments:
        from capgraph.serve.cluster import deployments as compiled_deployments

        boxes = compiled_deployments(plan)
    suffix = output.suffix.lower().lstrip(".") if output else "mmd"
    if as_json:
        emit_json({"mermaid": mermaid(plan, boxes), "dot": dot(plan, boxes), "deployments": boxes})
        return
    if suffix in ("svg", "png"):
        data = dot_to(suffix, dot(plan, boxes))
    elif suffix == "dot":
        data = dot(plan, boxes).encode()
    elif suffix in ("mmd", "md", "mermaid"):
        text = mermaid(plan, boxes)
        data = (f"```mermaid\n{text}```\n" if suffix == "md" else text).encode()
    else:
        raise typer.BadParameter(
            f"unknown format '.{suffix}'; use .mmd, .md, .dot, .svg or .png", param_hint="--output"
        )
    if output is None:
        sys.stdout.write(data.decode())
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    err.print(f"[green]→[/green] {output}", highlight=False)
