"""Semantic segmentation: a per-pixel class map, a mask of chosen classes and a preview, from a
transformers checkpoint (SegFormer-B0 on ADE20K by default). `classes` is matched against the
checkpoint's labels when the node loads. docs/models.md has weights and costs.
"""

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from capgraph.engine.errors import InputError, did_you_mean
from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.engine.weights import Weights
from capgraph.nodes.building import Config, FullSize, save_seeded
from capgraph.nodes.helpers import load_pretrained, no_progress_bars

# Weights: the default checkpoint, and the tiny and full-size random models built in its layout.

ADE_LABELS = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
)
"""The first 21 ADE20K classes (the tiny models'), ids as in the default checkpoint."""
ADE20K_LABELS = ADE_LABELS + (
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)
"""ADE20K's 150 classes, ids as in `nvidia/segformer-b0-finetuned-ade-512-512`."""
CONFIG: Config = {  # nvidia/segformer-b0-finetuned-ade-512-512: 3.75 M
    "model": dict(
        hidden_sizes=[32, 64, 160, 256],
        depths=[2, 2, 2, 2],
        num_attention_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1],
        mlp_ratios=[4, 4, 4, 4],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        decoder_hidden_size=256,
    ),
}


def _labels(names: Sequence[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def tiny(folder: Path) -> None:
    """SegFormer (54 k params) with ADE20K's first class names, so `classes: [person]` works."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 32, 32],
        num_attention_heads=[1, 1, 2, 2],
        mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16,
        **_labels(ADE_LABELS),
    )
    save_seeded(
        folder, SegformerForSemanticSegmentation, config, SegformerImageProcessor(size={"height": 64, "width": 64})
    )


def tiny_mask2former(folder: Path) -> None:
    """Mask2Former on a Swin backbone (267 k params; the decoder widths are multiples of 32
    for its GroupNorms), the universal-segmentation path of this family."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(
        image_size=64,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        mlp_ratio=2.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=64,
        num_queries=8,
        **_labels(ADE_LABELS),
    )
    processor = Mask2FormerImageProcessor(size={"height": 64, "width": 64}, ignore_index=255)
    save_seeded(folder, Mask2FormerForUniversalSegmentation, config, processor)


def full_size_modules(config: Config) -> dict[str, Any]:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    return {
        "model": SegformerForSemanticSegmentation(SegformerConfig(**config["model"], **_labels(ADE20K_LABELS))).eval()
    }


def _save_full_size(folder: Path, modules: dict[str, Any], config: Config) -> None:
    """SegFormer-b0 with ADE20K's 150 class names, processor at 512 px."""
    from transformers import SegformerImageProcessor

    modules["model"].save_pretrained(folder)
    SegformerImageProcessor(size={"height": 512, "width": 512}, do_reduce_labels=True).save_pretrained(folder)


MODEL = Weights(
    "segformer", "nvidia/segformer-b0-finetuned-ade-512-512", tiny, FullSize(CONFIG, full_size_modules, _save_full_size)
)


class UnknownClass(ValueError):
    """A class name the model's labels do not have (raised at load for the graph's own
    `classes`; a request's `classes` get an InputError instead)."""


class SegmentationParams(NodeParams):
    model: str = Field(
        MODEL.default,
        min_length=1,
        max_length=512,
        description="Hugging Face id or local folder of a transformers semantic-segmentation model",
    )
    classes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        ["person"],
        min_length=1,
        max_length=64,
        description="label names whose pixels form `mask` (the model's id2label names, any case)",
    )
    preview_opacity: float = Field(
        0.5, ge=0.0, le=1.0, description="how strongly class colours cover the frame in `preview`"
    )


class Segmentation(Node):
    """Per-pixel classes of a frame (SegFormer ADE20K by default), with a mask of the chosen classes."""

    type = "segmentation"
    category = "vision"
    Params = SegmentationParams
    inputs = {"image": port(PortType.IMAGE, doc="frame to segment")}
    outputs = {
        "labels": port(PortType.SEGMENTATION_MAP, doc="class id per pixel (the model's id2label), frame size"),
        "mask": port(PortType.MASK, doc="1 where the pixel's class is one of `classes`, frame size"),
        "preview": port(PortType.IMAGE, doc="the frame with one colour per class laid over it"),
    }
    request_params = frozenset({"classes", "preview_opacity"})
    uses_gpu = True
    max_batch = 8
    weights = {"model": MODEL}
    cost_ms = 12.0

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        from transformers import (
            AutoConfig,
            AutoModelForSemanticSegmentation,
            AutoModelForUniversalSegmentation,
            AutoProcessor,
        )
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

        no_progress_bars()
        path = self.resolve_weights("model")
        config = AutoConfig.from_pretrained(path)
        semantic = config.model_type in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES
        auto = AutoModelForSemanticSegmentation if semantic else AutoModelForUniversalSegmentation
        # AutoProcessor: the image processor, or OneFormer's with its tokenizer
        self.processor, self.model = load_pretrained(self, path, auto, AutoProcessor)
        self.oneformer = config.model_type == "oneformer"  # it is told the task alongside the image
        self.label_ids = _label_ids(config.id2label)
        self.palette = np.random.default_rng(0).integers(32, 256, (max(config.id2label) + 1, 3)).astype(np.float32)
        self.class_ids(self.params.classes)  # a typo in the graph fails here, before any frame

    def class_ids(self, classes: Sequence[str]) -> list[int]:
        """Class ids of label names; UnknownClass names the node and the closest labels."""
        ids: list[int] = []
        for name in classes:
            key = name.strip().lower()
            if key not in self.label_ids:
                raise UnknownClass(
                    f"node '{self.node_id}': unknown class '{name}' for model '{self.params.model}'. "
                    + did_you_mean(key, self.label_ids, allowed_label="Its labels")
                )
            ids.extend(self.label_ids[key])
        return ids

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[SegmentationParams]) -> list[Frame]:
        import torch

        images = [frame["image"] for frame in inputs]
        extra = {"task_inputs": ["semantic"] * len(images)} if self.oneformer else {}
        encoded = self.processor(images=images, return_tensors="pt", **extra)
        encoded = {
            k: v.to(self.device, self.torch_dtype if v.is_floating_point() else v.dtype) for k, v in encoded.items()
        }
        with torch.inference_mode():
            predicted = self.model(**encoded)
            maps = self.processor.post_process_semantic_segmentation(
                predicted, target_sizes=[i.shape[:2] for i in images]
            )
        out = []
        for image, labels, p in zip(images, maps, params):
            labels = labels.cpu().numpy().astype(np.int32)
            try:
                ids = self.class_ids(p.classes)
            except UnknownClass as exc:  # only a request's override can get here: the graph's were checked at load
                raise InputError(f"params.{self.node_id}.classes", str(exc)) from None
            result: Frame = {"labels": labels, "mask": np.isin(labels, ids).astype(np.float32)}
            if "preview" in self.wanted:  # a float blend of the whole frame: only when something reads it
                blend = image.astype(np.float32) * (1.0 - p.preview_opacity) + self.palette[labels] * p.preview_opacity
                result["preview"] = (blend + 0.5).astype(np.uint8)
            out.append(result)
        return out


def _label_ids(id2label: dict[int, str]) -> dict[str, list[int]]:
    """Lower-case name -> class ids. ADE-style labels list synonyms ("person;individual;
    someone" or "person, individual"): each synonym names the class."""
    names: dict[str, list[int]] = {}
    for class_id, label in id2label.items():
        for name in re.split(r"[;,]", label):
            if name.strip():
                names.setdefault(name.strip().lower(), []).append(int(class_id))
    return names
