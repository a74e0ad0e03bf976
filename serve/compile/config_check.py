"""A graph file that is also a Ray Serve config: keep its two halves from drifting apart.

`check_applications` reports an `applications:` entry whose `args.graph` is not the file's
own graph (as a `GraphError`); `with_applications` adds the YAML anchors and the entry to a
graph file's text. docs/serving.md ("One file, two halves") shows the layout.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capgraph.engine.errors import GraphError, GraphInvalid
from capgraph.engine.mounts import mounts, section_names
from capgraph.engine.spec import GRAPH_KEYS
from capgraph.engine.yamlload import YamlProblem, load_yaml, locate, plain

BUILDER = "capgraph.serve.app:build"
SECTIONS = (*GRAPH_KEYS, *sorted(section_names()))


def check_applications(tree: Any, file: str = "<graph>") -> list[GraphError]:
    """Problems with the capgraph entries of a graph file's `applications:` list."""
    if not isinstance(tree, Mapping) or not isinstance(tree.get("applications"), list):
        return []
    problems = []
    for index, app in enumerate(tree["applications"]):
        if not isinstance(app, Mapping) or app.get("import_path") != BUILDER:
            continue
        at = ("applications", index)
        args = app.get("args")
        graph = args.get("graph") if isinstance(args, Mapping) else None
        if graph is None:
            problems.append(
                _error(
                    tree,
                    file,
                    at,
                    "missing_field",
                    f"applications[{index}] runs {BUILDER} but has no 'args.graph'.",
                    "Add 'args: {graph: {capability: *capability, inputs: *inputs, "
                    "nodes: *nodes, outputs: *outputs}}'.",
                )
            )
            continue
        if isinstance(graph, str):
            continue  # a path: the builder validates that file itself
        if not isinstance(graph, Mapping):
            problems.append(
                _error(
                    tree,
                    file,
                    at + ("args", "graph"),
                    "bad_value",
                    f"applications[{index}].args.graph must be the graph's sections or a file path.",
                )
            )
            continue
        for key in GRAPH_KEYS:
            if tree.get(key) != graph.get(key):
                where = "missing from" if key not in graph else "differs from the top-level section in"
                problems.append(
                    _error(
                        tree,
                        file,
                        at + ("args", "graph", key) if key in graph else at + ("args", "graph"),
                        "args_drift",
                        f"'{key}' {where} applications[{index}].args.graph, so `serve run` would serve another graph "
                        "than `capgraph validate` checks.",
                        f"Anchor the section ('{key}: &{key}') and alias it ('{key}: *{key}').",
                    )
                )
        for name in sorted(section_names() & set(tree)):
            if not isinstance(args, Mapping) or args.get(name) != tree[name]:
                problems.append(
                    _error(
                        tree,
                        file,
                        at + ("args",),
                        "args_drift",
                        f"the top-level '{name}' section is not passed as applications[{index}].args.{name}.",
                        f"Add '{name}: *{name}' to its args.",
                    )
                )
    return problems


def check_deployment_sections(tree: Any, plan: Any, file: str = "<graph>") -> list[GraphError]:
    """What `capgraph validate` adds to the graph checks for a file that is also a Serve
    config: the `applications:` entries and each mount's section, with their lines."""
    problems = check_applications(tree, file)
    for name, mount in mounts().items():
        raw = tree.get(name) if isinstance(tree, Mapping) else None
        for text in mount.check(raw, plan):
            where = text.partition(":")[0]
            path = tuple(int(k) if k.isdigit() else k for k in where.split(".") if k)
            problems.append(_error(tree, file, path, name, text))
    return problems


def _error(tree: Any, file: str, path: tuple[Any, ...], code: str, message: str, hint: str | None = None) -> GraphError:
    line, column = locate(tree, path) or (None, None)
    return GraphError(code, message, file, line, column, hint=hint)


_TOP = re.compile(rf"^(?P<key>{'|'.join(SECTIONS)}):(?P<rest>.*)$")


def with_applications(text: str, route_prefix: str = "/") -> str:
    """A graph file's text with anchors on its sections and a Serve `applications:` entry
    aliasing them. Text that already has `applications:` is returned unchanged."""
    if re.search(r"^applications:", text, re.M):
        return text
    lines, present, capability = [], [], None
    for line in text.splitlines():
        match = _TOP.match(line)
        if match and not match["rest"].lstrip().startswith("&"):
            key, rest = match["key"], match["rest"].strip()
            present.append(key)
            if key == "capability":
                capability = rest
            line = f"{key}: &{key}" + (f" {rest}" if rest else "")
        lines.append(line)
    graph = ", ".join(f"{k}: *{k}" for k in GRAPH_KEYS if k in present)
    block = [
        "",
        "# Ray Serve: this file is also a `serve run` / `serve deploy` config. The graph travels",
        "# in args as aliases of the sections above, so a cluster needs no copy of the file.",
        "applications:",
        f"  - name: {capability or 'capgraph'}",
        f"    route_prefix: {route_prefix}",
        f"    import_path: {BUILDER}",
        "    args:",
        f"      graph: {{{graph}}}",
    ]
    block += [f"      {name}: *{name}" for name in sorted(section_names()) if name in present]
    return "\n".join(lines).rstrip("\n") + "\n" + "\n".join(block) + "\n"


def application(path: str | Path) -> dict[str, Any]:
    """The graph file's capgraph `applications:` entry, aliases resolved: what `serve
    deploy FILE` sends (a bare graph file gets the entry `capgraph validate` suggests)."""
    file = str(path)
    text = with_applications(Path(path).read_text(encoding="utf-8"))
    try:
        tree = load_yaml(text)
    except YamlProblem as exc:
        raise GraphInvalid([GraphError("yaml", exc.message, file, exc.line, exc.column)]) from None
    problems = check_applications(tree, file)
    if problems:
        raise GraphInvalid(problems)
    entries = [e for e in tree["applications"] if isinstance(e, Mapping) and e.get("import_path") == BUILDER]
    if len(entries) != 1:
        raise GraphInvalid(
            [
                GraphError(
                    "applications",
                    f"{len(entries)} applications run {BUILDER}; one graph file must hold exactly one such entry here",
                    file,
                )
            ]
        )
    return plain(entries[0])
