"""A request's `loras` on /v1 (and BYOC, which posts the same body): only the graph's allowed
adapters, by node param or graph-level param; a path, an id not listed, the allowlist itself
or a weight out of bounds is a 4xx naming the field, found before any node runs."""

from pathlib import Path

import pytest

from capgraph.engine.errors import InputError
from capgraph.engine.validate import load_plan
from capgraph.serve.capability.http import parse_json_body

GRAPH = Path(__file__).resolve().parents[1] / "livepeer" / "graphs" / "t2i_lora_tiny.yaml"
PIXELS = 1024 * 1024


def refused(params: dict) -> InputError:
    with pytest.raises(InputError) as caught:
        parse_json_body(load_plan(GRAPH), _body(params), PIXELS)
    assert 400 <= caught.value.status < 500
    return caught.value


def _body(params: dict) -> bytes:
    import json

    return json.dumps({"inputs": {"prompt": "a cat"}, "params": params}).encode()


def test_a_request_picks_allowed_adapters_by_node_or_graph_param() -> None:
    plan = load_plan(GRAPH)
    _, params = parse_json_body(plan, _body({"generate.loras": {"nerijs/pixel-art-xl": 1.2}}), PIXELS)
    assert params["generate"].loras == {"nerijs/pixel-art-xl": 1.2}
    _, params = parse_json_body(plan, _body({"style": {"latent-consistency/lcm-lora-sdxl": -1}}), PIXELS)
    assert params["generate"].loras == {"latent-consistency/lcm-lora-sdxl": -1.0}


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        ({"generate.loras": {"/etc/passwd": 1.0}}, "params.generate.loras", "not one this graph allows"),
        ({"generate.loras": {"../../models/x": 1.0}}, "params.generate.loras", "not one this graph allows"),
        ({"style": {"someone/other-lora": 1.0}}, "params.style", "not one this graph allows"),
        ({"generate.loras": {"nerijs/pixel-art-xl": 9}}, "params.generate.loras", "less than or equal to 4"),
        ({"generate.loras": "nerijs/pixel-art-xl"}, "params.generate.loras", "expected object"),
        ({"generate.allowed_loras": {"x": "/etc"}}, "params.generate.allowed_loras", "fixed by the graph"),
        ({"generate.max_loaded_loras": 64}, "params.generate.max_loaded_loras", "fixed by the graph"),
    ],
)
def test_anything_else_is_a_4xx_naming_the_field(params: dict, field: str, fragment: str) -> None:
    error = refused(params)
    assert error.field == field and fragment in error.message
