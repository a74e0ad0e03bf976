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
