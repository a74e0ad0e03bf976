"""Monocular depth: a relative DepthMap (near = 1) and a colour preview of a frame, from a
transformers depth-estimation checkpoint (Depth Anything V2 Small by default).
docs/models.md has weights, costs and how metric models are handled.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.engine.values import gray_to_rgb
from capgraph.engine.weights import Weights
from capgraph.nodes.building import Config, FullSize, save_seeded
from capgraph.nodes.helpers import load_pretrained

# Weights: the default checkpoint, and the tiny and full-size random models built in its layout.

CONFIG: Config = {  # depth-anything/Depth-Anything-V2-Small-hf: 24.8 M
    "backbone": dict(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        out_indices=[3, 6, 9, 12],
        reshape_hidden_states=False,
    ),
    "model": dict(
        patch_size=14,
        reassemble_hidden_size=384,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_in_index=-1,
        head_hidden_size=32,
        depth_estimation_type="relative",
    ),
}


def _processor(side: int, **extra: Any) -> Any:
    """The processor of the -hf repos: aspect kept, sides a multiple of the patch size 14."""
    from transformers import DPTImageProcessor

    return DPTImageProcessor(
        size={"height": side, "width": side},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        do_pad=False,
        **extra,
    )


def tiny(folder: Path) -> None:
    """Depth Anything V2 on a 4-layer DINOv2 (139 k params)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=112,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        fusion_hidden_size=16,
        neck_hidden_sizes=[8, 16, 32, 32],
        head_hidden_size=8,
        reassemble_hidden_size=32,
    )
    save_seeded(folder, DepthAnythingForDepthEstimation, config, _processor(112))


def full_size_modules(config: Config) -> dict[str, Any]:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = dict(config["backbone"])
    backbone["out_features"] = [f"stage{i}" for i in backbone.pop("out_indices")]
    model_config = DepthAnythingConfig(backbone_config=Dinov2Config(**backbone), **config["model"])
    return {"model": DepthAnythingForDepthEstimation(model_config).eval()}


def _save_full_size(folder: Path, modules: dict[str, Any], config: Config) -> None:
    modules["model"].save_pretrained(folder)
    _processor(518, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)


MODEL = Weights(
    "depth-anything",
    "depth-anything/Depth-Anything-V2-Small-hf",
    tiny,
    FullSize(CONFIG, full_size_modules, _save_full_size),
)
METRIC_MODEL_TYPES = frozenset({"zoedepth", "depth_pro"})
"""Model types whose output is distance (far = large) whatever their config says."""

# matplotlib's "inferno" sampled at nine evenly spaced points: dark purple (far) to pale
# yellow (near), perceptually ordered, so a preview reads correctly in greyscale too.
INFERNO = np.array(
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


class DepthParams(NodeParams):
    model: str = Field(
        MODEL.default,
        min_length=1,
        max_length=512,
        description="Hugging Face id or local folder of a transformers depth-estimation model",
    )
    resolution: int | None = Field(
        None,
        ge=64,
        le=2048,
        description="side the model sees (a multiple of 14 for Depth Anything); unset = the checkpoint's own (518)",
    )
    colormap: Literal["inferno", "gray"] = Field("inferno", description="colours of the preview image")


class Depth(Node):
    """Relative depth of a frame (Depth Anything V2 by default): a DepthMap with near = 1 and a colour preview."""

    type = "depth"
    category = "vision"
    Params = DepthParams
    inputs = {"image": port(PortType.IMAGE, doc="frame to estimate depth for")}
    outputs = {
        "depth_map": port(PortType.DEPTH_MAP, doc="depth normalised to [0, 1] per frame, near = 1, frame size"),
        "preview": port(PortType.IMAGE, doc="the depth map coloured for people, frame size"),
    }
    request_params = frozenset({"colormap"})
    uses_gpu = True
    max_batch = 8
    weights = {"model": MODEL}
    cost_ms = 12.0

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        path = self.resolve_weights("model")
        self.processor, self.model = load_pretrained(self, path, AutoModelForDepthEstimation, AutoImageProcessor)
        config = self.model.config
        self.metric = (
            config.model_type in METRIC_MODEL_TYPES or getattr(config, "depth_estimation_type", None) == "metric"
        )

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[DepthParams]) -> list[Frame]:
        import torch

        # Aspect-preserving processors (Depth Anything's) give each frame size its own
        # tensor shape: one forward per distinct size, which is one forward for a stream.
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(inputs):
            by_size.setdefault(frame["image"].shape[:2], []).append(i)
        resize = (
            {}
            if self.params.resolution is None
            else {"size": {"height": self.params.resolution, "width": self.params.resolution}}
        )
        depths: dict[int, np.ndarray] = {}
        for size, indices in by_size.items():
            encoded = self.processor(images=[inputs[i]["image"] for i in indices], return_tensors="pt", **resize)
            pixels = encoded["pixel_values"].to(self.device, self.torch_dtype)
            with torch.inference_mode():
                predicted = self.model(pixel_values=pixels)
                maps = self.processor.post_process_depth_estimation(predicted, target_sizes=[size] * len(indices))
            for i, result in zip(indices, maps):
                depths[i] = _normalise(result["predicted_depth"].float().cpu().numpy(), flip=self.metric)
        preview = "preview" in self.wanted  # 31 ms a 768 px frame on a CPU: only when something reads it
        return [
            {"depth_map": depths[i]} | ({"preview": colorize(depths[i], p.colormap)} if preview else {})
            for i, p in enumerate(params)
        ]


def _normalise(depth: np.ndarray, *, flip: bool) -> np.ndarray:
    """Stretch one map to [0, 1] with near = 1; a flat map becomes all zeros."""
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    return (1.0 - scaled if flip and high > low else scaled).astype(np.float32)


def colorize(depth: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """A [0, 1] map as a uint8 RGB image: grey, or inferno by linear interpolation of its
    anchor colours (matplotlib would be a heavy import for nine numbers)."""
    if colormap == "gray":
        return gray_to_rgb(depth)
    position = np.clip(depth, 0.0, 1.0) * (len(INFERNO) - 1)
    low = np.minimum(position.astype(np.int32), len(INFERNO) - 2)
    weight = (position - low)[..., None]
    return (INFERNO[low] * (1.0 - weight) + INFERNO[low + 1] * weight + 0.5).astype(np.uint8)
