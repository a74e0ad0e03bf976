"""`capgraph prepare` fetches what the nodes load, not whole repos: checked on the file
lists of the real default repos (as the hub lists them), then by loading a tiny SDXL
pipeline from a folder holding only what `wanted_files` keeps."""

import shutil
from pathlib import Path

import torch

from capgraph.engine.weights import split_weights, tiny_model
from capgraph.nodes import sdxl
from capgraph.nodes.helpers import fp16_variant
from capgraph.nodes.prepare import wanted_files

SDXL_BASE = [  # stabilityai/stable-diffusion-xl-base-1.0, about 70 GB whole
    ".gitattributes",
    "01.png",
    "LICENSE.md",
    "README.md",
    "comparison.png",
    "model_index.json",
    "pipeline.png",
    "scheduler/scheduler_config.json",
    "sd_xl_base_1.0.safetensors",
    "sd_xl_base_1.0_0.9vae.safetensors",
    "sd_xl_offset_example-lora_1.0.safetensors",
    "text_encoder/config.json",
    "text_encoder/flax_model.msgpack",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.onnx",
    "text_encoder/model.safetensors",
    "text_encoder/openvino_model.bin",
    "text_encoder/openvino_model.xml",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
    "text_encoder_2/model.safetensors",
    "text_encoder_2/model.onnx",
    "text_encoder_2/model.onnx_data",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "unet/config.json",
    "unet/diffusion_flax_model.msgpack",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/model.onnx",
    "unet/model.onnx_data",
    "unet/openvino_model.bin",
    "unet/openvino_model.xml",
    "vae/config.json",
    "vae/diffusion_flax_model.msgpack",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "vae_1_0/config.json",
    "vae_1_0/diffusion_pytorch_model.fp16.safetensors",
    "vae_1_0/diffusion_pytorch_model.safetensors",
    "vae_decoder/config.json",
    "vae_decoder/model.onnx",
    "vae_encoder/config.json",
    "vae_encoder/model.onnx",
]
SDXL_COMPONENTS = ["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"]
CONFIGS = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "unet/config.json",
    "vae/config.json",
]


def test_an_sdxl_pipeline_repo_gives_its_components_in_one_precision() -> None:
    fp16 = wanted_files(SDXL_BASE, "fp16", SDXL_COMPONENTS)
    assert fp16 == sorted(
        CONFIGS
        + [
            "text_encoder/model.fp16.safetensors",
            "text_encoder_2/model.fp16.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ]
    )
    fp32 = wanted_files(SDXL_BASE, "fp32", SDXL_COMPONENTS)
    assert [f for f in fp32 if f.endswith(".safetensors")] == [
        "text_encoder/model.safetensors",
        "text_encoder_2/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    both = wanted_files(SDXL_BASE, "all", SDXL_COMPONENTS)
    assert len([f for f in both if f.endswith(".safetensors")]) == 8
    # never: the root's single-file checkpoints, a folder the pipeline does not name, exports, docs
    for kept in (fp16, fp32, both):
        assert not {
            "sd_xl_base_1.0.safetensors",
            "vae_1_0/config.json",
            "unet/model.onnx",
            "unet/openvino_model.bin",
            "unet/diffusion_flax_model.msgpack",
            "README.md",
            "01.png",
        } & set(kept)


def test_model_repos_keep_safetensors_over_bin_and_fall_back_to_the_precision_there_is() -> None:
    controlnet = [
        "config.json",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.safetensors",
        "README.md",
        "images/sample.png",
    ]
    assert wanted_files(controlnet, "fp16") == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    assert wanted_files(controlnet, "fp32") == ["config.json", "diffusion_pytorch_model.safetensors"]
    only_half = ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    assert wanted_files(only_half, "fp32") == only_half  # what there is, loaded upcast
    transformers_repo = [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "pytorch_model.bin",
        "tf_model.h5",
        "README.md",
    ]
    assert wanted_files(transformers_repo, "fp16") == ["config.json", "model.safetensors", "preprocessor_config.json"]
    sharded = [
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00003.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
    ]
    assert [f for f in wanted_files(sharded, "fp16") if f.endswith(".safetensors")] == sharded[1:3]
    legacy = ["RealESRGAN_x2.pth", "RealESRGAN_x4.pth", "RealESRGAN_x8.pth", "README.md"]
    assert (
        wanted_files(legacy, "fp16") == legacy[:3]
    )  # nothing says which: all of them (a node naming one file fetches that one)
    assert split_weights("ai-forever/Real-ESRGAN/RealESRGAN_x4.pth") == ("ai-forever/Real-ESRGAN", "RealESRGAN_x4.pth")


def test_a_pipeline_prepared_with_fp16_files_only_loads_on_the_cpu_in_fp32(tmp_path: Path) -> None:
    """What a GPU machine's `capgraph prepare` leaves (the .fp16 files) loads in a CPU
    replica too: `fp16_variant` asks for them where a folder has no others."""
    from diffusers import StableDiffusionXLPipeline

    source = tiny_model("sdxl", sdxl.tiny_base)
    half = tmp_path / "half"
    pipe = StableDiffusionXLPipeline.from_pretrained(source)
    pipe.save_pretrained(
        half, variant="fp16"
    )  # names only: the tiny weights stay fp32, as the hub's layout is what matters
    files = [str(p.relative_to(half)) for p in half.rglob("*") if p.is_file()]
    kept = wanted_files(files, "fp32", SDXL_COMPONENTS)
    assert kept and all(".fp16." in f for f in kept if f.endswith(".safetensors"))
    for f in set(files) - set(kept):
        (half / f).unlink()
    assert fp16_variant(str(half), torch.float32) == {"variant": "fp16"}
    loaded = StableDiffusionXLPipeline.from_pretrained(
        half, dtype=torch.float32, **fp16_variant(str(half), torch.float32)
    )
    assert loaded.unet.dtype == torch.float32
    full = tmp_path / "full"
    shutil.copytree(source, full)
    assert fp16_variant(str(full), torch.float32) == {} and fp16_variant(str(half), torch.float16) == {
        "variant": "fp16"
    }
