"""The `livepeer:` section: checks against the plan, environment overrides, secrets kept out."""

from pathlib import Path

import pytest

from capgraph.engine.validate import load_plan
from capgraph.livepeer.settings import check_livepeer_section, load_settings, read_section, with_env
from tests.livepeer.lp_support import EDGES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plan():
    return load_plan(EDGES)


def test_the_test_graph_section_is_valid_and_defaults_come_from_the_graph(plan):
    assert check_livepeer_section(read_section(EDGES), plan) == []
    settings = load_settings(plan, read_section(EDGES), environ={})
    assert (settings.name, settings.model_id, settings.capacity) == ("edges-live", "edges-live", 1)
    assert settings.description == "Canny edges blended over the frame."
    assert settings.byoc is None and settings.runner is None


def test_secrets_in_the_file_are_refused_without_echoing_them(plan):
    problems = check_livepeer_section({"orch_secret": "hunter2", "byoc": {"token": "s3cret-token"}}, plan)
    assert len(problems) == 2 and all("environment variable" in p for p in problems)
    assert not any("hunter2" in p or "s3cret-token" in p for p in problems)


def test_environment_overrides_any_key_and_creates_sections(plan):
    env = {
        "CAPGRAPH_LIVEPEER__CAPACITY": "4",
        "CAPGRAPH_LIVEPEER__URL": "http://10.0.0.5:8000",
        "CAPGRAPH_LIVEPEER__BYOC__ORCHESTRATOR": "https://orch:8935",
        "CAPGRAPH_LIVEPEER__BYOC__PRICE_PER_UNIT": "7",
        "CAPGRAPH_LIVEPEER__RUNNER__ORCHESTRATOR": "https://orch:8935",
        "UNRELATED": "x",
    }
    assert with_env({"capacity": 1}, env)["capacity"] == 4
    settings = load_settings(plan, read_section(EDGES), environ=env)
    assert settings.capacity == 4 and settings.url == "http://10.0.0.5:8000"
    assert settings.byoc.orchestrator == "https://orch:8935" and settings.byoc.price_per_unit == 7
    assert settings.runner.app == "capgraph/edges-live"  # default app name
    with pytest.raises(ValueError, match="capacity"):
        load_settings(plan, {}, environ={"CAPGRAPH_LIVEPEER__CAPACITY": "0"})


def test_route_and_live_mappings_are_checked_against_the_graph(plan):
    problems = check_livepeer_section(
        {
            "routes": {
                "image-to-image": {"prompt": "fit.max_side", "images": "nope"},
                "audio-to-text": {"image": "image"},
            },
            "live": {"input": "edges", "output": "image", "params": {"x": "blend.opacityy"}},
        },
        plan,
    )
    text = "\n".join(problems)
    assert "livepeer.routes.audio-to-text: Input should be" in text  # not a route capgraph maps
    problems = check_livepeer_section(
        {
            "routes": {"image-to-image": {"prompt": "fit.max_side", "images": "nope"}},
            "live": {"input": "edges", "output": "image", "params": {"x": "blend.opacityy"}},
        },
        plan,
    )
    text = "\n".join(problems)
    assert "'fit.max_side' is not a param a request may set" in text
    assert "'nope' is not a graph output" in text
    assert "required graph input 'image' is fed by no request field" in text
    assert "livepeer.live.input: 'edges' is not a graph input" in text
    assert "livepeer.live.params.x: 'blend.opacityy' is not a param" in text


def test_a_route_must_name_its_output_when_the_graph_has_several(plan):
    problems = check_livepeer_section({"routes": {"upscale": {"image": "image"}}}, plan)
    assert problems == [
        "livepeer.routes.upscale: name the graph output that answers 'images' (e.g. images: <output>); "
        "the graph has 2 of a fitting type."
    ]


def test_every_example_graph_with_a_livepeer_section_is_valid():
    for path in sorted((ROOT / "graphs").glob("*.yaml")):
        section = read_section(path)
        if section:
            assert check_livepeer_section(section, load_plan(path)) == [], path


def test_nsfw_names_a_bool_output_and_a_checker_in_the_graph_must_answer_it(plan):
    problems = check_livepeer_section(
        {"routes": {"upscale": {"image": "image", "images": "image", "nsfw": "edges"}}}, plan
    )
    assert problems == ["livepeer.routes.upscale.nsfw: output 'edges' is Image; 'nsfw' needs Bool."]
    wrong_route = check_livepeer_section({"routes": {"segment-anything-2": {"image": "image", "nsfw": "x"}}}, plan)
    assert "'segment-anything-2' has no request field 'nsfw'" in "\n".join(wrong_route)
    checked = load_plan(ROOT / "tests" / "livepeer" / "graphs" / "check_tiny.yaml")
    (unmapped,) = check_livepeer_section({"routes": {"upscale": {"image": "image", "images": "image"}}}, checked)
    assert unmapped == (
        "livepeer.routes.upscale: the graph has a safety checker (safety.nsfw) but 'nsfw' is not mapped, "
        "so answers would say unchecked; map it (nsfw: nsfw)."
    )
