"""The console's parts on their own, no Ray and no browser: the page's files (small, no way
to run a response as code), the live figures' arithmetic and the picture's data."""

import re
from importlib import resources

from capgraph.engine.render import mermaid, picture
from capgraph.engine.validate import load_plan
from capgraph.serve.capability.console import FILES
from capgraph.serve.capability.traffic import RATE_S, WINDOW_S, Traffic
from tests.conftest import GRAPHS

STATIC = resources.files("capgraph.serve.capability") / "static"
UNSAFE = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setTimeout\(\s*['\"]|srcdoc"
)


def test_the_page_ships_small_and_never_turns_text_into_code():
    names = ["index.html", "report.js", *FILES]
    sizes = {name: len((STATIC / name).read_bytes()) for name in names}
    assert sum(sizes.values()) < 200_000, sizes
    for name in names:
        text = (STATIC / name).read_text(encoding="utf-8")
        assert not UNSAFE.search(text), f"{name}: {UNSAFE.search(text).group()}"
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, (
            name
        )  # no CDN
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and " style=" not in page and not re.search(r"\son\w+=", page)


def test_figures_over_the_window():
    now = [100.0]
    traffic = Traffic(clock=lambda: now[0])
    now[0] += 10
    for ms in range(1, 101):  # 100 frames through 'a': 25 batches of 4, each frame waited `ms`
        traffic.frame({"a": {"ms": float(ms), "batch": 4, "queue_ms": 2.0}, "b": {"ms": 1.0, "batch": 1}})
    traffic.failure("a")
    traffic.failure(None)
    a = traffic.summary(["a", "b", "c"])
    assert a["a"] == {
        "fps": 100 / RATE_S,
        "p50_ms": 50.0,
        "p99_ms": 99.0,
        "batch_mean": 4.0,
        "queue_p50_ms": 2.0,
        "frames": 100,
        "failed": 1,
        "failed_recent": 1,
        "skipped": 0,
    }
    assert a["b"]["batch_mean"] == 1.0 and a["b"]["queue_p50_ms"] is None
    assert a["c"] == {
        "fps": 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "batch_mean": None,
        "queue_p50_ms": None,
        "frames": 0,
        "failed": 0,
        "failed_recent": 0,
        "skipped": 0,
    }
    assert traffic.failed[""] == 1
    now[0] += RATE_S + 1  # no frame of late: fps falls to 0 while the window still holds the latencies
    later = traffic.summary(["a"])["a"]
    assert later["fps"] == 0.0 and later["p99_ms"] == 99.0
    now[0] += WINDOW_S  # the window has passed: the figures are gone, the count of failures stays
    assert traffic.summary(["a"])["a"] == {
        "fps": 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "batch_mean": None,
        "queue_p50_ms": None,
        "frames": 0,
        "failed": 1,
        "failed_recent": 0,
        "skipped": 0,
    }


def test_mixed_batches_average_per_batch():
    traffic = Traffic()
    traffic.frame({"a": {"ms": 5.0, "batch": 1}})  # one batch of 1
    for _ in range(3):
        traffic.frame({"a": {"ms": 9.0, "batch": 3}})  # one batch of 3, seen by its 3 frames
    assert traffic.summary(["a"])["a"]["batch_mean"] == 2.0  # 4 frames in 2 batches


def test_the_picture_is_what_render_draws():
    plan = load_plan(GRAPHS / "hybrid.yaml")
    boxes = {"front": ("fit", "depth", "control"), "back": ("generate", "upscale")}
    data = picture(plan, boxes)
    text = mermaid(plan, boxes)
    assert [n["id"] for n in data["nodes"]] == list(plan.nodes)
    assert [d["name"] for d in data["deployments"]] == ["front", "back"] and data["deployments"][1]["nodes"] == [
        "generate",
        "upscale",
    ]
    for edge in data["edges"]:  # the same wires with the same labels as the Mermaid text
        assert f'{edge["from"]} -- "{edge["label"]}" --> {edge["to"]}' in text
    assert {i["id"] for i in data["inputs"]} == {"in_image", "in_prompt"} and data["outputs"] == [
        {"id": "out_image", "name": "image", "type": "Image"}
    ]
    assert picture(plan)["deployments"] == []
