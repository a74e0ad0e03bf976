"""Image captioning: a Text description of a frame, by BLIP or BLIP-2 through transformers.

Weights: any BLIP captioning checkpoint (`BlipForConditionalGeneration` + `BlipProcessor`)
or BLIP-2 checkpoint (`Blip2ForConditionalGeneration` + `Blip2Processor`), by Hugging Face
id or local folder; the checkpoint's `model_type` picks the classes. The default is
Salesforce/blip-image-captioning-large, the Livepeer network's warm image-to-text model
(446 M params, 0.9 GB in fp16); Salesforce/blip2-opt-2.7b is 3.7 B params, 7.5 GB in fp16
(sizes from the architectures, not measured on a GPU here). In `CAPGRAPH_MODELS=tiny` and
`random` modes a model id containing "blip2" or "blip-2" picks the BLIP-2 model, any
other the BLIP one.

An optional prompt guides the caption as ai-runner's does: BLIP continues it ("a
photography of" -> "a photography of a red barn"), BLIP-2 answers it ("Question: what is
in the picture? Answer:"). The answer starts with the prompt, as ai-runner's does, unless
`keep_prompt` is off. A batch of frames is one `generate` call per group of frames that
share a prompt and generation params: the whole batch in the usual case of one prompt.
Prompts of different lengths are not padded into one call, since BLIP's text decoder has
absolute positions and a padded prompt would change the caption.
"""

import re
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams, example_value
from capgraph.engine.types import PortType, port
from capgraph.engine.weights import Weights
from capgraph.nodes.helpers import load_pretrained, no_progress_bars
from capgraph_caption import models

BLIP = Weights("blip-caption", "Salesforce/blip-image-captioning-large", models.blip, models.random_blip)
BLIP2 = Weights("blip2-caption", "Salesforce/blip2-opt-2.7b", models.blip2, models.random_blip2)
MODEL_TYPES = {
    "blip": ("BlipForConditionalGeneration", "BlipProcessor"),
    "blip-2": ("Blip2ForConditionalGeneration", "Blip2Processor"),
}
_BLIP2_ID = re.compile(r"blip-?2", re.IGNORECASE)


class CaptionParams(NodeParams):
    model: str = Field(
        BLIP.default,
        min_length=1,
        max_length=512,
        description="Hugging Face id or local folder of a BLIP or BLIP-2 captioning checkpoint",
    )
    prompt: str = Field(
        "",
        max_length=500,
        description="text the caption continues (BLIP) or answers (BLIP-2); "
        "a wired `prompt` port overrides it; empty = a plain caption",
    )
    max_new_tokens: int = Field(30, ge=1, le=128, description="longest caption, in tokens after the prompt")
    num_beams: int = Field(3, ge=1, le=8, description="beam search width; 1 = greedy, the fastest")
    keep_prompt: bool = Field(True, description="start the answer with the prompt, as ai-runner's image-to-text does")


class Caption(Node):
    """A caption of a frame (BLIP or BLIP-2), optionally guided by a prompt, as Text."""

    type = "caption"
    category = "vision"
    Params = CaptionParams
    inputs = {
        "image": port(PortType.IMAGE, doc="frame to describe"),
        "prompt": port(PortType.TEXT, doc="prompt for this frame, overriding params.prompt", optional=True),
    }
    outputs = {"text": port(PortType.TEXT, doc="the caption (beginning with the prompt when keep_prompt is on)")}
    request_params = frozenset({"prompt", "max_new_tokens", "num_beams", "keep_prompt"})
    uses_gpu = True
    max_batch = 16
    weights = {"model": BLIP, "blip2": BLIP2}
    cost_ms = 40.0
    """A guess between depth (12) and SDXL (120) on the same scale: a few dozen decoder
    steps over one image encoding; `capgraph tune` measures it."""

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        import transformers
        from transformers import AutoConfig

        no_progress_bars()
        # In tiny and random modes the id decides which model stands in; otherwise both
        # entries resolve the same id and the checkpoint's own config decides.
        path = self.resolve_weights("blip2" if _BLIP2_ID.search(self.params.model) else "model", self.params.model)
        kind = AutoConfig.from_pretrained(path).model_type
        if kind not in MODEL_TYPES:
            raise ValueError(
                f"node '{self.node_id}': model '{self.params.model}' is a '{kind}' checkpoint; caption loads "
                f"BLIP ({', '.join(MODEL_TYPES)}) captioning checkpoints"
            )
        model_class, processor_class = (getattr(transformers, name) for name in MODEL_TYPES[kind])
        self.processor, self.model = load_pretrained(self, path, model_class, processor_class)

    def warmup(self) -> None:
        """One short caption with beam search, so generate's kernels and caches are ready."""
        self.run_batch([self.example_inputs()], [self.params.model_copy(update={"max_new_tokens": 4})])

    def example_inputs(self) -> Frame:
        return {"image": example_value(PortType.IMAGE)}

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[CaptionParams]) -> list[Frame]:
        groups: dict[tuple[str, int, int, bool], list[int]] = {}
        for i, (frame, p) in enumerate(zip(inputs, params)):
            prompt = frame.get("prompt", p.prompt)
            groups.setdefault((prompt, p.max_new_tokens, p.num_beams, p.keep_prompt), []).append(i)
        out: list[Frame] = [{} for _ in inputs]
        for (prompt, max_new_tokens, num_beams, keep_prompt), members in groups.items():
            texts = self._generate([inputs[i]["image"] for i in members], prompt, max_new_tokens, num_beams)
            for i, text in zip(members, texts):
                out[i] = {"text": text if keep_prompt else _without(text, prompt)}
        return out

    def _generate(self, images: list[Any], prompt: str, max_new_tokens: int, num_beams: int) -> list[str]:
        import torch

        text = {"text": [prompt] * len(images)} if prompt.strip() else {}
        encoded = self.processor(images=images, return_tensors="pt", **text).to(self.device)
        encoded["pixel_values"] = encoded["pixel_values"].to(self.torch_dtype)
        with torch.inference_mode():
            tokens = self.model.generate(**encoded, max_new_tokens=max_new_tokens, num_beams=num_beams)
        return [t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]


def _without(text: str, prompt: str) -> str:
    """The caption after its prompt (BLIP lower-cases what it repeats, so compare so)."""
    head = prompt.strip()
    return text[len(head) :].strip() if head and text.lower().startswith(head.lower()) else text
