"""One run of a graph as a single self-contained HTML file (`capgraph run GRAPH --html
FILE`): the console's picture, the run's inputs, outputs and timings, loading nothing
and running only its own inlined, hash-pinned script. docs/serving.md ("The console").
"""

import base64
import datetime
import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from capgraph.engine.codecs import encode_outputs, encode_value
from capgraph.engine.plan import Plan
from capgraph.engine.render import picture
from capgraph.serve.capability.console import static_text

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header class="top">
  <div class="title"><h1 id="capability"></h1><span id="version" class="badge"></span></div>
  <p id="description" class="dim"></p>
  <p id="summary" class="dim"></p>
</header>
<main>
  <section class="card"><h2>Graph</h2><div id="picture" class="picture-wrap"></div></section>
  <section class="card"><h2>Inputs</h2><div id="inputs"></div></section>
  <section class="card"><h2>Outputs</h2><div id="outputs"></div></section>
  <section class="card"><h2>Timings</h2><div id="timings"></div></section>
</main>
<script type="application/json" id="capgraph-run">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def run_report(
    plan: Plan,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    timings_ms: Mapping[str, float],
    load_s: Mapping[str, float],
    device: str,
    deployments: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The HTML page of one frame's run: `inputs` as the graph got them (defaults filled in),
    `outputs` as the graph gave them, `timings_ms` per node (and `total`), `load_s` per node."""
    run = {
        "capability": plan.capability,
        "version": plan.spec.version,
        "description": plan.spec.description or "",
        "file": plan.file,
        "device": device,
        "when": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "picture": picture(plan, deployments),
        "deployments": {},
        "inputs": {
            name: {
                "type": plan.spec.inputs[name].type.value,
                "value": encode_value(plan.spec.inputs[name].type, value, data_url=True),
            }
            for name, value in inputs.items()
        },
        "outputs": {
            name: {"type": plan.output_type(name).value, "value": value}
            for name, value in encode_outputs(plan, outputs, data_url=True).items()
        },
        "timings_ms": {k: round(float(v), 3) for k, v in timings_ms.items()},
        "load_s": {k: round(float(v), 3) for k, v in load_s.items()},
    }
    css = static_text("console.css")
    js = static_text("capgraph.js") + "\n" + static_text("report.js")
    csp = (
        f"default-src 'none'; img-src data:; media-src data:; style-src '{_sha256(css)}'; script-src '{_sha256(js)}'; "
        "base-uri 'none'; form-action 'none'"
    )
    return _PAGE.format(
        csp=csp, title=html.escape(f"{plan.capability} · capgraph run"), css=css, js=js, data=_json_block(run)
    )


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _json_block(value: Any) -> str:
    """JSON safe inside a <script> element: no `</script>`, no `<!--`, no line separators
    that end a line in HTML but not in JSON."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text
