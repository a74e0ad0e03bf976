"""The segmentation family as a user meets it: a tiny SegFormer with ADE20K's first class
names, loaded like the hub repo, gives a label map, a mask of the chosen classes and a preview;
a misspelt class is an error at load, naming the node and the labels it was close to."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from capgraph.engine.errors import InputError
from capgraph.engine.executor import Executor
from capgraph.engine.types import check_value
from capgraph.engine.validate import plan_from_text
from capgraph.engine.weights import ModelMissing, tiny_model
from capgraph.nodes import segmentation
from capgraph.nodes.segmentation import Segmentation, SegmentationParams, UnknownClass

GRAPH = """
capability: people-mask
inputs:
  image: {type: image}
nodes:
  seg:
    type: segmentation
    params: {model: nvidia/segformer-b0-finetuned-ade-512-512, classes: [person, sky]}
    inputs: {image: image}
outputs:
  mask: seg.mask
  labels: seg.labels
"""


def frames() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"image": rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)},
        {"image": rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)},
    ]


@pytest.fixture(scope="module")
def node() -> Iterator[Segmentation]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAPGRAPH_MODELS", "tiny")
        node = Segmentation(SegmentationParams(classes=["person", "wall"]), "seg")
        node.load("cpu", "float32")
    yield node


def test_a_batch_gives_labels_a_class_mask_and_a_preview_per_frame(node: Segmentation) -> None:
    out = node.run_batch(frames(), [node.params] * 2)
    assert len(out) == 2
    for frame, result in zip(frames(), out):
        assert set(result) == set(Segmentation.outputs)
        for name, value in result.items():
            assert check_value(Segmentation.outputs[name].type, value) is None, name
        labels, mask = result["labels"], result["mask"]
        assert labels.shape == mask.shape == frame["image"].shape[:2] and labels.dtype == np.int32
        assert set(np.unique(labels)) <= set(range(len(segmentation.ADE_LABELS)))
        assert np.array_equal(mask, np.isin(labels, [0, 12]).astype(np.float32))  # wall = 0, person = 12
        assert result["preview"].shape == frame["image"].shape
    assert out[0]["mask"].any() and not out[0]["mask"].all()
    assert node.weight_bytes > 0 and node.models() == [node.params.model]


def test_a_batch_equals_its_frames_one_by_one(node: Segmentation) -> None:
    batch = node.run_batch(frames(), [node.params] * 2)
    for frame, batched in zip(frames(), batch):
        single = node.run_batch([frame], [node.params])[0]
        assert np.mean(batched["labels"] != single["labels"]) < 0.001  # argmax ties may flip a pixel, no more


def test_classes_come_from_the_request_and_match_any_case(node: Segmentation) -> None:
    earth = node.run_batch(frames()[:1], [SegmentationParams(classes=[" EARTH"])])[0]
    assert earth["mask"].any() and np.array_equal(earth["mask"], (earth["labels"] == 13).astype(np.float32))
    with pytest.raises(InputError, match="unknown class 'skye'.*Did you mean 'sky'"):
        node.run_batch(frames()[:1], [SegmentationParams(classes=["skye"])])
    assert Segmentation.request_params == {"classes", "preview_opacity"}


def test_a_misspelt_class_fails_at_load_naming_node_and_close_labels(tiny_models: Path) -> None:
    node = Segmentation(SegmentationParams(classes=["persn"]), "people")
    with pytest.raises(
        UnknownClass, match=r"node 'people': unknown class 'persn'.*Did you mean 'person'\?.*Its labels: bed, building"
    ):
        node.load("cpu", "float32")


def test_label_synonyms_each_name_the_class() -> None:
    from capgraph.nodes.segmentation import _label_ids

    names = _label_ids({0: "wall", 12: "person;individual;someone", 20: "car, auto"})
    assert names["individual"] == [12] and names["auto"] == [20] and names["wall"] == [0]


def test_a_local_mask2former_folder_loads_through_universal_segmentation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    segmentation.tiny_mask2former(tmp_path)
    node = Segmentation(SegmentationParams(model=str(tmp_path)), "seg")
    node.load("cpu", "float32")
    assert type(node.model).__name__ == "Mask2FormerForUniversalSegmentation"
    out = node.run_batch(frames(), [node.params] * 2)
    assert [o["labels"].shape for o in out] == [(96, 128), (80, 60)]


def test_a_local_folder_loads_without_the_tiny_switch(node: Segmentation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    folder = tiny_model("segformer", segmentation.tiny)
    local = Segmentation(SegmentationParams(model=str(folder), classes=["person", "wall"]), "seg")
    local.load("cpu", "float32")
    assert np.array_equal(
        local.run_batch(frames()[:1], [local.params])[0]["labels"],
        node.run_batch(frames()[:1], [node.params])[0]["labels"],
    )


def test_a_missing_model_offline_names_the_node_and_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPGRAPH_MODELS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = Segmentation(SegmentationParams(model="capgraph-tests/no-such-segformer"), "seg")
    with pytest.raises(ModelMissing, match="node 'seg': model 'capgraph-tests/no-such-segformer'"):
        missing.load("cpu", "float32")


def test_a_segmentation_graph_runs_end_to_end(tiny_models: Path) -> None:
    executor = Executor(plan_from_text(GRAPH), device="cpu")
    result = executor.run(frames())
    for frame, out in zip(frames(), result.outputs):
        assert out["mask"].shape == frame["image"].shape[:2]
        assert np.array_equal(out["mask"], np.isin(out["labels"], [12, 2]).astype(np.float32))
    walls = executor.run(frames()[:1], params={"seg.classes": ["wall"]}).outputs[0]
    assert walls["mask"].any() and np.array_equal(walls["mask"], (walls["labels"] == 0).astype(np.float32))
    seg = executor.nodes["seg"]  # the graph reads no preview: none is blended
    assert seg.wanted == {"mask", "labels"} and "preview" not in seg.run_batch(frames()[:1], [seg.params])[0]
