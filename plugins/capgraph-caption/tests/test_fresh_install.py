"""What an outsider does: a fresh virtualenv, `pip install` capgraph, then `pip install
./plugins/capgraph-caption`; the catalogue lists `caption` with its package and the
recaption graph validates; `pip uninstall capgraph-caption` turns the graph into a
validation error naming the missing family and the package to install.

Honest shortcuts, to stay offline and quick: torch, transformers, Ray and the rest are not
downloaded again. The new environment sees the test environment's packages through a
`.pth` line pointing at a folder of links to them, capgraph and the plug-in left out (a
`--system-site-packages` venv would see the base interpreter's packages, not this venv's),
and capgraph and the plug-in are installed from copies of their sources with `--no-deps`.
Running and serving the graph is covered by the other tests, in the CI environment where
the plug-in is pip-installed the same way."""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1]
REPO = PLUGIN.parents[1]
OURS = ("capgraph", "capgraph_caption", "capgraph-", "capgraph_caption-", "__editable__")
pytestmark = pytest.mark.slow


def run(venv: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=venv.parent,
        env={
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(venv),
            "HF_HUB_OFFLINE": "1",
            "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        },
    )
    if check:
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def libraries_without_capgraph(folder: Path) -> Path:
    """A folder of links to this environment's installed packages, capgraph's own left out."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OURS) and entry.suffix != ".pth":
            (folder / entry.name).symlink_to(entry)
    return folder


def source_copy(source: Path, target: Path, parts: tuple[str, ...]) -> Path:
    target.mkdir()
    for part in parts:
        (shutil.copytree if (source / part).is_dir() else shutil.copy2)(
            source / part,
            target / part,
            **({"ignore": shutil.ignore_patterns("*.egg-info", "__pycache__")} if (source / part).is_dir() else {}),
        )
    return target


def test_pip_install_capgraph_then_the_plugin_and_uninstall_it(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    run(
        venv, "pip", "uninstall", "-q", "-y", "setuptools"
    )  # ensurepip's old one cannot build wheels; the linked one can
    site = Path(run(venv, "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "libraries.pth").write_text(f"{libraries_without_capgraph(tmp_path / 'libraries')}\n")
    assert run(venv, "python", "-c", "import capgraph", check=False).returncode != 0  # nothing of ours yet

    capgraph = source_copy(
        REPO,
        tmp_path / "capgraph-src",
        ("pyproject.toml", "README.md", "capgraph", "engine", "nodes", "serve", "livepeer", "cli"),
    )
    plugin = source_copy(
        PLUGIN, tmp_path / "capgraph-caption", ("pyproject.toml", "README.md", "capgraph_caption", "examples")
    )
    run(venv, "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(capgraph))
    run(venv, "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(plugin))

    listed = json.loads(run(venv, "capgraph", "nodes", "caption", "--json").stdout)
    assert listed["caption"]["origin"] == {
        "package": "capgraph-caption",
        "version": "0.1.0",
        "via": "entry point caption",
    }
    graph = plugin / "examples" / "recaption.yaml"
    run(venv, "capgraph", "validate", str(graph))

    run(venv, "pip", "uninstall", "-q", "-y", "capgraph-caption")
    refused = run(venv, "capgraph", "validate", str(graph), check=False)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 1, said
    assert "node 'describe': unknown node type 'caption'" in said, said
    assert "pip install 'capgraph-caption>=0.1'" in said, said
    assert "this graph requires 'capgraph-caption>=0.1', which is not installed on this machine" in said, said
