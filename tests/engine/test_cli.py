"""The `capgraph` command as a user types it, in a subprocess, on real files."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EDGES = ROOT / "graphs" / "edges.yaml"
SAMPLE = ROOT / "examples" / "sample.png"


def capgraph(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "capgraph", *args], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def test_run_writes_outputs_and_prints_per_node_timings(tmp_path: Path) -> None:
    done = capgraph(
        "run", str(EDGES), "--input", f"image={SAMPLE}", "--set", "edges.low_threshold=50", "-o", str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert "fit" in done.stdout and "edges" in done.stdout and "total" in done.stdout
    edges = np.asarray(Image.open(tmp_path / "edges.png"))
    assert edges.shape == (256, 384, 3) and edges.max() == 255
    assert json.loads((tmp_path / "outputs.json").read_text())["edges"].endswith("edges.png")


def test_run_json_reports_files_timings_and_device(tmp_path: Path) -> None:
    done = capgraph("run", str(EDGES), "-i", f"image={SAMPLE}", "-o", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["device"] == "cpu" and set(report["timings_ms"]) == {"fit", "edges"}
    assert Path(report["outputs"]["image"]).exists()


def test_run_with_a_bad_input_or_param_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    missing = capgraph("run", str(EDGES), "-o", str(tmp_path))
    assert missing.returncode == 1 and "inputs.image: required input (Image) is missing" in missing.stderr
    unreadable = capgraph("run", str(EDGES), "-i", "image=nowhere.png", "-o", str(tmp_path))
    assert unreadable.returncode == 1 and "--input image: cannot read 'nowhere.png'" in unreadable.stderr
    bad_param = capgraph(
        "run", str(EDGES), "-i", f"image={SAMPLE}", "--set", "edges.low_threshold=900", "-o", str(tmp_path)
    )
    assert (
        bad_param.returncode == 1
        and "node 'edges': low_threshold: Input should be less than or equal to 255" in bad_param.stderr
    )
    for done in (missing, unreadable, bad_param):
        assert "Traceback" not in done.stderr


def test_nodes_lists_the_catalogue_with_ports_and_params() -> None:
    done = capgraph("nodes", "--json")
    catalogue = json.loads(done.stdout)
    assert {"canny", "resize", "depth_control", "composite", "decode", "encode"} <= set(catalogue)
    canny = catalogue["canny"]
    assert canny["inputs"]["image"]["type"] == "Image" and canny["outputs"]["edges"]["type"] == "Image"
    assert canny["params"]["low_threshold"] == {
        "type": "integer",
        "default": 100,
        "required": False,
        "doc": "hysteresis lower threshold",
        "per_request": True,
    }
    table = capgraph("nodes", "composite")
    assert "foreground" in table.stdout and "feather" in table.stdout
    unknown = capgraph("nodes", "cany")
    assert unknown.returncode == 1 and "Did you mean 'canny'" in unknown.stderr


def test_schema_lets_an_editor_check_params_per_node_type(tmp_path: Path) -> None:
    done = capgraph("schema", "-o", str(tmp_path / "schema.json"))
    assert done.returncode == 0
    schema = json.loads((tmp_path / "schema.json").read_text())
    node = schema["$defs"]["NodeSpec"]
    assert "canny" in node["properties"]["type"]["enum"]
    canny = next(v for v in node["allOf"] if v["title"] == "canny")
    assert "low_threshold" in canny["then"]["properties"]["params"]["properties"]
    assert schema["additionalProperties"] is False and "applications" in schema["properties"]


def test_render_writes_mermaid_and_dot_and_explains_missing_graphviz(tmp_path: Path) -> None:
    mermaid = capgraph("render", str(EDGES), "-o", str(tmp_path / "graph.mmd"))
    assert mermaid.returncode == 0
    text = (tmp_path / "graph.mmd").read_text()
    assert text.startswith("flowchart LR") and 'fit -- "image → image : Image" --> edges' in text
    assert capgraph("render", str(EDGES), "-o", str(tmp_path / "graph.dot")).returncode == 0
    svg = capgraph("render", str(EDGES), "-o", str(tmp_path / "graph.svg"))
    if shutil.which("dot"):
        assert svg.returncode == 0 and (tmp_path / "graph.svg").read_text().lstrip().startswith("<?xml")
    else:
        assert svg.returncode == 1 and "Install the 'graphviz' package" in svg.stderr and "Traceback" not in svg.stderr


def test_validate_checks_the_serve_config_half_and_the_livepeer_section(tmp_path: Path) -> None:
    drift = tmp_path / "drift.yaml"
    drift.write_text(EDGES.read_text().replace("nodes: *nodes, ", ""))
    done = capgraph("validate", str(drift))
    assert done.returncode == 1
    assert "'nodes' missing from applications[0].args.graph" in done.stderr and f"{drift}:" in done.stderr
    secret = tmp_path / "secret.yaml"
    secret.write_text(EDGES.read_text() + "livepeer:\n  capacity: 0\n")
    done = capgraph("validate", str(secret))
    assert done.returncode == 1 and "livepeer.capacity" in done.stderr, done.stderr
    all_graphs = capgraph("validate", *map(str, sorted((ROOT / "graphs").glob("*.yaml"))))
    assert all_graphs.returncode == 0, all_graphs.stderr


def test_prepare_reports_each_model_it_cannot_fetch_and_skips_weightless_graphs() -> None:
    offline = capgraph("prepare", str(ROOT / "graphs" / "depth.yaml"), "--json")
    assert offline.returncode == 1
    report = json.loads(offline.stdout)
    assert list(report["failed"]) == ["depth-anything/Depth-Anything-V2-Small-hf"] and report["prepared"] == {}
    weightless = capgraph("prepare", str(EDGES))
    assert weightless.returncode == 0 and "No model to fetch" in weightless.stdout


def test_tiny_models_writes_every_family_in_real_repo_layouts() -> None:
    from capgraph.engine.weights import tiny_root

    done = capgraph("tiny-models", str(tiny_root()), "--json")
    assert done.returncode == 0, done.stderr
    written = {key: Path(path) for key, path in json.loads(done.stdout).items()}
    assert {"depth-anything", "sdxl"} <= set(written), written
    assert (written["sdxl"] / "model_index.json").exists() and (written["sdxl"] / "unet" / "config.json").exists()
    assert (written["depth-anything"] / "config.json").exists()
