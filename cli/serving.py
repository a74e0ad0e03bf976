"""Serving and Livepeer commands: serve, plan, tune, register, runners-json."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.markup import escape

from capgraph.cli.common import GraphArg, JsonOpt, emit_json, err, load_graph, out
from capgraph.engine.errors import InputError

GraphsArg = Annotated[
    list[Path],
    typer.Argument(
        exists=True,
        dir_okay=False,
        readable=True,
        help="graph file(s) (YAML); several are served together, sharing their models",
    ),
]


def serve_cmd(
    graph: GraphsArg,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    fuse: Annotated[
        str,
        typer.Option(
            help=(
                "auto: the planner chooses (default); groups: only nodes sharing a group; all: one deployment; "
                "none: one per node"
            )
        ),
    ] = "auto",
    address: Annotated[
        str | None,
        typer.Option(
            help="join a running Ray cluster: auto (the one `ray start` left here) or "
            "HOST:PORT of its head (default: start a local Ray of its own)"
        ),
    ] = None,
    preflight: Annotated[str, typer.Option(help="fail, warn or off when the graph does not fit the cluster")] = "fail",
) -> None:
    """Serve a graph as one capability on Ray Serve (the same builder as `serve run GRAPH`).
    Several graphs are each a capability at /<capability>, and a model their nodes load
    alike runs once for all of them."""
    from capgraph.serve.operate import serve_graph

    for path in graph:
        load_graph(path)  # the same messages and exit code as `capgraph validate`
    raise typer.Exit(
        serve_graph([str(p) for p in graph], host=host, port=port, fuse=fuse, address=address, preflight=preflight)
    )  # type: ignore[arg-type]


def plan_cmd(
    graph: GraphsArg,
    fuse: Annotated[str, typer.Option(help="auto (the planner), groups, all or none")] = "auto",
    address: Annotated[
        str | None,
        typer.Option(
            help="plan against a running Ray cluster (auto or HOST:PORT) and show "
            "which machine each replica would land on (default: this machine)"
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the Ray Serve deployments a graph compiles to, where each replica would go, and
    whether it fits the cluster."""
    from capgraph.serve.operate import serve_graph

    for path in graph:
        load_graph(path)
    raise typer.Exit(
        serve_graph(
            [str(p) for p in graph], fuse=fuse, dry_run=True, as_json=as_json, preflight="warn", address=address
        )
    )  # type: ignore[arg-type]


def tune(
    graph: GraphArg,
    max_batch: Annotated[int, typer.Option("--max-batch", help="profile batch sizes 1, 2, 4 ... up to this")] = 16,
    size: Annotated[
        int | None, typer.Option(help="side of the example frame in pixels (default 64 on tiny models, 512 on real)")
    ] = None,
    params: Annotated[
        list[str], typer.Option("--param", "-p", help="NODE.PARAM=VALUE request params to profile with")
    ] = [],
    repeats: Annotated[int, typer.Option(help="timed runs per batch size (the median counts)")] = 3,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="overlay file (default: the machine's tuned folder)")
    ] = None,
    print_yaml: Annotated[
        bool, typer.Option("--print", help="print the settings as YAML to paste instead of writing an overlay")
    ] = False,
) -> None:
    """Profile each node on this machine at batch sizes 1..N and write the serving settings
    (batch sizes and waits, groups, GPU fractions, replicas) as an overlay that `serve run`,
    `capgraph serve` and `capgraph plan` pick up."""
    from capgraph.serve.operate import tune_graph

    load_graph(graph)
    overrides = {}
    for item in params:
        key, eq, value = item.partition("=")
        if not eq:
            raise typer.BadParameter(f"'{item}' is not NODE.PARAM=VALUE", param_hint="--param")
        overrides[key] = yaml.safe_load(value)
    code = tune_graph(
        str(graph),
        max_batch=max_batch,
        size=size,
        params=overrides,
        repeats=repeats,
        output=str(output) if output else None,
        print_yaml=print_yaml,
    )
    raise typer.Exit(code)


def register(
    graph: GraphArg,
    unregister: Annotated[bool, typer.Option("--unregister", help="remove the registration instead")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="keep it registered (a sidecar) until Ctrl-C")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register the graph's capability with the Livepeer orchestrator(s) of its `livepeer:`
    section (secrets come from the environment) and print what each answered."""
    from capgraph.livepeer.registrar import register_graph

    load_graph(graph)
    try:
        answers = register_graph(graph, unregister=unregister, follow=follow)
    except ValueError as exc:
        raise InputError("livepeer", str(exc)) from None
    if as_json:
        emit_json(answers)
    for answer in answers if not as_json else ():
        ok = 200 <= int(answer.get("status") or 0) < 300
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        out.print(
            f"{mark} {answer['kind']} {escape(str(answer['orchestrator']))}: {answer['status']} "
            f"{escape(str(answer.get('body', ''))[:200])}",
            highlight=False,
        )
    raise typer.Exit(0 if all(200 <= int(a.get("status") or 0) < 300 for a in answers) else 1)


def runners_json_cmd(
    graph: GraphArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="runners.json to write (merged if it exists)")
    ] = None,
) -> None:
    """Write the static Live Runner entry (runners.json) for this graph."""
    from capgraph.livepeer.registrar import runners_json

    load_graph(graph)
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
