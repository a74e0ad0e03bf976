"""NSFW check of a frame: whether it is not safe for work, by the checker ai-runner and the
diffusers Stable Diffusion pipelines use (`StableDiffusionSafetyChecker`, a CLIP ViT-L/14
image tower scored against 17 concept and 3 special-care embeddings, with its
`CLIPImageProcessor`), and the frame itself, blacked out when flagged if `black_out` says so.
docs/models.md has weights and costs.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams
from capgraph.engine.types import PortType, port
from capgraph.engine.weights import Weights
from capgraph.nodes.building import TOKENS, Config, FullSize
from capgraph.nodes.helpers import load_pretrained, no_progress_bars

# Weights: the default checkpoint, and the tiny and full-size random models built in its layout.
# CompVis/stable-diffusion-safety-checker holds config.json, preprocessor_config.json and the
# weights as pytorch_model.bin and model.safetensors: `capgraph prepare` keeps the first two and
# model.safetensors (nodes/prepare.py), which is all `load` reads.

CONFIG: Config = {  # CompVis/stable-diffusion-safety-checker: 304 M (CLIP ViT-L/14 vision tower + projection)
    "vision": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=24,
        patch_size=14,
        image_size=224,
    ),
    "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
    "model": dict(projection_dim=768),
}
FLAGGED_COLOUR = (255, 0, 255)
"""The tiny checker flags a frame of this one colour (magenta), and no frame of the tests'
other images: its first concept embedding is that frame's own, at a threshold of `TINY_THRESHOLD`."""
TINY_THRESHOLD = 0.95
"""Cosine similarity to the magenta frame above which the tiny checker flags (other test
images score at most 0.89; the frame itself 1.0)."""
NEVER = 2.0
"""A concept threshold no cosine similarity reaches: that concept never flags."""


def _clip_config(config: Config) -> Any:
    from transformers import CLIPConfig

    return CLIPConfig(text_config=config["text"], vision_config=config["vision"], **config["model"])


def _checker(config: Config) -> Any:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    return StableDiffusionSafetyChecker(_clip_config(config)).eval()


def _processor(side: int) -> Any:
    """The checker repo's preprocessor: shortest side to `side`, centre crop, CLIP's mean and std."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def tiny(folder: Path) -> None:
    """The checker on a 2-layer CLIP vision tower over 32 px crops (22 k params). Its 17
    concept embeddings are random but one: that of a magenta frame (`FLAGGED_COLOUR`), so
    tests get a flagged and an unflagged frame; special-care concepts never flag."""
    import torch

    no_progress_bars()
    text = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=514, **TOKENS
    )
    vision = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    model = _checker({"text": text, "vision": vision, "model": dict(projection_dim=32)})
    processor = _processor(32)
    flagged = np.full((64, 64, 3), FLAGGED_COLOUR, np.uint8)
    with torch.no_grad():
        pixels = processor(images=[flagged], return_tensors="pt")["pixel_values"]
        embedding = model.visual_projection(model.vision_model(pixels)[1])[0]
        model.concept_embeds.copy_(torch.randn_like(model.concept_embeds))
        model.concept_embeds[0] = embedding
        model.concept_embeds_weights.fill_(NEVER)
        model.concept_embeds_weights[0] = TINY_THRESHOLD
        model.special_care_embeds.copy_(torch.randn_like(model.special_care_embeds))
        model.special_care_embeds_weights.fill_(NEVER)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def full_size_modules(config: Config) -> dict[str, Any]:
    return {"model": _checker(config)}


def _save_full_size(folder: Path, modules: dict[str, Any], config: Config) -> None:
    modules["model"].save_pretrained(folder)
    _processor(config["vision"]["image_size"]).save_pretrained(folder)


MODEL = Weights(
    "safety-checker",
    "CompVis/stable-diffusion-safety-checker",
    tiny,
    FullSize(CONFIG, full_size_modules, _save_full_size, diffusers=True),
)


class SafetyParams(NodeParams):
    model: str = Field(
        MODEL.default,
        min_length=1,
        max_length=512,
        description="Hugging Face id or local folder of a StableDiffusionSafetyChecker with its preprocessor",
    )
    black_out: bool = Field(
        False,
        description="give a flagged frame back all black (what diffusers' pipelines do); "
        "false: unchanged, flagged only (what ai-runner does)",
    )


class Safety(Node):
    """Whether a frame is not safe for work (Stable Diffusion's safety checker), and the frame, black if asked."""

    type = "safety"
    category = "vision"
    Params = SafetyParams
    inputs = {"image": port(PortType.IMAGE, doc="frame to check")}
    outputs = {
        "nsfw": port(PortType.BOOL, doc="true where the checker flags the frame as not safe for work"),
        "image": port(PortType.IMAGE, doc="the frame; all black where flagged and `black_out` is set"),
    }
    # black_out is the operator's policy: a request may not turn it off.
    uses_gpu = True
    max_batch = 8
    weights = {"model": MODEL}
    cost_ms = 8.0

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        path = self.resolve_weights("model")
        self.processor, self.model = load_pretrained(self, path, StableDiffusionSafetyChecker, CLIPImageProcessor)
        # Its forward warns "a black image will be returned" on every flag, whatever black_out says.
        logging.getLogger(StableDiffusionSafetyChecker.__module__).setLevel(logging.ERROR)

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[SafetyParams]) -> list[Frame]:
        import torch

        images = [frame["image"] for frame in inputs]
        # a decoded frame may be a read-only view (PNG bytes); the processor hands it to torch as is
        writable = [image if image.flags.writeable else image.copy() for image in images]
        pixels = self.processor(images=writable, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            # `images` is only read back for the flags: the checker's own black-out is float64.
            _, flagged = self.model(clip_input=pixels.to(self.device, self.torch_dtype), images=list(images))
        out = []
        for image, nsfw, p in zip(images, flagged, params):
            result: Frame = {"nsfw": bool(nsfw)}
            if "image" in self.wanted:
                result["image"] = np.zeros_like(image) if nsfw and p.black_out else image
            out.append(result)
        return out
