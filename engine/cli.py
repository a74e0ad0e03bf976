"""`capgraph`: validate, run, inspect and prepare graphs from the shell.

Exit codes: 0 success, 1 an invalid graph or a failed run, 2 a usage error. Every
command takes `--json` for machines. A user's mistake is a message, never a traceback.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.errors import GraphError, GraphInvalid, InputError
from engine.plan import Plan
from engine.types import PortType

app = typer.Typer(
    name="capgraph",
    help="Declarative GPU pipeline graphs (vision -> condition -> generation), served as one capability.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages stay one line each: greppable

GraphArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="graph file (YAML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _print_problems(problems: list[GraphError]) -> None:
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        err.print(f"[{style}]{escape(str(problem))}[/{style}]", highlight=False, soft_wrap=True)


def _load(path: Path, sets: list[str] | None = None) -> Plan:
    """Validate a graph file (with `--set` edits applied); exit 1 with every problem."""
    from engine.validate import load_plan, plan_from_data
    from engine.yamlload import YamlProblem, load_yaml

    if not sets:
        return load_plan(path)
    try:
        tree = load_yaml(path.read_text(encoding="utf-8"))
    except YamlProblem as exc:
        raise GraphInvalid([GraphError("yaml", exc.message, str(path), exc.line, exc.column)]) from None
    for item in sets:
        key, eq, value = item.partition("=")
        node_id, dot, param = key.partition(".")
        if not (eq and dot and param):
            raise typer.BadParameter(f"'{item}' is not NODE.PARAM=VALUE", param_hint="--set")
        node = (tree.get("nodes") or {}).get(node_id) if isinstance(tree, dict) else None
        if not isinstance(node, dict):
            raise InputError(f"--set {key}", f"the graph has no node '{node_id}'")
        node.setdefault("params", {})[param] = yaml.safe_load(value) if value else value
    return plan_from_data(tree, str(path))


@app.command()
def validate(graphs: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="graph files")], as_json: JsonOpt = False) -> None:
    """Check graph files: YAML, node types, params, wiring, port types, cycles."""
    from engine.validate import load_plan

    from engine.yamlload import load_yaml
    from serve.config_check import check_deployment_sections

    report, failed = [], False
    for path in graphs:
        try:
            plan = load_plan(path)
            problems = list(plan.warnings) + check_deployment_sections(load_yaml(path.read_text(encoding="utf-8")), plan, str(path))
            ok = not any(p.severity == "error" for p in problems)
        except GraphInvalid as exc:
            problems, ok = exc.problems, False
        failed = failed or not ok
        report.append({"file": str(path), "valid": ok, "problems": [p.to_dict() for p in problems]})
        if not as_json:
            _print_problems(problems)
            if ok:
                out.print(f"[green]✓[/green] {path}: valid ({len(plan.nodes)} node{'s' if len(plan.nodes) != 1 else ''}, capability '{plan.capability}')", highlight=False)
            else:
                count = sum(p.severity == "error" for p in problems)
                err.print(f"[red]✗[/red] {path}: {count} error{'s' if count != 1 else ''}", highlight=False)
    if as_json:
        _emit_json(report if len(report) > 1 else report[0])
    raise typer.Exit(1 if failed else 0)


@app.command()
def run(
    graph: GraphArg,
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="NAME=VALUE; images are file paths")] = [],
    sets: Annotated[list[str], typer.Option("--set", "-s", help="NODE.PARAM=VALUE (YAML value)")] = [],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the outputs")] = Path("out"),
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: CUDA if present)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a graph in this process on one frame and write its outputs to a folder."""
    from engine.executor import Executor
    from engine.values import parse_text

    plan = _load(graph, sets)
    frame: dict[str, Any] = {}
    for item in inputs:
        name, eq, value = item.partition("=")
        if not eq:
            raise typer.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--input")
        spec = plan.spec.inputs.get(name)
        if spec is None:
            raise InputError(f"--input {name}", f"the graph has no input '{name}'; its inputs are {', '.join(plan.spec.inputs) or '(none)'}")
        frame[name] = parse_text(spec.type, value, f"--input {name}")
    executor = Executor(plan, device=device)
    with err.status(f"loading {len(plan.nodes)} nodes on {executor.device}…", spinner="dots"):
        load_s = executor.load()
    start = time.perf_counter()
    result = executor.run([frame])
    total_ms = (time.perf_counter() - start) * 1000.0
    files = write_outputs(plan, result.outputs[0], output)
    if as_json:
        _emit_json({"outputs": files, "timings_ms": result.timings_ms, "total_ms": total_ms, "load_s": load_s, "device": executor.device})
        return
    table = Table(title=f"{plan.capability} on {executor.device}", title_justify="left")
    for column, justify in (("node", "left"), ("type", "left"), ("load s", "right"), ("run ms", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for node_id, node in plan.nodes.items():
        table.add_row(node_id, node.family.type, f"{load_s.get(node_id, 0):.2f}", f"{result.timings_ms[node_id]:.1f}")
    table.add_row("[b]total[/b]", "", f"{sum(load_s.values()):.2f}", f"[b]{total_ms:.1f}[/b]")
    out.print(table)
    for name, path in files.items():
        out.print(f"[green]→[/green] {name}: {path}", highlight=False)


def write_outputs(plan: Plan, values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write each output as a file a person can open (PNG, NPY) and the rest as JSON."""
    import numpy as np

    from engine.values import encode_image

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
        elif kind is PortType.BYTES:
            suffix = ".png" if value[:4] == b"\x89PNG" else ".jpg" if value[:2] == b"\xff\xd8" else ".bin"
            (folder / f"{name}{suffix}").write_bytes(value)
            written[name] = str(folder / f"{name}{suffix}")
        else:
            written[name] = value
    (folder / "outputs.json").write_text(json.dumps(written, indent=2, default=str) + "\n")
    return written


@app.command()
def nodes(
    family: Annotated[str | None, typer.Argument(help="show one family")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The node catalogue: every family's ports, types and params."""
    from engine.errors import did_you_mean
    from engine.registry import catalogue

    families = catalogue()
    if family is not None and family not in families:
        err.print(f"[red]unknown node type '{family}'.[/red] {did_you_mean(family, families, allowed_label='Registered types')}", highlight=False)
        raise typer.Exit(1)
    chosen = {family: families[family]} if family else families
    entries = {name: describe_family(fam) for name, fam in chosen.items()}
    if as_json:
        _emit_json(entries)
        return
    for name, entry in entries.items():
        table = Table(title=f"[b]{name}[/b] ({entry['category']}) — {entry['description']}", title_justify="left", show_header=True)
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
        kind = prop.get("type") or " | ".join(x.get("type", x.get("$ref", "?").split("/")[-1]) for x in prop.get("anyOf", [])) or "object"
        if "enum" in prop:
            kind = " | ".join(map(str, prop["enum"]))
        params[name] = {
            "type": kind,
            "default": field.default if field.default is not None or not field.is_required() else None,
            "required": field.is_required(),
            "doc": field.description or "",
            "per_request": name in family.request_params,
        }
    ports = lambda mapping: {n: {"type": p.label, "doc": p.doc, "optional": p.optional} for n, p in mapping.items()}  # noqa: E731
    return {
        "category": family.category,
        "description": family.doc(),
        "uses_gpu": family.uses_gpu,
        "inputs": ports(family.inputs),
        "outputs": ports(family.outputs),
        "params": params,
    }


@app.command()
def schema(output: Annotated[Path | None, typer.Option("--output", "-o", help="write to a file")] = None) -> None:
    """The JSON Schema of graph files, for editors (YAML language server) and CI."""
    from engine.registry import catalogue
    from engine.spec import json_schema_for

    text = json.dumps(json_schema_for(catalogue()), indent=2) + "\n"
    if output:
        output.write_text(text)
        err.print(f"[green]→[/green] {output}", highlight=False)
    else:
        sys.stdout.write(text)


@app.command()
def render(
    graph: GraphArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=".mmd/.md (Mermaid), .dot, .svg or .png")] = None,
    deployments: Annotated[bool, typer.Option("--deployments/--no-deployments", help="box the nodes by the Ray Serve deployment they compile to")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Draw a graph: Mermaid text always, SVG/PNG through Graphviz's `dot`; nodes boxed by
    the deployment the Serve compiler puts them in (`capgraph plan` says why)."""
    from engine.render import dot, dot_to, mermaid

    plan = _load(graph)
    boxes = None
    if deployments:
        from serve.run import deployments as compiled_deployments

        boxes = compiled_deployments(plan)
    suffix = output.suffix.lower().lstrip(".") if output else "mmd"
    if as_json:
        _emit_json({"mermaid": mermaid(plan, boxes), "dot": dot(plan, boxes), "deployments": boxes})
        return
    if suffix in ("svg", "png"):
        data = dot_to(suffix, dot(plan, boxes))
    elif suffix == "dot":
        data = dot(plan, boxes).encode()
    elif suffix in ("mmd", "md", "mermaid"):
        text = mermaid(plan, boxes)
        data = (f"```mermaid\n{text}```\n" if suffix == "md" else text).encode()
    else:
        raise typer.BadParameter(f"unknown format '.{suffix}'; use .mmd, .md, .dot, .svg or .png", param_hint="--output")
    if output is None:
        sys.stdout.write(data.decode())
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    err.print(f"[green]→[/green] {output}", highlight=False)


@app.command()
def prepare(
    graphs: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="graph files")],
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="cache folder (default: the Hugging Face cache)")] = None,
    variant: Annotated[str | None, typer.Option(
        "--variant", help="fp16: the .fp16 weight files where a repo has them; fp32: the full-precision ones; all: both "
                          "(default: fp16 on a machine with a CUDA GPU, else fp32)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download every model the graphs name, so serving starts warm with HF_HUB_OFFLINE=1.
    Only the files the nodes load: no ONNX/OpenVINO/Flax exports, no single-file
    checkpoints beside a diffusers pipeline, one precision of each weight file."""
    from nodes.prepare import prepare as fetch
    from nodes.weights import MODEL_DIR_ENV

    if variant not in (None, "fp16", "fp32", "all"):
        raise typer.BadParameter(f"'{variant}' is not fp16, fp32 or all", param_hint="--variant")

    wanted: dict[str, list[str]] = {}
    for path in graphs:
        plan = _load(path)
        for node_id, node in plan.nodes.items():
            for model in node.build().models():
                wanted.setdefault(model, []).append(f"{path}:{node_id}")
    done, failed = {}, {}
    for model, users in wanted.items():
        if not as_json:
            err.print(f"[b]{model}[/b] (for {', '.join(users)})", highlight=False)
        try:
            done[model] = fetch(model, str(model_dir) if model_dir else None, variant)  # type: ignore[arg-type]
        except Exception as exc:  # network, auth, missing repo: report each and go on
            failed[model] = f"{type(exc).__name__}: {str(exc)[:300]}"
            if not as_json:
                err.print(f"[red]  could not fetch {escape(model)}: {escape(failed[model])}[/red]", highlight=False)
    if as_json:
        _emit_json({"prepared": done, "failed": failed})
    else:
        for model, path in done.items():
            out.print(f"[green]✓[/green] {model} → {path}", highlight=False)
        if done and not failed:
            hint = f" {MODEL_DIR_ENV}={model_dir}" if model_dir else ""
            out.print(f"Serve offline with: HF_HUB_OFFLINE=1{hint} serve run {graphs[0]}", highlight=False)
        if not wanted:
            out.print("No model to fetch: these graphs use weightless nodes only.")
    raise typer.Exit(1 if failed else 0)


@app.command("tiny-models")
def tiny_models(folder: Annotated[Path, typer.Argument(file_okay=False, help="where to write them")], as_json: JsonOpt = False) -> None:
    """Write the tiny random-initialised model of every family (real repo layouts), for
    offline runs and tests. CAPGRAPH_MODELS=tiny uses them automatically."""
    from engine.registry import catalogue
    from nodes.weights import tiny_model

    written = {}
    for family in catalogue().values():
        for key, build in family.tiny_models().items():
            if not as_json:
                err.print(f"building {key}…", highlight=False)
            written[key] = str(tiny_model(key, build, root=folder))
    if as_json:
        _emit_json(written)
    else:
        for key, path in written.items():
            out.print(f"[green]✓[/green] {key} → {path}", highlight=False)


@app.command("random-models")
def random_models(
    folder: Annotated[Path, typer.Argument(file_okay=False, help="where to write them (then set CAPGRAPH_RANDOM_DIR to it)")],
    only: Annotated[list[str], typer.Option("--only", help="model keys to write (default: all)")] = [],
    as_json: JsonOpt = False,
) -> None:
    """Write every family's model at its real full size with random fp16 weights (on CUDA
    when present), for measuring speed and VRAM with no hub: CAPGRAPH_MODELS=random."""
    from engine.registry import catalogue
    from nodes.weights import write_random_models

    try:
        written = write_random_models(folder, catalogue().values(), only or None)
    except KeyError as exc:
        raise InputError("--only", str(exc.args[0])) from None
    if as_json:
        _emit_json(written)
        return
    for key, path in written.items():
        out.print(f"[green]✓[/green] {key} → {path}", highlight=False)
    out.print(f"Use them with: CAPGRAPH_MODELS=random CAPGRAPH_RANDOM_DIR={folder}", highlight=False)


@app.command("serve")
def serve_cmd(
    graph: GraphArg,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    fuse: Annotated[str, typer.Option(help="auto: the planner chooses (default); groups: only nodes sharing a group; all: one deployment; none: one per node")] = "auto",
    address: Annotated[str | None, typer.Option(help="join a running Ray cluster (default: start a local one)")] = None,
    preflight: Annotated[str, typer.Option(help="fail, warn or off when the graph does not fit the cluster")] = "fail",
) -> None:
    """Serve a graph as one capability on Ray Serve (the same builder as `serve run GRAPH`)."""
    from serve.run import serve_graph

    _load(graph)  # the same messages and exit code as `capgraph validate`
    raise typer.Exit(serve_graph(str(graph), host=host, port=port, fuse=fuse, address=address, preflight=preflight))  # type: ignore[arg-type]


@app.command("plan")
def plan_cmd(
    graph: GraphArg,
    fuse: Annotated[str, typer.Option(help="auto (the planner), groups, all or none")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Print the Ray Serve deployments a graph compiles to, and whether it fits the cluster."""
    from serve.run import serve_graph

    _load(graph)
    raise typer.Exit(serve_graph(str(graph), fuse=fuse, dry_run=True, as_json=as_json, preflight="warn"))  # type: ignore[arg-type]


@app.command()
def tune(
    graph: GraphArg,
    max_batch: Annotated[int, typer.Option("--max-batch", help="profile batch sizes 1, 2, 4 ... up to this")] = 16,
    size: Annotated[int | None, typer.Option(help="side of the example frame in pixels (default 64 on tiny models, 512 on real)")] = None,
    params: Annotated[list[str], typer.Option("--param", "-p", help="NODE.PARAM=VALUE request params to profile with")] = [],
    repeats: Annotated[int, typer.Option(help="timed runs per batch size (the median counts)")] = 3,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="overlay file (default: the machine's tuned folder)")] = None,
    print_yaml: Annotated[bool, typer.Option("--print", help="print the settings as YAML to paste instead of writing an overlay")] = False,
) -> None:
    """Profile each node on this machine at batch sizes 1..N and write the serving settings
    (batch sizes and waits, groups, GPU fractions, replicas) as an overlay that `serve run`,
    `capgraph serve` and `capgraph plan` pick up."""
    from serve.tune import tune_graph

    _load(graph)
    overrides = {}
    for item in params:
        key, eq, value = item.partition("=")
        if not eq:
            raise typer.BadParameter(f"'{item}' is not NODE.PARAM=VALUE", param_hint="--param")
        overrides[key] = yaml.safe_load(value)
    code = tune_graph(str(graph), max_batch=max_batch, size=size, params=overrides, repeats=repeats,
                      output=str(output) if output else None, print_yaml=print_yaml)
    raise typer.Exit(code)


@app.command()
def register(
    graph: GraphArg,
    unregister: Annotated[bool, typer.Option("--unregister", help="remove the registration instead")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="keep it registered (a sidecar) until Ctrl-C")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register the graph's capability with the Livepeer orchestrator(s) of its `livepeer:`
    section (secrets come from the environment) and print what each answered."""
    from serve.livepeer.registrar import register_graph

    _load(graph)
    try:
        answers = register_graph(graph, unregister=unregister, follow=follow)
    except ValueError as exc:
        raise InputError("livepeer", str(exc)) from None
    if as_json:
        _emit_json(answers)
    for answer in answers if not as_json else ():
        ok = 200 <= int(answer.get("status") or 0) < 300
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        out.print(f"{mark} {answer['kind']} {escape(str(answer['orchestrator']))}: {answer['status']} {escape(str(answer.get('body', ''))[:200])}", highlight=False)
    raise typer.Exit(0 if all(200 <= int(a.get("status") or 0) < 300 for a in answers) else 1)


@app.command("runners-json")
def runners_json_cmd(
    graph: GraphArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="runners.json to write (merged if it exists)")] = None,
) -> None:
    """Write the static Live Runner entry (runners.json) for this graph."""
    from serve.livepeer.registrar import runners_json

    _load(graph)
    existing = json.loads(output.read_text()) if output and output.exists() else None
    try:
        data = runners_json(graph, existing)
    except ValueError as exc:
        raise InputError("livepeer", str(exc)) from None
    text = json.dumps(data, indent=2) + "\n"
    if output:
        output.write_text(text)
        err.print(f"[green]→[/green] {output}", highlight=False)
    else:
        sys.stdout.write(text)


def main() -> None:
    """Console entry point: turns user mistakes into messages and exit codes."""
    if sys.argv[1:2] != ["prepare"]:  # only `prepare` downloads; elsewhere bars are noise
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()  # standalone: Typer answers usage errors itself, with exit code 2
    except GraphInvalid as exc:
        _print_problems(exc.problems)
        raise SystemExit(1) from None
    except InputError as exc:
        err.print(f"[red]{escape(exc.field)}: {escape(exc.message)}[/red]", highlight=False)
        raise SystemExit(1) from None
    except Exception as exc:
        known = _known_failure(exc)
        if known is None:
            raise
        err.print(f"[red]{escape(known)}[/red]", highlight=False)
        raise SystemExit(1) from None


def _known_failure(exc: Exception) -> str | None:
    """Failures that are the environment's, not capgraph's: say them plainly."""
    from engine.errors import NodeFailed
    from engine.render import GraphvizMissing
    from nodes.weights import ModelMissing

    if isinstance(exc, (ModelMissing, GraphvizMissing, NodeFailed)):
        return str(exc)
    return None


if __name__ == "__main__":
    main()
