"""Fixtures for the plug-in's tests: tiny models, offline, in the repository's shared cache."""

import os
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1]
REPO = PLUGIN.parents[1]
RECAPTION = PLUGIN / "examples" / "recaption.yaml"

os.environ.setdefault("CAPGRAPH_TINY_DIR", str(REPO / ".capgraph" / "tiny"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAPGRAPH_MODELS", "tiny")
    return Path(os.environ["CAPGRAPH_TINY_DIR"])
