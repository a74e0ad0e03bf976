"""`capgraph`: validate, run, inspect and prepare graphs, and serve them, from the shell.

Exit codes: 0 success, 1 an invalid graph or a failed run, 2 a usage error. A user's
mistake is a message, never a traceback. The commands live by what they work on: graphs
(`cli.graph`), weights (`cli.weights`), serving and Livepeer (`cli.serving`), deploying
elsewhere (`cli.deploy`).
"""

import os
import sys

import typer
from rich.markup import escape

from capgraph.cli import deploy, graph, serving, weights
from capgraph.cli.common import err, print_problems
from capgraph.engine.errors import GraphInvalid, InputError

app = typer.Typer(
    name="capgraph",
    help="Declarative GPU pipeline graphs (vision -> condition -> generation), served as one capability.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for name, command in (
    ("validate", graph.validate),
    ("run", graph.run),
    ("nodes", graph.nodes),
    ("schema", graph.schema),
    ("render", graph.render),
    ("prepare", weights.prepare),
    ("tiny-models", weights.tiny_models),
    ("random-models", weights.random_models),
    ("serve", serving.serve_cmd),
    ("plan", serving.plan_cmd),
    ("tune", serving.tune),
    ("register", serving.register),
    ("runners-json", serving.runners_json_cmd),
    ("kuberay", deploy.kuberay),
    ("serve-config", deploy.serve_config_cmd),
):
    app.command(name)(command)


def main() -> None:
    """Console entry point: turns user mistakes into messages and exit codes."""
    if sys.argv[1:2] != ["prepare"]:  # only `prepare` downloads; elsewhere bars are noise
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()  # standalone: Typer answers usage errors itself, with exit code 2
    except GraphInvalid as exc:
        print_problems(exc.problems)
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
    from capgraph.engine.errors import NodeFailed
    from capgraph.engine.render import GraphvizMissing
    from capgraph.engine.weights import ModelMissing

    if isinstance(exc, (ModelMissing, GraphvizMissing, NodeFailed)):
        return str(exc)
    return None
