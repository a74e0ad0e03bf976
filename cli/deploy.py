"""Deploying elsewhere: `capgraph kuberay` writes a KubeRay RayService for a graph file,
`capgraph serve-config` a Serve config of several graphs served together."""

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from capgraph.cli.common import GraphArg, err, load_graph


def kuberay(
    graph: GraphArg,
    image: Annotated[
        str,
        typer.Option(
            help="container image with capgraph (and its models) installed, e.g. one built from docker/Dockerfile"
        ),
    ],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="manifest to write (default: stdout)")] = None,
    name: Annotated[str | None, typer.Option(help="the RayService's name (default: the capability)")] = None,
    gpus_per_worker: Annotated[
        int, typer.Option(min=0, max=16, help="GPUs of one worker machine (0: a CPU-only cluster)")
    ] = 1,
    worker_cpus: Annotated[float, typer.Option(min=0.5, max=1024, help="CPUs of one worker machine")] = 8.0,
    worker_memory: Annotated[str, typer.Option(help="memory of one worker machine, a Kubernetes quantity")] = "32Gi",
    gpu_memory_gib: Annotated[
        float | None,
        typer.Option(
            min=1,
            max=1024,
            help="memory of one GPU, for GPU fractions the graph leaves unset (also passed to the cluster's builder)",
        ),
    ] = None,
    head_cpus: Annotated[float, typer.Option(min=0.5, max=1024, help="CPUs of the head (no replica runs there)")] = 2.0,
    head_memory: Annotated[str, typer.Option(help="memory of the head, a Kubernetes quantity")] = "8Gi",
) -> None:
    """Write a KubeRay RayService manifest: the graph file's Serve application as serveConfigV2,
    a head that holds no replica, and a worker group sized from the plan. Apply it with
    `kubectl apply -f FILE`."""
    from capgraph.serve.operate import Shape, check_name, memory_bytes, rayservice

    load_graph(graph)  # the same messages and exit code as `capgraph validate`
    if name is not None:
        try:
            check_name(name)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--name") from None
    for option, quantity in (("--worker-memory", worker_memory), ("--head-memory", head_memory)):
        try:
            memory_bytes(quantity)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=option) from None
    serve_log = logging.getLogger("ray.serve")
    level = serve_log.level
    serve_log.setLevel(logging.ERROR)  # the plan's notes are printed below, once
    try:
        manifest = rayservice(
            graph,
            image,
            worker=Shape(worker_cpus, worker_memory, gpus_per_worker),
            head=Shape(head_cpus, head_memory),
            name=name,
            gpu_memory_gib=gpu_memory_gib,
        )
    finally:
        serve_log.setLevel(level)
    text = manifest.to_yaml()
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for note in manifest.notes:
        err.print(f"[yellow]{escape(note)}[/yellow]", highlight=False)
    w = manifest.workers
    gpus = f"{w.shape.gpus} GPU, " if w.shape.gpus else ""
    err.print(
        f"worker group '{w.name}': {w.min_workers} to {w.max_workers} machine{'s' if w.max_workers != 1 else ''} of "
        f"{gpus}{w.shape.cpus:g} CPU, {w.shape.memory}",
        highlight=False,
    )
    if manifest.forwarded:
        err.print(f"replicas get from this shell: {', '.join(manifest.forwarded)}", highlight=False)
    if manifest.secrets:
        literals = " ".join(f"--from-literal={k}=..." for k in manifest.secrets)
        err.print(
            f"secrets are not in the manifest; create them first: kubectl create secret generic "
            f"{manifest.secret_name} {literals}",
            highlight=False,
        )
    if output:
        err.print(f"[green]→[/green] {escape(str(output))}   kubectl apply -f {escape(str(output))}", highlight=False)


def serve_config_cmd(
    graph: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help="graph files (YAML)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="config to write (default: stdout)")] = None,
) -> None:
    """Write a Serve config of several graphs served together, for `serve deploy`: each graph
    an application at /<capability>, and the models their nodes load alike in applications
    of their own, called by them all (what `capgraph serve A B` deploys)."""
    import yaml

    from capgraph.serve.operate import serve_config

    plans = [load_graph(path) for path in graph]
    text = yaml.safe_dump(serve_config([str(p) for p in graph], plans), sort_keys=False, width=120)
    if output:
        output.write_text(text, encoding="utf-8")
        err.print(f"[green]→[/green] {output}", highlight=False)
    else:
        sys.stdout.write(text)
