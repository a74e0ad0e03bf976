"""graphs/txt2img.yaml served on a real Ray Serve instance with tiny models: the safety
checker runs on its `safety_check` branch, its timing names it and `nsfw` is its verdict;
with the branch off its deployment is not called and the answer claims no verdict."""

import httpx
import pytest

from tests.conftest import GRAPHS
from tests.serve.support import calls, served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def txt2img(serve_url: str):
    """graphs/txt2img.yaml: SDXL, then the safety checker on the `safety_check` branch."""
    with served(serve_url, str(GRAPHS / "txt2img.yaml"), "txt2img") as url:
        yield url


def test_the_safety_checker_runs_on_its_branch_and_only_there(txt2img):
    def checked() -> int:
        return calls("txt2img", "safety")

    small = {"generate.width": 64, "generate.height": 64, "generate.steps": 2, "generate.seed": 5}
    before = checked()
    on = httpx.post(txt2img + "/v1/sdxl-txt2img", json={"inputs": {"prompt": "a cube"}, "params": small}, timeout=120)
    assert on.status_code == 200, on.text
    assert on.json()["outputs"]["nsfw"] is False and on.json()["timings_ms"]["safety"] > 0
    assert checked() == before + 1

    body = {"inputs": {"prompt": "a cube"}, "params": small | {"safety_check": False}}
    off = httpx.post(txt2img + "/v1/sdxl-txt2img", json=body, timeout=120)
    assert off.status_code == 200, off.text
    assert off.json()["skipped"] == ["safety"] and "nsfw" not in off.json()["outputs"]  # no verdict is claimed
    assert "safety" not in off.json()["timings_ms"] and checked() == before + 1  # its deployment was not called
    assert off.json()["outputs"]["image"] == on.json()["outputs"]["image"]  # nothing flagged: SDXL's own frame
