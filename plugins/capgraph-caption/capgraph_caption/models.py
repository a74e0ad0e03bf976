"""BLIP and BLIP-2 captioning models built from configs: tiny ones for tests and
`CAPGRAPH_MODELS=tiny`, full-size ones with random fp16 weights for `CAPGRAPH_MODELS=random`.

Each builder writes the model, its tokenizer and its processor with `save_pretrained`, in
the layout of the default hub repos (Salesforce/blip-image-captioning-large,
Salesforce/blip2-opt-2.7b), so the family loads them through the same `from_pretrained`
calls as the real checkpoints. The real vocabularies cannot be fetched offline, so the
tokenizers are small word-piece (BLIP) and byte-level (BLIP-2, as OPT's) ones; the full-size
builders pad them with filler tokens to the real vocabulary sizes, so embeddings, and
their cost, are the real ones. Checked with transformers 5.25: a processor built this way
saves and loads back, and `generate` runs on a batch with and without a prompt.
"""

from pathlib import Path
from typing import Any

from capgraph.nodes.helpers import no_progress_bars

WORDS = (
    "a an the of in on with and at photo picture painting drawing cat dog house tree sky man woman child car "
    "road street field water red blue green white black small large standing sitting sunset"
).split()
"""A few whole words, so the tiny BLIP tokenizer reads a prompt as words rather than letters."""

# Published configs, typed in from the repos' config.json files.
BLIP_LARGE = {
    "vision": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=384,
        patch_size=16,
    ),
    "text": dict(
        vocab_size=30524,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        encoder_hidden_size=1024,
        max_position_embeddings=512,
    ),
    "model": dict(projection_dim=512, image_text_hidden_size=256),
    "image_size": 384,
}
BLIP2_OPT_2_7B = {
    "vision": dict(
        hidden_size=1408,
        intermediate_size=6144,
        num_hidden_layers=39,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
    ),
    "qformer": dict(
        vocab_size=30522,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        cross_attention_frequency=2,
        encoder_hidden_size=1408,
    ),
    "text": dict(
        model_type="opt",
        vocab_size=50272,
        hidden_size=2560,
        ffn_dim=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=2048,
        word_embed_proj_dim=2560,
    ),
    "model": dict(num_query_tokens=32),
    "image_size": 224,
}
TINY_BLIP = {
    "vision": dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    ),
    "text": dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=32,
        max_position_embeddings=64,
    ),
    "model": dict(projection_dim=32, image_text_hidden_size=32),
    "image_size": 32,
}
TINY_BLIP2 = {
    "vision": dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    ),
    "qformer": dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=32,
        max_position_embeddings=64,
    ),
    "text": dict(
        model_type="opt",
        hidden_size=32,
        ffn_dim=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        word_embed_proj_dim=32,
    ),
    "model": dict(num_query_tokens=4),
    "image_size": 32,
}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _fill(tokens: list[str], size: int | None) -> list[str]:
    """`tokens` padded with filler tokens up to `size` entries (None: as they are)."""
    return tokens + [f"[unused{i}]" for i in range(max(0, (size or 0) - len(tokens)))]


def blip_tokenizer(size: int | None = None) -> Any:
    """A word-piece tokenizer in BLIP's shape (BERT's specials, `[DEC]` as bos), `size` tokens."""
    from transformers import BertTokenizerFast

    letters = list("abcdefghijklmnopqrstuvwxyz0123456789,.")
    base = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *(f"##{c}" for c in letters)]
    vocab = _fill(base, None if size is None else size - 1)
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def opt_tokenizer(size: int | None = None) -> Any:
    """A byte-level BPE tokenizer in OPT's shape (`</s>` bos and eos, `<pad>`), no merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2TokenizerFast

    vocab = _fill(["<pad>", "</s>", "<unk>", *sorted(ByteLevel.alphabet())], size)
    return GPT2TokenizerFast(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=[],
        unk_token="<unk>",
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=512,
    )


def _image_processor(side: int) -> Any:
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": side, "width": side}, image_mean=CLIP_MEAN, image_std=CLIP_STD)


def _save(model: Any, processor: Any, folder: Path, half: bool) -> None:
    model = model.eval()
    if half:
        model = model.half()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def blip(folder: Path, config: dict[str, Any] | None = None, device: str | None = None, half: bool = False) -> None:
    """BLIP for captioning (BlipForConditionalGeneration + BlipProcessor); tiny by default."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    no_progress_bars()
    config = config or TINY_BLIP
    tokenizer = blip_tokenizer(config["text"].get("vocab_size"))
    text = {
        **config["text"],
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    model_config = BlipConfig(vision_config=config["vision"], text_config=text, **config["model"])
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        model = BlipForConditionalGeneration(model_config)
    _save(model, BlipProcessor(_image_processor(config["image_size"]), tokenizer), folder, half)


def blip2(folder: Path, config: dict[str, Any] | None = None, device: str | None = None, half: bool = False) -> None:
    """BLIP-2 with an OPT decoder (Blip2ForConditionalGeneration + Blip2Processor); tiny by default.
    The processor adds its `<image>` token to the tokenizer; the config names its id."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor

    no_progress_bars()
    config = config or TINY_BLIP2
    size = config["text"].get("vocab_size")
    tokenizer = opt_tokenizer(None if size is None else size - 1)
    processor = Blip2Processor(
        _image_processor(config["image_size"]), tokenizer, num_query_tokens=config["model"]["num_query_tokens"]
    )
    tokenizer = processor.tokenizer
    vocab = max(len(tokenizer), size or 0)
    text = {
        **config["text"],
        "vocab_size": vocab,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    qformer = {"vocab_size": vocab, **config["qformer"]}
    model_config = Blip2Config(
        vision_config=config["vision"],
        qformer_config=qformer,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        **config["model"],
    )
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        model = Blip2ForConditionalGeneration(model_config)
    _save(model, processor, folder, half)


def _gpu() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def random_blip(folder: Path) -> None:
    """Salesforce/blip-image-captioning-large at full size (446 M params), random fp16 weights."""
    blip(folder, BLIP_LARGE, _gpu(), half=True)


def random_blip2(folder: Path) -> None:
    """Salesforce/blip2-opt-2.7b at full size (about 3.7 B params, 7.5 GB in fp16), random fp16 weights."""
    blip2(folder, BLIP2_OPT_2_7B, _gpu(), half=True)
