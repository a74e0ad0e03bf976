"""A model family as a newcomer writes it: one `Weights` declaration and a `load` that asks
for it, nothing else about where weights come from. The family below is what its own file
would hold; the tests register it and check that prepare, tiny mode (through the
executor), random mode, offline errors and the planner all follow from the declaration."""

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.engine.weights import Weights

# --- the family: what a newcomer's module holds -------------------------------------------


def tiny_vit(folder: Path) -> None:
    """A 2-layer ViT classifier over 32 px frames with three labels, saved like google/vit-base-patch16-224."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8, id2label=labels, label2id={name: i for i, name in labels.items()})
    torch.manual_seed(0)
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


MODEL = Weights("test-vit-classifier", "google/vit-base-patch16-224", tiny_vit)


class ClassifyParams(NodeParams):
    model: str = Field(MODEL.default, min_length=1, max_length=512, description="a transformers image-classification model")


class Classify(Node):
    """The most likely label of a frame."""

    type = "classify"
    category = "vision"
    Params = ClassifyParams
    inputs = {"image": port(PortType.IMAGE, doc="frame to classify")}
    outputs = {"label": port(PortType.TEXT, doc="the best label"), "score": port(PortType.NUMBER, doc="its probability")}
    uses_gpu = True
    weights = {"model": MODEL}
    cost_ms = 5.0

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        path = self.resolve_weights("model")
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForImageClassification.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[ClassifyParams]) -> list[Frame]:
        import torch

        pixels = self.processor(images=[f["image"] for f in inputs], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            scores, ids = self.model(pixel_values=pixels.to(self.device, self.model.dtype)).logits.float().softmax(-1).max(-1)
        return [{"label": self.model.config.id2label[int(i)], "score": float(s)} for s, i in zip(scores, ids)]


# --- the tests ----------------------------------------------------------------------------

GRAPH = {
    "capability": "classify",
    "inputs": {"image": "image"},
    "nodes": {"what": {"type": "classify", "inputs": {"image": "image"}}},
    "outputs": {"label": "what.label", "score": "what.score"},
}


@pytest.fixture
def registered() -> Iterator[None]:
    """The family in this process's catalogue for one test (other tests read the built-in catalogue)."""
    from capgraph.engine.registry import catalogue, register

    register(Classify)
    yield
    catalogue().pop(Classify.type)


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
