"""A model family as a newcomer writes it, in its own file: the test fixture of
test_new_family.py, added to the catalogue by its `module:Class` line as a built-in is."""

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.engine.weights import Weights
from capgraph.nodes.building import save_seeded
from capgraph.nodes.helpers import load_pretrained

FAMILY = "tests.nodes.classify_family:Classify"
"""Its line in `capgraph.nodes.BUILTIN`."""


def tiny_vit(folder: Path) -> None:
    """A 2-layer ViT classifier over 32 px frames with three labels, saved like google/vit-base-patch16-224."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
    )
    save_seeded(folder, ViTForImageClassification, config, ViTImageProcessor(size={"height": 32, "width": 32}))


MODEL = Weights("test-vit-classifier", "google/vit-base-patch16-224", tiny_vit)


class ClassifyParams(NodeParams):
    model: str = Field(
        MODEL.default, min_length=1, max_length=512, description="a transformers image-classification model"
    )


class Classify(Node):
    """The most likely label of a frame."""

    type = "classify"
    category = "vision"
    Params = ClassifyParams
    inputs = {"image": port(PortType.IMAGE, doc="frame to classify")}
    outputs = {
        "label": port(PortType.TEXT, doc="the best label"),
        "score": port(PortType.NUMBER, doc="its probability"),
    }
    uses_gpu = True
    weights = {"model": MODEL}
    cost_ms = 5.0

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        path = self.resolve_weights("model")
        self.processor, self.model = load_pretrained(self, path, AutoModelForImageClassification, AutoImageProcessor)

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[ClassifyParams]) -> list[Frame]:
        import torch

        pixels = self.processor(images=[f["image"] for f in inputs], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            scores, ids = (
                self.model(pixel_values=pixels.to(self.device, self.model.dtype)).logits.float().softmax(-1).max(-1)
            )
        return [{"label": self.model.config.id2label[int(i)], "score": float(s)} for s, i in zip(scores, ids)]
