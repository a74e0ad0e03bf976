"""A model family as a newcomer writes it (tests/nodes/classify_family.py: one `Weights`
declaration and a `load` that asks for it), added through its `module:Class` line in
`nodes.BUILTIN` as a built-in is; prepare, tiny mode (through the executor), random mode,
offline errors and the planner all follow from the declaration."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.nodes.classify_family import FAMILY, Classify, ClassifyParams, tiny_vit

GRAPH = {
    "capability": "classify",
    "inputs": {"image": "image"},
    "nodes": {"what": {"type": "classify", "inputs": {"image": "image"}}},
    "outputs": {"label": "what.label", "score": "what.score"},
}


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The family's line added to `nodes.BUILTIN` for one test: the catalogue loads it as it
    loads the built-ins (other tests read the catalogue without it)."""
    import capgraph.nodes
    from capgraph.engine.registry import catalogue, origin

    monkeypatch.setattr(capgraph.nodes, "BUILTIN", (*capgraph.nodes.BUILTIN, FAMILY))
    catalogue.cache_clear()
    assert catalogue()[Classify.type] is Classify and origin(Classify.type).via == "built-in"
    yield
    catalogue.cache_clear()


def test_the_new_family_runs_through_the_executor_on_its_tiny_model(
    registered: None, tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capgraph.engine.executor import Executor
    from capgraph.engine.validate import plan_from_data
    from capgraph.engine.weights import tiny_root

    monkeypatch.setenv("CAPGRAPH_TINY_DIR", str(tmp_path))  # builds its tiny model here, not in the shared cache
    executor = Executor(plan_from_data(GRAPH), device="cpu")
    frames = [{"image": np.full((40, 48, 3), shade, np.uint8)} for shade in (0, 255)]
    outputs = executor.run(frames).outputs
    assert [out["label"] in {"cat", "dog", "bird"} and 0.0 < out["score"] <= 1.0 for out in outputs] == [True, True]
    assert (tiny_root() / "test-vit-classifier" / "config.json").exists()


def test_prepare_tiny_random_and_the_planner_read_the_declaration(registered: None) -> None:
    from capgraph.engine.validate import plan_from_data
    from capgraph.serve.compile.planner import declared_cost

    assert Classify(ClassifyParams()).models() == ["google/vit-base-patch16-224"]  # what `capgraph prepare` fetches
    assert Classify(ClassifyParams(model="/models/mine")).models() == ["/models/mine"]
    assert Classify.tiny_models() == {"test-vit-classifier": tiny_vit}  # what `capgraph tiny-models` writes
    assert Classify.random_models() == {}  # no full-size random builder declared
    assert declared_cost(plan_from_data(GRAPH).nodes["what"]).per_frame() == 5.0


def test_without_a_random_builder_random_mode_says_so_and_a_missing_model_names_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from capgraph.engine.weights import ModelMissing

    monkeypatch.setenv("CAPGRAPH_MODELS", "random")
    with pytest.raises(KeyError, match="no node family declares a full-size random model 'test-vit-classifier'"):
        Classify(ClassifyParams(), "what").load("cpu", "float32")
    monkeypatch.delenv("CAPGRAPH_MODELS")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelMissing, match="node 'what': model 'capgraph-tests/no-such-classifier'"):
        Classify(ClassifyParams(model="capgraph-tests/no-such-classifier"), "what").load("cpu", "float32")
