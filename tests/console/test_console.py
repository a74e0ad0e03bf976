"""The console page of a served graph, driven in a real headless Chromium against a real
Ray Serve app on the tiny models: the picture, the live states (a node killed and back),
the try-it form (an output image; a bad value's message next to its field) and the token."""

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.console.conftest import TOKEN
from tests.serve.support import frame

pytestmark = pytest.mark.slow

WAIT_S = 20.0


def wait_for(browser, script: str, timeout_s: float = WAIT_S, what: str = ""):
    """Poll a JavaScript expression in the page until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = browser.execute_script("return " + script)
        if value:
            return value
        if time.monotonic() > deadline:
            logs = [e["message"] for e in browser.get_log("browser")]
            raise AssertionError(f"waited {timeout_s:g}s for {what or script}; page console: {logs[-5:]}")
        time.sleep(0.2)


def states(browser) -> dict[str, str]:
    return browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#picture [data-node]')]"
        ".map(g => [g.dataset.node, g.dataset.state]))"
    )


def field_error(browser, name: str) -> str:
    return browser.execute_script(
        "const f = [...document.querySelectorAll('#try .field')].find(b => b.dataset.field === arguments[0]);"
        "return f ? f.querySelector('.field-error').textContent : null",
        name,
    )


@pytest.fixture(scope="module")
def picture_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("console") / "frame.png"
    Image.fromarray(frame(96, 64)).save(path)
    return path


def open_demo(browser, apps) -> None:
    browser.get(apps.demo + "/")
    wait_for(browser, "document.querySelectorAll('#picture [data-state=warm]').length === 3", 30, "every node warm")


def test_the_picture_lists_every_node_with_its_deployment_and_live_figures(browser, apps):
    open_demo(browser, apps)
    assert states(browser) == {"fit": "warm", "depth": "warm", "edges": "warm"}
    boxes = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('[data-deployment]')]"
        ".map(b => [b.dataset.deployment, [...b.querySelectorAll('tspan')].map(t => t.textContent)]))"
    )
    assert sorted(boxes) == ["depth", "edges", "fit"]  # one deployment per node here
    name, settings = boxes["depth"]
    assert name == "deployment depth" and settings.startswith("1 replica · ") and " thread" in settings, boxes
    io = browser.execute_script("return [...document.querySelectorAll('[data-io]')].map(g => g.dataset.io)")
    assert sorted(io) == ["in_image", "out_edges", "out_preview"]
    wires = browser.execute_script("return [...document.querySelectorAll('.wire')].map(w => w.textContent)")
    assert "image → imageImage" in wires and "preview" + "Image" in wires  # port → port, then the type
    assert browser.find_element("id", "version").text == "version v3"
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#nodes tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    by_node = {row[0]: row for row in rows}
    assert set(by_node) == {"fit", "depth", "edges"}
    cells = browser.execute_script(  # by column name: a column added later moves no assertion
        "const r = [...document.querySelectorAll('#nodes tbody tr')].find(r => r.dataset.node === 'depth');"
        "return Object.fromEntries([...r.querySelectorAll('[data-key]')].map(c => [c.dataset.key, c.textContent]))"
    )
    assert cells["device"] == "cpu float32" and "Depth-Anything" in cells["models"] and "(tiny)" in cells["models"]
    # figures move without a reload: frames sent from outside show up in the node's fps
    body = {"inputs": {"image": _png_b64()}}
    for _ in range(3):
        assert httpx.post(apps.demo + "/v1/console-demo", json=body, timeout=30).status_code == 200
    wait_for(
        browser,
        "[...document.querySelectorAll('#nodes tbody tr')].find(r => r.dataset.node === 'depth')"
        ".querySelector('[data-key=fps]').textContent !== '0.0'",
        10,
        "the depth node's fps",
    )


def test_the_page_and_its_feeds_carry_a_strict_policy(apps):
    page = httpx.get(apps.demo + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    assert "<script>" not in page.text and "style=" not in page.text  # no inline script or style
    assert "console-demo" not in page.text  # the page itself carries nothing of the graph
    for feed in ("/console/api/graph", "/console/api/live"):
        reply = httpx.get(apps.demo + feed, timeout=10)
        assert reply.status_code == 200 and reply.headers["content-security-policy"] == policy
    assert httpx.get(apps.demo, timeout=10, follow_redirects=True).url.path == "/demo/"  # the prefix gets its slash
    assert httpx.get(apps.demo + "/console/static/nothing.js", timeout=10).status_code == 404


def test_the_form_runs_a_frame_and_shows_the_output_images_and_timings(browser, apps, picture_file):
    open_demo(browser, apps)
    browser.find_element("id", "in-image").send_keys(str(picture_file))
    browser.find_element("id", "run").click()
    wait_for(browser, "document.querySelectorAll('#result img.shot').length === 2", 30, "two output images")
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('#result img.shot')]"
        ".map(i => [i.dataset.output, i.naturalWidth, i.naturalHeight])"
    )
    assert sorted(sizes) == [["edges", 64, 40], ["preview", 64, 40]]  # fitted to 64 px, sides a multiple of 8
    timed = browser.execute_script(
        "return [...document.querySelectorAll('#result [data-timing]')].map(r => r.dataset.timing)"
    )
    assert timed == ["fit", "depth", "edges"]
    assert "done in" in browser.find_element("id", "run-status").text


def test_a_bad_value_shows_the_services_message_next_to_its_field(browser, apps, picture_file):
    open_demo(browser, apps)
    browser.find_element("id", "run").click()  # no image
    wait_for(browser, "document.querySelector('#run-status').textContent.startsWith('422')", what="the 422")
    said = httpx.post(apps.demo + "/v1/console-demo", json={"inputs": {}}, timeout=10).json()["error"]
    assert said["field"] == "inputs.image" and field_error(browser, "inputs.image") == said["msg"]

    browser.find_element("id", "in-image").send_keys(str(picture_file))
    threshold = browser.find_element("id", "param-edges.low_threshold")
    threshold.clear()
    threshold.send_keys("999")
    browser.find_element("id", "run").click()
    wait_for(browser, "document.querySelector('#run-status').textContent.startsWith('422')", what="the 422")
    said = httpx.post(
        apps.demo + "/v1/console-demo",
        json={"inputs": {"image": _png_b64()}, "params": {"edges.low_threshold": 999}},
        timeout=10,
    ).json()["error"]
    assert field_error(browser, "params.edges.low_threshold") == said["msg"] and "255" in said["msg"]
    assert field_error(browser, "inputs.image") == ""  # the earlier error is gone
    assert browser.execute_script("return document.querySelectorAll('#try .has-error').length") == 1


def test_a_killed_node_turns_down_and_back(browser, apps):
    from ray import serve

    open_demo(browser, apps)
    victim = serve.get_deployment_handle("edges", app_name="demo").state.remote().result(timeout_s=30)["pid"]
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(browser, "document.querySelector('#picture [data-node=edges]').dataset.state === 'down'", 15, "edges down")
    down = time.monotonic() - killed
    assert browser.find_element("id", "status").text == "a node is down"
    assert states(browser)["depth"] == "warm"  # only the killed node's deployment
    wait_for(
        browser, "document.querySelector('#picture [data-node=edges]').dataset.state === 'warm'", 90, "edges warm again"
    )
    print(f"\nconsole: edges down {down:.1f}s after the kill, warm again {time.monotonic() - killed:.1f}s after")
    assert serve.get_deployment_handle("edges", app_name="demo").state.remote().result(timeout_s=30)["pid"] != victim


def test_with_a_token_the_page_asks_for_it_and_works_after(browser, apps, picture_file):
    assert httpx.get(apps.locked + "/console/api/graph", timeout=10).status_code == 401
    assert httpx.get(apps.locked + "/console/api/live", timeout=10).status_code == 401
    browser.get(apps.locked + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait_for(browser, "!document.querySelector('#token').hidden", what="the token prompt")
    assert browser.find_element("id", "main").is_displayed() is False

    browser.find_element("id", "token-input").send_keys("wrong")
    browser.find_element("css selector", "#token-form button").click()
    wait_for(browser, "document.querySelector('#token-error').textContent", what="the service's 401 message")
    assert browser.find_element("id", "token-error").text == "Invalid bearer token."

    browser.find_element("id", "token-input").send_keys(TOKEN)
    browser.find_element("css selector", "#token-form button").click()
    wait_for(
        browser,
        "document.querySelector('#picture [data-node=edges]')?.dataset.state === 'warm'",
        what="the locked graph",
    )
    browser.find_element("id", "in-image").send_keys(str(picture_file))
    browser.find_element("id", "run").click()
    wait_for(browser, "document.querySelectorAll('#result img.shot').length === 1", 30, "the output image")
    assert TOKEN not in browser.page_source


def _png_b64() -> str:
    from tests.serve.support import png_b64

    return png_b64(frame(96, 64))
