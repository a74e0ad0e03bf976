"""The recaption graph served on Ray: the plug-in's family loads in the replicas (the same
interpreter's installed packages) with nothing copied, and the pre-flight names it with its
package, and names a machine that lacks a plug-in package."""

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip(
    "capgraph_caption", reason="the capgraph-caption plug-in is not installed (pip install ./plugins/capgraph-caption)"
)

RECAPTION = Path(__file__).resolve().parents[1] / "examples" / "recaption.yaml"
pytestmark = pytest.mark.slow


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(cluster) -> Iterator[str]:
    """The recaption graph at /recaption, on the Ray Serve instance tests/serve use too
    (tests/serve/cluster.py: 2 CPUs, a faked GPU, the tiny models)."""
    from ray import serve

    from capgraph.serve.app import CapabilityArgs, build, plan_app
    from tests.serve.support import wait_health

    args = CapabilityArgs(graph=str(RECAPTION))
    blueprint = plan_app(args)
    assert not blueprint.problems, blueprint.problems
    assert any("come from the plug-in capgraph-caption 0.1.0" in note for note in blueprint.notes), blueprint.notes
    serve.run(build(args), name="recaption", route_prefix="/recaption", blocking=False)
    url = f"{cluster.url}/recaption"
    try:
        wait_health(url, 240)
        yield url
    finally:
        serve.delete("recaption")


def test_the_served_graph_captions_and_redraws(served: str) -> None:
    image = np.full((64, 80, 3), 90, np.uint8)
    answer = httpx.post(
        f"{served}/v1/recaption",
        files={"image": ("in.png", png(image), "image/png")},
        data={"params": '{"redraw.steps": 2}'},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert isinstance(outputs["caption"], str)
    from PIL import Image

    assert Image.open(io.BytesIO(base64.b64decode(outputs["image"]))).size == (80, 64)
    text = httpx.post(
        f"{served}/image-to-text",
        files={"image": ("in.png", png(image), "image/png")},
        data={"prompt": "", "model_id": ""},
        timeout=120,
    )
    assert text.status_code == 200, text.text
    assert text.json() == {"text": outputs["caption"]}  # the same frame, the same caption


def test_the_preflight_names_a_machine_without_a_plugin_package(served: str) -> None:
    import ray

    from capgraph.engine.validate import load_plan
    from capgraph.serve.cluster import preflight

    plan = load_plan(RECAPTION)
    assert preflight.check_plugins(plan) == []  # every machine of this cluster has it
    found = preflight.plugin_origins(plan)
    assert found == {"capgraph-caption": ("0.1.0", "'describe' (caption)")}
    lacking = preflight.check_plugins(plan, plugins=found | {"capgraph-no-such-plugin": ("1.0", "'x' (y)")})
    address = ray.util.get_node_ip_address()
    assert lacking == [
        f"machine {address} does not have capgraph-no-such-plugin 1.0, which node(s) 'x' (y) come from: "
        "pip install 'capgraph-no-such-plugin==1.0' there (or into the cluster's image or runtime_env)."
    ]
