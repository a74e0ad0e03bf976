"""`capgraph run GRAPH --html report.html`: one self-contained file with the console's
picture, the run's inputs and outputs and its timings, opened in headless Chromium from disk."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

SAMPLE = ROOT / "examples" / "sample.png"
NASTY = '</script><img src=x id=injected><script>document.title="owned"</script>'
"""A text input a report must show as text: it is data, never markup or code."""


def test_the_report_is_one_file_that_shows_the_run(tmp_path: Path, browser) -> None:
    graph = tmp_path / "notes.yaml"
    graph.write_text(
        yaml.safe_dump(
            {
                "capability": "noted-edges",
                "version": "v2",
                "inputs": {"image": "image", "note": {"type": "text", "default": "hello"}},
                "nodes": {
                    "fit": {"type": "resize", "params": {"max_side": 128}, "inputs": {"image": "image"}},
                    "edges": {"type": "canny", "inputs": {"image": "fit.image"}},
                },
                "outputs": {"edges": "edges.edges", "note": "note"},
            }
        )
    )
    report = tmp_path / "shared" / "report.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "capgraph",
            "run",
            str(graph),
            "-i",
            f"image={SAMPLE}",
            "-i",
            f"note={NASTY}",
            "-o",
            str(tmp_path / "out"),
            "--html",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert f"report: {report}" in done.stdout.replace("\n", "")
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:|//|/)""", page)  # nothing loaded from anywhere
    assert "Content-Security-Policy" in page and "'unsafe-inline'" not in page and NASTY not in page

    browser.get(report.as_uri())
    nodes = browser.execute_script(
        "return [...document.querySelectorAll('#picture [data-node]')].map(g => [g.dataset.node, g.textContent])"
    )
    assert [n for n, _ in nodes] == ["fit", "edges"] and all(" ms" in text for _, text in nodes)
    images = browser.execute_script(
        "return [...document.querySelectorAll('img.shot')].map(i => [i.alt, i.naturalWidth])"
    )
    assert dict(images) == {"image": 384, "edges": 128}  # the input as given, the output fitted to 128 px
    notes = browser.execute_script(
        "return [...document.querySelectorAll('[data-value=note] pre')].map(p => p.textContent)"
    )
    assert notes == [NASTY, NASTY]  # the input and the output it was passed to, as text
    assert browser.execute_script("return document.getElementById('injected')") is None and browser.title != "owned"
    timed = browser.execute_script("return [...document.querySelectorAll('[data-timing]')].map(r => r.dataset.timing)")
    assert timed == ["fit", "edges"]


def test_a_video_in_and_out_is_a_video_element_that_plays(tmp_path: Path, browser) -> None:
    import numpy as np

    from capgraph.engine.video import Video, encode_video

    clip = tmp_path / "in.mp4"
    ramp = np.linspace(0, 255, 48, dtype=np.float32)[None, :, None].repeat(32, 0).repeat(3, 2)
    clip.write_bytes(encode_video(Video(np.stack([np.roll(ramp, 4 * t, 1) for t in range(6)]).astype(np.uint8), 12)))
    graph = tmp_path / "clip.yaml"
    graph.write_text(
        yaml.safe_dump(
            {
                "capability": "clip-edges",
                "inputs": {"clip": "video"},
                "nodes": {"edges": {"type": "canny", "inputs": {"image": "clip"}, "batch": {"max_size": 4}}},
                "outputs": {"edges": "edges.edges"},
            }
        )
    )
    report = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "capgraph", "run", str(graph), "-i", f"clip={clip}", "-o", str(tmp_path / "out")]
        + ["--html", str(report)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "4 frames a call" in done.stdout and (tmp_path / "out" / "edges.mp4").exists()
    browser.get(report.as_uri())
    browser.set_script_timeout(20)
    videos = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const all = [...document.querySelectorAll('video.shot')];
        const loaded = (v) => new Promise((r) => { v.onloadedmetadata = r; v.onerror = r; });
        Promise.all(all.map((v) => (v.readyState >= 1 ? null : loaded(v))))
          .then(() => done(all.map(v => [v.dataset.output, v.videoWidth, v.error && v.error.code])));"""
    )
    assert sorted(videos) == [["clip", 48, None], ["edges", 48, None]]  # both decode in the browser
