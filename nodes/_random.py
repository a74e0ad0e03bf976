"""Full-size models with random weights, for `CAPGRAPH_MODELS=random`: measure latency and
VRAM of a served graph on a GPU machine that has no hub access.

Each model key of the tiny builders (`depth-anything`, `segformer`, `sam2`, `sdxl`,
`sdxl-vae`, `sdxl-controlnet`, `sd-x4-upscaler`, `esrgan-x4`) has here the architecture of
the family's default checkpoint at its real size, typed in by hand from the `config.json`
files of the Hugging Face repos named beside the configs below (tests/nodes/test_random.py
checks the parameter counts against the published ones). A builder writes the same files
as the tiny builder of its key (same classes, same `save_pretrained` layout) with fp16
weights, so the node loads it through the same `from_pretrained` path as the real
checkpoint. Tokenizers stay the tiny byte-level CLIP one (the real vocabulary cannot be
fetched); the text encoders keep the real 49 408-token embedding, so their size and cost
are the real ones.

Weights are random: images are noise and masks meaningless; timings and memory are real.
Models are built directly on the GPU (else the CPU) in fp16, so SDXL's 2.6 B-parameter
UNet never exists as an fp32 copy. On disk (fp16): SDXL 6.9 GB, its ControlNet 2.5 GB, the
x4 upscaler 1.7 GB, the vision models 0.5 GB.

Each key is data (`CONFIGS[key]`, sections of hyperparameters) plus two functions: one
builds the torch modules from a config (on whatever device is current, `meta` in tests),
one writes them with their tokenizers, processors and schedulers. Builders take an
optional config so tests write deliberately shrunk variants through the same code.
Families name these builders in their `Weights` entries (`nodes.weights`);
`nodes.weights.write_random_models` writes them ahead of time.
"""

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from capgraph.nodes import _tiny_sd, _tiny_vision
from capgraph.nodes.helpers import no_progress_bars

Config = dict[str, dict[str, Any]]
"""Hyperparameters by section: a model's constructor kwargs, or a processor's settings."""

ADE20K_LABELS = _tiny_vision.ADE_LABELS + (
    "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
"""ADE20K's 150 classes, ids as in `nvidia/segformer-b0-finetuned-ade-512-512`."""

TOKENS = {"bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513}
"""Special-token ids of the tiny CLIP tokenizer: the text encoders pool at its end token."""

# Published configs (the hub repos' config.json files, defaults left out).

DEPTH_ANYTHING: Config = {  # depth-anything/Depth-Anything-V2-Small-hf: 24.8 M
    "backbone": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14, image_size=518,
        layerscale_value=1.0, out_indices=[3, 6, 9, 12], reshape_hidden_states=False,
    ),
    "model": dict(
        patch_size=14, reassemble_hidden_size=384, reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64, head_in_index=-1, head_hidden_size=32, depth_estimation_type="relative",
    ),
}

SEGFORMER: Config = {  # nvidia/segformer-b0-finetuned-ade-512-512: 3.75 M
    "model": dict(
        hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
        mlp_ratios=[4, 4, 4, 4], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], decoder_hidden_size=256,
    ),
}

SAM2: Config = {  # facebook/sam2-hiera-large: 216.9 M in the image model, plus the video memory modules
    "backbone": dict(
        hidden_size=144, num_attention_heads=2, image_size=[1024, 1024], blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=[144, 288, 576, 1152], num_attention_heads_per_stage=[2, 4, 8, 16],
        window_size_per_stage=[8, 4, 16, 8], global_attention_blocks=[23, 33, 43],
        window_positional_embedding_background_size=[7, 7],
    ),
    "vision": dict(
        backbone_channel_list=[1152, 576, 288, 144], backbone_feature_sizes=[[256, 256], [128, 128], [64, 64]],
        fpn_hidden_size=256,
    ),
    "model": dict(image_size=1024),  # prompt encoder, mask decoder and memory modules: the library's defaults are SAM 2's
}

CLIP_L: dict[str, Any] = dict(  # SDXL's text_encoder (OpenAI CLIP ViT-L/14 text): 123 M
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    projection_dim=768, max_position_embeddings=77, hidden_act="quick_gelu", **TOKENS,
)
SDXL_UNET: dict[str, Any] = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet: 2.567 B
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
SDXL_VAE: dict[str, Any] = dict(  # the SDXL VAE: 83.65 M
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
    sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)

SDXL: Config = {
    "unet": SDXL_UNET,
    "vae": SDXL_VAE,
    "text_encoder": CLIP_L,
    "text_encoder_2": dict(  # OpenCLIP ViT-bigG/14 text with projection: 695 M
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
        projection_dim=1280, max_position_embeddings=77, hidden_act="gelu", **TOKENS,
    ),
}

SDXL_VAE_ONLY: Config = {"vae": {**SDXL_VAE, "force_upcast": False}}  # madebyollin/sdxl-vae-fp16-fix

SDXL_CONTROLNET: Config = {  # diffusers/controlnet-{depth,canny}-sdxl-1.0: 1.25 B
    "controlnet": dict(
        {k: v for k, v in SDXL_UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")},
        conditioning_channels=3, conditioning_embedding_out_channels=[16, 32, 96, 256],
    ),
}

X4_UPSCALER: Config = {  # stabilityai/stable-diffusion-x4-upscaler
    "unet": dict(  # 473 M
        sample_size=128, in_channels=7, out_channels=4, layers_per_block=2, block_out_channels=[256, 512, 512, 1024],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        attention_head_dim=8, cross_attention_dim=1024, use_linear_projection=True,
        only_cross_attention=[True, True, True, False], num_class_embeds=1000, norm_num_groups=32,
    ),
    "vae": dict(  # 55.3 M, upsamples by 4
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=[128, 256, 512],
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, norm_num_groups=32,
        sample_size=256, scaling_factor=0.08333,
    ),
    "text_encoder": dict(  # OpenCLIP ViT-H/14 text, 23 layers: 340 M
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
        projection_dim=512, max_position_embeddings=77, hidden_act="gelu", **TOKENS,
    ),
}

ESRGAN: Config = {"model": dict(num_filters=64, num_blocks=23, scale=4)}  # Real-ESRGAN x4plus: 16.7 M

CONFIGS: dict[str, Config] = {
    "depth-anything": DEPTH_ANYTHING,
    "segformer": SEGFORMER,
    "sam2": SAM2,
    "sdxl": SDXL,
    "sdxl-vae": SDXL_VAE_ONLY,
    "sdxl-controlnet": SDXL_CONTROLNET,
    "sd-x4-upscaler": X4_UPSCALER,
    "esrgan-x4": ESRGAN,
}


def build_device() -> str:
    """Where random models are built: the GPU when there is one (seconds for billions of
    parameters), else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _building(device: str | None = None) -> Iterator[None]:
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


def _config(key: str, config: Config | None) -> Config:
    return copy.deepcopy(CONFIGS[key] if config is None else config)


# Modules from a config, on the current device (what the tests count on `meta`).

def depth_anything_models(config: Config) -> dict[str, Any]:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = dict(config["backbone"])
    backbone["out_features"] = [f"stage{i}" for i in backbone.pop("out_indices")]
    model_config = DepthAnythingConfig(backbone_config=Dinov2Config(**backbone), **config["model"])
    return {"model": DepthAnythingForDepthEstimation(model_config).eval()}


def segformer_models(config: Config) -> dict[str, Any]:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    labels = dict(enumerate(ADE20K_LABELS))
    model_config = SegformerConfig(**config["model"], id2label=labels, label2id={v: k for k, v in labels.items()})
    return {"model": SegformerForSemanticSegmentation(model_config).eval()}


def sam2_video_config(config: Config) -> Any:
    """The `sam2_video` config the default repo ships: the image model plus memory modules."""
    from transformers import Sam2VideoConfig

    backbone = dict(model_type="sam2_hiera_det_model", **config["backbone"])
    vision = dict(model_type="sam2_vision_model", backbone_config=backbone, **config["vision"])
    size = config["model"]["image_size"]
    return Sam2VideoConfig(
        vision_config=vision, prompt_encoder_config=dict(image_size=size),
        memory_attention_rope_feat_sizes=[size // 16] * 2, **config["model"],
    )


def sam2_models(config: Config) -> dict[str, Any]:
    from transformers import Sam2VideoModel

    return {"model": Sam2VideoModel(sam2_video_config(config)).eval()}


def sam2_image_models(config: Config) -> dict[str, Any]:
    """The image model (`Sam2Model`) the sam2 node loads out of the video checkpoint."""
    from transformers import Sam2Config, Sam2Model

    video = sam2_video_config(config)
    parts = ("vision_config", "prompt_encoder_config", "mask_decoder_config")
    return {"model": Sam2Model(Sam2Config(**{name: getattr(video, name).to_dict() for name in parts})).eval()}


def _clip_text(config: dict[str, Any], *, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**config)).eval()


def sdxl_models(config: Config) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return {
        "unet": UNet2DConditionModel(**config["unet"]).eval(),
        "vae": AutoencoderKL(**config["vae"]).eval(),
        "text_encoder": _clip_text(config["text_encoder"]),
        "text_encoder_2": _clip_text(config["text_encoder_2"], projection=True),
    }


def sdxl_vae_models(config: Config) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    return {"vae": AutoencoderKL(**config["vae"]).eval()}


def sdxl_controlnet_models(config: Config) -> dict[str, Any]:
    """A full ControlNet whose zero-initialised output convolutions get small random
    weights, as the tiny one's do: a trained ControlNet's are not zero either."""
    import torch
    from diffusers import ControlNetModel

    net = ControlNetModel(**config["controlnet"]).eval()
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            if conv.weight.device.type != "meta":
                conv.weight.normal_(0.0, 0.05)
    return {"controlnet": net}


def x4_upscaler_models(config: Config) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return {
        "unet": UNet2DConditionModel(**config["unet"]).eval(),
        "vae": AutoencoderKL(**config["vae"]).eval(),
        "text_encoder": _clip_text(config["text_encoder"]),
    }


def esrgan_models(config: Config) -> dict[str, Any]:
    from spandrel.architectures.ESRGAN import ESRGAN as Network

    return {"model": Network(**config["model"]).eval()}


MODELS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "depth-anything": depth_anything_models,
    "segformer": segformer_models,
    "sam2": sam2_models,
    "sdxl": sdxl_models,
    "sdxl-vae": sdxl_vae_models,
    "sdxl-controlnet": sdxl_controlnet_models,
    "sd-x4-upscaler": x4_upscaler_models,
    "esrgan-x4": esrgan_models,
}
"""The module builder of each key (the published parameter counts are checked on these)."""


# Writers: `build(folder, config=None)`, the files the tiny builder of the same key writes.

def _modules(key: str, config: Config | None, device: str | None) -> dict[str, Any]:
    no_progress_bars(diffusers=key not in ("depth-anything", "segformer", "sam2", "esrgan-x4"))
    with _building(device):
        return MODELS[key](_config(key, config))


def depth_anything(folder: Path, config: Config | None = None, device: str | None = None) -> None:
    """Depth Anything V2 Small, processor as in its -hf repo (518 px, aspect kept, multiple of 14)."""
    from transformers import DPTImageProcessor

    _modules("depth-anything", config, device)["model"].save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3, do_pad=False,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def segformer(folder: Path, config: Config | None = None, device: str | None = None) -> None:
    """SegFormer-b0 with ADE20K's 150 class names, processor at 512 px."""
    from transformers import SegformerImageProcessor

    _modules("segformer", config, device)["model"].save_pretrained(folder)
    SegformerImageProcessor(size={"height": 512, "width": 512}, do_reduce_labels=True).save_pretrained(folder)


def sam2(folder: Path, config: Config | None = None, device: str | None = None) -> None:
    """SAM 2 hiera-large as `facebook/sam2-hiera-large` ships it: a `sam2_video` checkpoint
    and a `Sam2VideoProcessor` at the model's input size."""
    from transformers import Sam2ImageProcessor, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    config = _config("sam2", config)
    _modules("sam2", config, device)["model"].save_pretrained(folder)
    size = config["model"]["image_size"]
    Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size={"height": size, "width": size}, mask_size={"height": size // 4, "width": size // 4}),
        video_processor=Sam2VideoVideoProcessor(size={"height": size, "width": size}),
        target_size=size,
    ).save_pretrained(folder)


def sdxl(folder: Path, config: Config | None = None, device: str | None = None) -> None:
    """The SDXL base pipeline in the layout of stabilityai/stable-diffusion-xl-base-1.0."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    parts = _modules("sdxl", config, device)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        **parts, tokenizer=_tiny_sd.clip_tokenizer(), tokenizer_2=_tiny_sd.clip_tokenizer(), scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)


def sdxl_vae(folder: Path, config: Config | None = None, device: str | None = None) -> None:
    """An SDXL VAE on its own, the layout of madebyollin/sdxl-vae-fp16-fix."""
    _modules("sdxl-vae", config, device)["vae"].save_pretrained(folder)


def sdxl_controlnet(folder: Path, config: Config | None = None, device: str | None = None) -> None:
    """A full-size SDXL ControlNet, the layout of diffusers/controlnet-depth-sdxl-1.0."""
    _modules("sdxl-controlnet", config, device)["controlnet"].save_pretrained(folder)


def x4_upscaler(folder: Path, config: Config | None = None, device: str | None = None) -> None:
    """The Stable Diffusion x4 upscaler pipeline in the layout of stabilityai/stable-diffusion-x4-upscaler."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline(
        **_modules("sd-x4-upscaler", config, device),
        tokenizer=_tiny_sd.clip_tokenizer(),
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
            set_alpha_to_one=False, steps_offset=1, clip_sample=False,
        ),
        max_noise_level=350,
    )
    pipe.save_pretrained(folder)


def esrgan_x4(folder: Path, config: Config | None = None, device: str | None = None) -> None:
    """Real-ESRGAN x4plus's architecture (23 RRDB blocks) as a plain fp16 `.pth` state dict,
    which spandrel recognises as it does the real file."""
    import torch

    net = _modules("esrgan-x4", config, device)["model"]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, folder / "model.pth")

