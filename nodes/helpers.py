"""Helpers shared by node families (and plug-ins): resizing, byte counts, quiet loading, fp16 variants."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from capgraph.engine.node import Frame

if TYPE_CHECKING:
    from capgraph.engine.node import Node

P = TypeVar("P")


def resize(array: np.ndarray, width: int, height: int, *, smooth: bool = True) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array to (height, width), keeping its dtype.

    uint8 images use Lanczos (or nearest for label maps with `smooth=False`); float maps use
    bilinear, through PIL's float mode, so depth and masks keep their precision.
    """
    from PIL import Image

    if array.shape[0] == height and array.shape[1] == width:
        return array
    if array.dtype == np.uint8:
        method = Image.Resampling.LANCZOS if smooth else Image.Resampling.NEAREST
        return np.asarray(Image.fromarray(array).resize((width, height), method))
    if array.ndim == 2:
        method = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
        mode_array = array.astype(np.float32) if smooth else array.astype(np.int32)
        return np.asarray(Image.fromarray(mode_array).resize((width, height), method)).astype(array.dtype)
    return np.stack([resize(array[..., c], width, height, smooth=smooth) for c in range(array.shape[2])], axis=-1)


def to_multiple(value: float, multiple: int) -> int:
    """Round down to a multiple (at least one multiple): SDXL wants sides divisible by 8."""
    return max(multiple, int(value) // multiple * multiple)


def module_bytes(*modules: Any) -> int:
    """Bytes of the parameters and buffers of torch modules (what `Node.weight_bytes` reports)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        for tensor in list(module.parameters()) + list(module.buffers()):
            if id(tensor) not in seen:  # shared weights count once
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def no_progress_bars(diffusers: bool = False) -> None:
    """Turn off the loading bars of transformers (and diffusers): noise in replica logs.
    diffusers is only touched when asked, since importing it costs a second."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if diffusers:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()


def fp16_variant(path: str, torch_dtype: Any) -> dict[str, str]:
    """Load a checkpoint's `.fp16.` files when loading in fp16 and it ships them (half the
    bytes to read), and in fp32 too where the folder has no other weights (`capgraph
    prepare` on a GPU machine fetches only those): they load upcast."""
    import torch

    from capgraph.engine.weights import FP16_FILE

    folder = Path(path)
    if not folder.is_dir():
        return {}
    weights = [f.name for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin")]
    half = [n for n in weights if FP16_FILE.search(n)]
    if half and (torch_dtype == torch.float16 or len(half) == len(weights)):
        return {"variant": "fp16"}
    return {}


def per_frame(run: Callable[[Frame, P], Frame], inputs: Sequence[Frame], params: Sequence[P]) -> list[Frame]:
    """The batch of a family that works frame by frame: `run(frame, params)` for each, in order."""
    return [run(frame, p) for frame, p in zip(inputs, params)]


def load_pretrained(node: "Node", path: str, model_class: Any, processor_class: Any) -> tuple[Any, Any]:
    """The processor and model of a transformers checkpoint folder, the model in the node's
    dtype on its device for inference; sets `node.torch_dtype` and `node.weight_bytes`."""
    import torch

    no_progress_bars()
    node.torch_dtype = getattr(torch, node.dtype)  # type: ignore[attr-defined]
    processor = processor_class.from_pretrained(path)
    model = model_class.from_pretrained(path, dtype=node.torch_dtype).to(node.device).eval()  # type: ignore[attr-defined]
    node.weight_bytes = module_bytes(model)
    return processor, model
