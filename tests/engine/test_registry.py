"""Third-party node families: a pip-installed plug-in (entry point) or CAPGRAPH_NODES."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
from capgraph.engine.node import Node
from capgraph.engine.types import PortType, port


class Invert(Node):
    """Invert an image's colours."""

    type = "invert"
    inputs = {"image": port(PortType.IMAGE, doc="frame")}
    outputs = {"image": port(PortType.IMAGE, doc="inverted frame")}

    def run_batch(self, inputs, params):
        return [{"image": 255 - f["image"]} for f in inputs]
'''


def catalogue_in_subprocess(site: Path, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "capgraph", "nodes", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), **env},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_an_installed_distribution_adds_a_family_through_the_entry_point_group(tmp_path: Path) -> None:
    (tmp_path / "capgraph_invert.py").write_text(PLUGIN)
    dist = tmp_path / "capgraph_invert-0.1.dist-info"  # what `pip install` leaves behind
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: capgraph-invert\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[capgraph.nodes]\ninvert = capgraph_invert:Invert\n")
    catalogue = catalogue_in_subprocess(tmp_path)
    assert catalogue["invert"]["description"] == "Invert an image's colours."
    assert "canny" in catalogue


def test_capgraph_nodes_env_adds_a_family_and_a_broken_one_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "my_nodes.py").write_text(PLUGIN)
    catalogue = catalogue_in_subprocess(tmp_path, CAPGRAPH_NODES="my_nodes:Invert, missing_module:Nope")
    assert "invert" in catalogue and "canny" in catalogue
