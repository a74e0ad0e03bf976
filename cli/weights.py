"""Weight commands: prepare (fetch what the graphs load), tiny-models, random-models."""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from capgraph.cli.common import JsonOpt, emit_json, err, load_graph, out
from capgraph.engine.errors import InputError


def prepare(
    graphs: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="graph files")],
    model_dir: Annotated[
        Path | None, typer.Option("--model-dir", help="cache folder (default: the Hugging Face cache)")
    ] = None,
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant",
            help="fp16: the .fp16 weight files where a repo has them; fp32: the full-precision ones; all: both "
            "(default: fp16 on a machine with a CUDA GPU, else fp32)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download every model the graphs name, so serving starts warm with HF_HUB_OFFLINE=1.
    Only the files the nodes load: no ONNX/OpenVINO/Flax exports, no single-file
    checkpoints beside a diffusers pipeline, one precision of each weight file."""
    from capgraph.engine.weights import MODEL_DIR_ENV
    from capgraph.nodes.prepare import prepare as fetch

    if variant not in (None, "fp16", "fp32", "all"):
        raise typer.BadParameter(f"'{variant}' is not fp16, fp32 or all", param_hint="--variant")

    wanted: dict[str, list[str]] = {}
    for path in graphs:
        plan = load_graph(path)
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
        emit_json({"prepared": done, "failed": failed})
    else:
        for model, path in done.items():
            out.print(f"[green]✓[/green] {model} → {path}", highlight=False)
        if done and not failed:
            hint = f" {MODEL_DIR_ENV}={model_dir}" if model_dir else ""
            out.print(f"Serve offline with: HF_HUB_OFFLINE=1{hint} serve run {graphs[0]}", highlight=False)
        if not wanted:
            out.print("No model to fetch: these graphs use weightless nodes only.")
    raise typer.Exit(1 if failed else 0)


def tiny_models(
    folder: Annotated[Path, typer.Argument(file_okay=False, help="where to write them")], as_json: JsonOpt = False
) -> None:
    """Write the tiny random-initialised model of every family (real repo layouts), for
    offline runs and tests. CAPGRAPH_MODELS=tiny uses them automatically."""
    from capgraph.engine.registry import catalogue
    from capgraph.engine.weights import tiny_model

    written = {}
    for family in catalogue().values():
        for key, build in family.tiny_models().items():
            if not as_json:
                err.print(f"building {key}…", highlight=False)
            written[key] = str(tiny_model(key, build, root=folder))
    if as_json:
        emit_json(written)
    else:
        for key, path in written.items():
            out.print(f"[green]✓[/green] {key} → {path}", highlight=False)


def random_models(
    folder: Annotated[
        Path, typer.Argument(file_okay=False, help="where to write them (then set CAPGRAPH_RANDOM_DIR to it)")
    ],
    only: Annotated[list[str], typer.Option("--only", help="model keys to write (default: all)")] = [],
    as_json: JsonOpt = False,
) -> None:
    """Write every family's model at its real full size with random fp16 weights (on CUDA
    when present), for measuring speed and VRAM with no hub: CAPGRAPH_MODELS=random."""
    from capgraph.engine.registry import catalogue
    from capgraph.engine.weights import write_random_models

    try:
        written = write_random_models(folder, catalogue().values(), only or None)
    except KeyError as exc:
        raise InputError("--only", str(exc.args[0])) from None
    if as_json:
        emit_json(written)
        return
    for key, path in written.items():
        out.print(f"[green]✓[/green] {key} → {path}", highlight=False)
    out.print(f"Use them with: CAPGRAPH_MODELS=random CAPGRAPH_RANDOM_DIR={folder}", highlight=False)
