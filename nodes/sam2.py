"""SAM 2 promptable segmentation: masks for points and boxes, as Livepeer's
/segment-anything-2 route returns them, through transformers (`Sam2Model` + `Sam2Processor`).
Prompts come from params or the optional ports. docs/models.md has weights and costs.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from capgraph.engine.errors import InputError
from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.engine.weights import Weights
from capgraph.nodes.building import Config, FullSize, save_seeded
from capgraph.nodes.helpers import module_bytes, no_progress_bars

# Weights: the default checkpoint, and the tiny and full-size random models built in its layout.

CONFIG: Config = {  # facebook/sam2-hiera-large: 216.9 M in the image model, plus the video memory modules
    "backbone": dict(
        hidden_size=144,
        num_attention_heads=2,
        image_size=[1024, 1024],
        blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=[144, 288, 576, 1152],
        num_attention_heads_per_stage=[2, 4, 8, 16],
        window_size_per_stage=[8, 4, 16, 8],
        global_attention_blocks=[23, 33, 43],
        window_positional_embedding_background_size=[7, 7],
    ),
    "vision": dict(
        backbone_channel_list=[1152, 576, 288, 144],
        backbone_feature_sizes=[[256, 256], [128, 128], [64, 64]],
        fpn_hidden_size=256,
    ),
    "model": dict(
        image_size=1024
    ),  # prompt encoder, mask decoder and memory modules: the library's defaults are SAM 2's
}
TINY_SIZE = 64
"""Input side of the tiny SAM 2: the processor must resize to the model's own size."""


def _processor(size: int) -> Any:
    """The `Sam2VideoProcessor` the default repo ships, at the model's input size."""
    from transformers import Sam2ImageProcessor, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    return Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(
            size={"height": size, "width": size}, mask_size={"height": size // 4, "width": size // 4}
        ),
        video_processor=Sam2VideoVideoProcessor(size={"height": size, "width": size}),
        target_size=size,
    )


def tiny(folder: Path) -> None:
    """SAM 2 with a 5-block Hiera (301 k params, 109 k of them the image model), saved like the default:
    a `sam2_video` checkpoint (image model plus memory modules) with its processor.
    Hiera rules: no global-attention block may open a query-pooling stage, and the FPN
    feature sizes are S/4, S/8, S/16."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    size = TINY_SIZE
    backbone = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=8,
        num_attention_heads=1,
        image_size=[size, size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = dict(
        model_type="sam2_vision_model",
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
        fpn_hidden_size=32,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
        ),
        image_size=size,
        num_maskmem=2,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=32,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[size // 16] * 2,
        memory_encoder_hidden_size=32,
        memory_encoder_output_channels=16,
        mask_downsampler_embed_dim=32,
        memory_fuser_embed_dim=32,
        memory_fuser_intermediate_dim=32,
    )
    save_seeded(folder, Sam2VideoModel, config, _processor(size))


def _video_config(config: Config) -> Any:
    """The `sam2_video` config the default repo ships: the image model plus memory modules."""
    from transformers import Sam2VideoConfig

    backbone = dict(model_type="sam2_hiera_det_model", **config["backbone"])
    vision = dict(model_type="sam2_vision_model", backbone_config=backbone, **config["vision"])
    size = config["model"]["image_size"]
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(image_size=size),
        memory_attention_rope_feat_sizes=[size // 16] * 2,
        **config["model"],
    )


def _image_config(video: Any) -> Any:
    """The image model's part of a `sam2_video` config (what this family loads)."""
    from transformers import Sam2Config

    parts = ("vision_config", "prompt_encoder_config", "mask_decoder_config")
    return Sam2Config(**{name: getattr(video, name).to_dict() for name in parts})


def full_size_modules(config: Config) -> dict[str, Any]:
    from transformers import Sam2VideoModel

    return {"model": Sam2VideoModel(_video_config(config)).eval()}


def image_modules(config: Config) -> dict[str, Any]:
    """The image model (`Sam2Model`) this family loads out of the video checkpoint."""
    from transformers import Sam2Model

    return {"model": Sam2Model(_image_config(_video_config(config))).eval()}


def _save_full_size(folder: Path, modules: dict[str, Any], config: Config) -> None:
    modules["model"].save_pretrained(folder)
    _processor(config["model"]["image_size"]).save_pretrained(folder)


MODEL = Weights("sam2", "facebook/sam2-hiera-large", tiny, FullSize(CONFIG, full_size_modules, _save_full_size))

Coordinate = Annotated[float, Field(ge=0, le=16384)]
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]
Box = Annotated[list[Coordinate], Field(min_length=4, max_length=4)]


class Sam2Params(NodeParams):
    model: str = Field(
        MODEL.default,
        min_length=1,
        max_length=512,
        description="Hugging Face id or local folder of a SAM 2 checkpoint in transformers layout",
    )
    point_coords: list[Point] | None = Field(
        None, max_length=64, description="prompt points [[x, y], ...] in frame pixels"
    )
    point_labels: list[int] | None = Field(
        None, max_length=64, description="one label per point: 1 = foreground, 0 = background; unset = all 1"
    )
    box: Box | None = Field(None, description="prompt box [x0, y0, x1, y1] in frame pixels")
    multimask_output: bool = Field(True, description="three candidate masks per object (best first) instead of one")

    @model_validator(mode="after")
    def _consistent(self) -> "Sam2Params":
        if self.point_labels is not None:
            if self.point_coords is None or len(self.point_labels) != len(self.point_coords):
                count = 0 if self.point_coords is None else len(self.point_coords)
                raise ValueError(
                    f"point_labels has {len(self.point_labels)} labels for {count} point_coords; "
                    "give one label per point"
                )
            if any(label not in (0, 1) for label in self.point_labels):
                raise ValueError(f"point_labels must be 0 (background) or 1 (foreground), got {self.point_labels}")
        if self.box is not None and (self.box[2] < self.box[0] or self.box[3] < self.box[1]):
            raise ValueError(f"box must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {self.box}")
        return self


class Sam2(Node):
    """SAM 2 masks for point and box prompts (from params or from other nodes), best first."""

    type = "sam2"
    category = "vision"
    Params = Sam2Params
    inputs = {
        "image": port(PortType.IMAGE, doc="frame to segment"),
        "points": port(
            PortType.POINTS, doc="prompt points [x, y, label]; replace point_coords when not empty", optional=True
        ),
        "boxes": port(PortType.BOXES, doc="prompt boxes, one object each; replace box when not empty", optional=True),
        "mask": port(
            PortType.MASK,
            doc="a rough mask whose bounding box is the box prompt (when `boxes` gives none)",
            optional=True,
        ),
    }
    outputs = {
        "masks": port(
            PortType.MASKS, doc="one object: its candidates, best first; several boxes: each object's best mask"
        ),
        "mask": port(PortType.MASK, doc="the best mask (the union of every object's best mask for several boxes)"),
    }
    request_params = frozenset({"point_coords", "point_labels", "box", "multimask_output"})
    uses_gpu = True
    max_batch = 4
    weights = {"model": MODEL}
    cost_ms = 30.0

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        import torch
        from transformers import AutoConfig, Sam2ImageProcessor, Sam2Model, Sam2Processor

        no_progress_bars()
        path = self.resolve_weights("model")
        config = AutoConfig.from_pretrained(path)
        if config.model_type != "sam2":  # a video checkpoint: keep the image model's part of its config
            config = _image_config(config)
        self.torch_dtype = getattr(torch, dtype)
        self.model = Sam2Model.from_pretrained(path, config=config, dtype=self.torch_dtype).to(device).eval()
        try:
            self.processor = Sam2Processor.from_pretrained(path)
        except OSError:  # the -hf repos ship weights only: SAM 2's processor at the model's input size
            side = config.prompt_encoder_config.image_size
            side = side if isinstance(side, int) else side[0]
            self.processor = Sam2Processor(Sam2ImageProcessor(size={"height": side, "width": side}))
        self.weight_bytes = module_bytes(self.model)

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[Sam2Params]) -> list[Frame]:
        import torch

        images = [frame["image"] for frame in inputs]
        sizes = [list(image.shape[:2]) for image in images]
        prompts = [self.prompts(frame, p) for frame, p in zip(inputs, params)]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            groups.setdefault((_shape(prompt), p.multimask_output), []).append(i)
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.torch_dtype)
        results: dict[int, Frame] = {}
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixels)
            for (_, multimask), indices in groups.items():
                tensors = self.prompt_tensors([prompts[i] for i in indices], [sizes[i] for i in indices])
                decoded = self.model(
                    image_embeddings=[e[indices] for e in embeddings], multimask_output=multimask, **tensors
                )
                logits = decoded.pred_masks.float()
                masks = self.processor.post_process_masks(logits, [sizes[i] for i in indices])
                candidates = "masks" in self.wanted  # else only the best mask leaves the GPU, no logits
                for row, i in enumerate(indices):
                    results[i] = _answer(masks[row], decoded.iou_scores[row].float(), logits[row], candidates)
        return [results[i] for i in range(len(inputs))]

    def prompts(self, frame: Frame, p: Sam2Params) -> dict[str, Any]:
        """One frame's prompt lists: non-empty ports win over params."""
        if frame.get("points"):
            coords = [[float(x), float(y)] for x, y, _ in frame["points"]]
            labels = [int(label) for *_, label in frame["points"]]
        else:
            coords = p.point_coords or []
            labels = p.point_labels or [1] * len(coords)
        boxes = [list(map(float, b)) for b in frame.get("boxes") or []]
        if not boxes and frame.get("mask") is not None:
            boxes = _bounding_box(frame["mask"], *frame["image"].shape[:2])
        if not boxes and p.box is not None:
            boxes = [p.box]
        if coords and len(boxes) > 1:
            raise InputError(
                f"{self.node_id}.points",
                f"points can go with one box only, got {len(boxes)} boxes; "
                "send several boxes without points, or one box with its points",
            )
        return {"points": coords, "labels": labels, "boxes": boxes}

    def prompt_tensors(self, prompts: Sequence[dict[str, Any]], sizes: Sequence[list[int]]) -> dict[str, Any]:
        """The processor scales pixel prompts to the model's input size; one object per box,
        or one object holding every point."""
        first = prompts[0]  # frames in a group share the prompt shape
        if not first["points"] and not first["boxes"]:
            return {}  # no prompt at all: SAM 2 pads an empty point itself
        kwargs: dict[str, Any] = {}
        if first["points"]:
            kwargs["input_points"] = [[pr["points"]] for pr in prompts]
            kwargs["input_labels"] = [[pr["labels"]] for pr in prompts]
        if first["boxes"]:
            kwargs["input_boxes"] = [pr["boxes"] for pr in prompts]
        encoded = self.processor(original_sizes=[list(s) for s in sizes], return_tensors="pt", **kwargs)
        return {
            k: encoded[k].to(self.device, self.torch_dtype if encoded[k].is_floating_point() else encoded[k].dtype)
            for k in ("input_points", "input_labels", "input_boxes")
            if k in encoded
        }


def _shape(prompt: dict[str, Any]) -> tuple[int, int]:
    return len(prompt["points"]), len(prompt["boxes"])


def _bounding_box(mask: np.ndarray, height: int, width: int) -> list[list[float]]:
    """The box around a mask's pixels above 0.5 in frame pixels (the mask may come at
    another size), or none for an empty mask."""
    rows, cols = np.nonzero(np.asarray(mask) > 0.5)
    if rows.size == 0:
        return []
    sy, sx = height / mask.shape[0], width / mask.shape[1]
    return [[cols.min() * sx, rows.min() * sy, (cols.max() + 1) * sx, (rows.max() + 1) * sy]]


def _answer(masks: Any, scores: Any, logits: Any, candidates: bool = True) -> Frame:
    """One frame's outputs from (objects, candidates, ...) tensors: a single object keeps its
    candidates sorted by score (Livepeer's answer); several objects keep each one's best.
    Without `candidates` (nothing reads `masks`) only `mask` is computed."""
    scores = scores.cpu().numpy().astype(np.float32)
    order = np.argsort(-scores, axis=-1, kind="stable")
    if not candidates:
        best = order[:, 0]
        chosen = masks[list(range(scores.shape[0])), best.tolist()].cpu().numpy().astype(np.float32)
        return {"mask": chosen.max(axis=0)}
    masks, logits = (t.cpu().numpy().astype(np.float32) for t in (masks, logits))
    if scores.shape[0] == 1:
        pick = order[0]
        chosen = masks[0, pick], scores[0, pick], logits[0, pick]
        mask = chosen[0][0]
    else:
        rows, best = np.arange(scores.shape[0]), order[:, 0]
        chosen = masks[rows, best], scores[rows, best], logits[rows, best]
        mask = chosen[0].max(axis=0)
    return {"masks": dict(zip(("masks", "scores", "logits"), chosen)), "mask": mask}
