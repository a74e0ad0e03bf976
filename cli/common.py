"""What every `capgraph` command shares: the consoles, the common arguments, JSON output
and loading a graph with its problems printed."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from capgraph.engine.errors import GraphError, GraphInvalid, InputError
from capgraph.engine.plan import Plan

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages stay one line each: greppable

GraphArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="graph file (YAML)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_problems(problems: list[GraphError]) -> None:
    for problem in problems:
        style = "red" if problem.severity == "error" else "yellow"
        err.print(f"[{style}]{escape(str(problem))}[/{style}]", highlight=False, soft_wrap=True)


def load_graph(path: Path, sets: list[str] | None = None) -> Plan:
    """Validate a graph file (with `--set` edits applied); exit 1 with every problem."""
    from capgraph.engine.validate import load_plan, plan_from_data
    from capgraph.engine.yamlload import YamlProblem, load_yaml

    if not sets:
        return load_plan(path)
    try:
        tree = load_yaml(path.read_text(encoding="utf-8"))
    except YamlProblem as exc:
        raise GraphInvalid([GraphError("yaml", exc.message, str(path), exc.line, exc.column)]) from None
    for item in sets:
        key, eq, value = item.partition("=")
        node_id, dot, param = key.partition(".")
        switches = (tree.get("params") or {}) if isinstance(tree, dict) else {}
        if eq and not dot and isinstance(switches.get(key), dict):  # a switch: `--set safety_check=false`
            switches[key]["default"] = yaml.safe_load(value) if value else value
            continue
        if not (eq and dot and param):
            raise typer.BadParameter(f"'{item}' is not NODE.PARAM=VALUE or SWITCH=VALUE", param_hint="--set")
        node = (tree.get("nodes") or {}).get(node_id) if isinstance(tree, dict) else None
        if not isinstance(node, dict):
            raise InputError(f"--set {key}", f"the graph has no node '{node_id}'")
        node.setdefault("params", {})[param] = yaml.safe_load(value) if value else value
    return plan_from_data(tree, str(path))
