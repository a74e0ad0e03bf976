"""Shared fixtures. Tiny models are built once and cached on disk between sessions."""

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = ROOT / "graphs"
BAD_GRAPHS = Path(__file__).resolve().parent / "graphs"

# Every test process (and every subprocess it starts) shares one tiny-model cache.
os.environ.setdefault("CAPGRAPH_TINY_DIR", str(ROOT / ".capgraph" / "tiny"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A `capgraph tune` overlay in the user's cache would change what the builder plans: tests
# start from none.
os.environ.setdefault("CAPGRAPH_TUNED_DIR", tempfile.mkdtemp(prefix="capgraph-tuned-"))


@pytest.fixture
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run model nodes on the tiny random-initialised models."""
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    return Path(os.environ["CAPGRAPH_TINY_DIR"])
