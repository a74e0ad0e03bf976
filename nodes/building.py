"""Helpers for the model builders families declare in their `Weights`: the full-size random
model's shape (`FullSize`), where and how it is built, and the CLIP text parts and tiny VAE
that the SDXL and x4-upscaler families share. Helpers only: no list of families here.
"""

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capgraph.nodes.helpers import no_progress_bars

Config = dict[str, dict[str, Any]]
"""Hyperparameters by section: a model's constructor kwargs, or a processor's settings."""

TOKENS = {"bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513}
"""Special-token ids of the tiny CLIP tokenizer: the text encoders pool at its end token."""
TEXT_HIDDEN = 32
"""Width of every tiny CLIP text encoder; SDXL's UNet cross-attends to two of them side by side."""


@dataclass(frozen=True)
class FullSize:
    """A full-size random model (`Weights.random`): the default checkpoint's published
    `config`, `modules(config)` building its torch modules on the current device (`meta` in
    tests), and `save(folder, modules, config)` writing them in the tiny model's layout.
    Called as `build(folder, config=None, device=None)`: tests pass shrunk configs."""

    config: Config = field(repr=False)
    modules: Callable[[Config], dict[str, Any]]
    save: Callable[[Path, dict[str, Any], Config], None]
    diffusers: bool = False
    """Whether building imports diffusers (whose progress bars are then turned off too)."""

    def __call__(self, folder: Path, config: Config | None = None, device: str | None = None) -> None:
        config = copy.deepcopy(self.config if config is None else config)
        no_progress_bars(diffusers=self.diffusers)
        with building(device):
            modules = self.modules(copy.deepcopy(config))
        self.save(folder, modules, config)


def build_device() -> str:
    """Where random models are built: the GPU when there is one (seconds for billions of
    parameters), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def building(device: str | None = None) -> Iterator[None]:
    """New modules are created on `device` in fp16 and seeded: no fp32 copy ever exists."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    torch.manual_seed(0)
    try:
        with torch.device(device or build_device()):
            yield
    finally:
        torch.set_default_dtype(previous)


def save_seeded(folder: Path, model_class: Any, config: Any, processor: Any) -> None:
    """A tiny model: `model_class(config)` built with seed 0 (two builds hold the same
    weights), saved with its processor by `save_pretrained`, as the hub repos hold them."""
    import torch

    no_progress_bars()  # "Writing model shards" bars on every build otherwise
    torch.manual_seed(0)
    model_class(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)


def clip_tokenizer() -> Any:
    """A byte-level CLIP tokenizer built with no network: the 256 byte symbols, their
    end-of-word forms and the two special tokens, no merges. `model_max_length=77` is what
    SDXL's prompt encoding expects (it overflows without it)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def clip_text(config: dict[str, Any], *, projection: bool = False) -> Any:
    """A CLIP text encoder from its config; `projection=True` gives SDXL's second encoder,
    whose pooled projection feeds the UNet's added time/text embedding."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**config)).eval()


def tiny_clip_text(*, projection: bool = False, seed: int = 0) -> Any:
    """A 2-layer CLIP text encoder over the tiny tokenizer's vocabulary."""
    import torch

    torch.manual_seed(seed)
    return clip_text(
        dict(
            vocab_size=len(clip_tokenizer()),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=TEXT_HIDDEN,
            max_position_embeddings=77,
            hidden_act="gelu",
            **TOKENS,
        ),
        projection=projection,
    )


def tiny_vae(blocks: tuple[int, ...] = (16, 16, 32, 32), *, scaling_factor: float = 0.13025, seed: int = 0) -> Any:
    """An AutoencoderKL that downsamples by 2 ** (len(blocks) - 1): 8 by default, as SDXL's
    does, so a tiny generation at a real frame size stays cheap."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=blocks,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        scaling_factor=scaling_factor,
    ).eval()
