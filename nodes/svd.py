"""Image to video with Stable Video Diffusion (diffusers' StableVideoDiffusionPipeline): a
frame in, a clip of 14 to 25 frames out, the pipeline behind Livepeer's /image-to-video.

Weights: stabilityai/stable-video-diffusion-img2vid-xt by default (UNet 1.52 B, VAE with a
temporal decoder 98 M, CLIP ViT-H/14 image encoder 632 M: 4.2 GiB in fp16). A 25-frame clip
at 1024 x 576 takes tens of seconds to minutes on one GPU: graphs give it a long
`request_timeout_s`. docs/models.md has the params, weights and costs.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams, example_value
from capgraph.engine.types import PortType, port
from capgraph.engine.video import Video
from capgraph.engine.weights import Weights
from capgraph.nodes.building import Config, FullSize
from capgraph.nodes.helpers import fp16_variant, module_bytes, no_progress_bars, to_multiple

# Weights: the default checkpoint, and the tiny and full-size random models built in its layout.

SCHEDULER: dict[str, Any] = dict(  # the checkpoint's scheduler_config.json
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    sigma_max=700.0,
    sigma_min=0.002,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_type="continuous",
    use_karras_sigmas=True,
)
SVD_CONFIG: Config = {  # stabilityai/stable-video-diffusion-img2vid-xt
    "unet": dict(  # 1.52 B
        sample_size=96,
        in_channels=8,
        out_channels=4,
        down_block_types=[
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ],
        up_block_types=[
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ],
        block_out_channels=[320, 640, 1280, 1280],
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=768,
        layers_per_block=2,
        cross_attention_dim=1024,
        transformer_layers_per_block=1,
        num_attention_heads=[5, 10, 20, 20],
        num_frames=25,
    ),
    "vae": dict(  # AutoencoderKLTemporalDecoder: 97.7 M
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
        scaling_factor=0.18215,
        force_upcast=True,
    ),
    "image_encoder": dict(  # CLIP ViT-H/14 vision tower and projection: 632 M
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        num_channels=3,
        image_size=224,
        patch_size=14,
        projection_dim=1024,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    ),
    "feature_extractor": dict(size=224, crop_size=224),
}
TINY_CONFIG: Config = {
    "unet": dict(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
        up_block_types=["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        block_out_channels=[32, 64],
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,  # 3 added time ids x 8
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=[2, 4],
        num_frames=25,
    ),
    "vae": dict(  # downsamples by 8, as the real one does: tiny clips at real frame sizes stay cheap
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        block_out_channels=[32, 32, 32, 32],  # its GroupNorms have 32 groups
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
    ),
    "image_encoder": dict(  # the pipeline resizes to 224 for CLIP whatever the config: 7 x 7 patches of 32
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_channels=3,
        image_size=224,
        patch_size=32,
        projection_dim=32,
        hidden_act="gelu",
    ),
    "feature_extractor": dict(size=224, crop_size=224),
}


def svd_modules(config: Config) -> dict[str, Any]:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return {
        "unet": UNetSpatioTemporalConditionModel(**config["unet"]).eval(),
        "vae": AutoencoderKLTemporalDecoder(**config["vae"]).eval(),
        "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image_encoder"])).eval(),
    }


def _save_svd(folder: Path, modules: dict[str, Any], config: Config) -> None:
    """The pipeline in the layout of stabilityai/stable-video-diffusion-img2vid-xt: its Euler
    scheduler and CLIP image processor beside the three models."""
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    pipe = StableVideoDiffusionPipeline(
        **modules,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
        feature_extractor=CLIPImageProcessor(**config["feature_extractor"]),
    )
    pipe.save_pretrained(folder)


def tiny_svd(folder: Path) -> None:
    """A tiny SVD (1.3 M UNet parameters): a 2-level spatio-temporal UNet, a temporal-decoder
    VAE that downsamples by 8, a 2-layer CLIP vision tower."""
    import torch

    torch.manual_seed(0)
    _save_svd(folder, svd_modules(TINY_CONFIG), TINY_CONFIG)


WEIGHTS = Weights(
    "svd-xt",
    "stabilityai/stable-video-diffusion-img2vid-xt",
    tiny_svd,
    FullSize(SVD_CONFIG, svd_modules, _save_svd, diffusers=True),
)

MAX_CLIP_FRAMES = 50
"""Most frames one clip may ask for (SVD-XT was trained on 25, SVD on 14)."""
Side = Annotated[int, Field(ge=64, le=2048, multiple_of=8)]
WARMUP_SIDE = 64


class SvdParams(NodeParams):
    model: str = Field(
        WEIGHTS.default,
        min_length=1,
        max_length=512,
        description="Hugging Face id or local folder of a Stable Video Diffusion checkpoint (diffusers layout)",
    )
    frames: int = Field(25, ge=2, le=MAX_CLIP_FRAMES, description="frames in the clip (num_frames)")
    fps: int = Field(6, ge=1, le=60, description="frame rate the clip is conditioned on and plays at")
    motion_bucket_id: int = Field(127, ge=0, le=1023, description="how much motion: higher moves more")
    noise_aug_strength: float = Field(
        0.02, ge=0.0, le=1.0, description="noise added to the conditioning frame: more = less like it, more motion"
    )
    steps: int = Field(25, ge=1, le=100, description="denoising steps")
    min_guidance: float = Field(1.0, ge=0.0, le=20.0, description="guidance at the first frame")
    max_guidance: float = Field(3.0, ge=0.0, le=20.0, description="guidance at the last frame")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="noise seed; same seed and params give the same clip")
    decode_chunk_size: int = Field(
        4, ge=1, le=MAX_CLIP_FRAMES, description="frames the VAE decodes at once: fewer = less memory, slower"
    )
    width: Side | None = Field(None, description="clip width (multiple of 8); unset = the image's, rounded down")
    height: Side | None = Field(None, description="clip height (multiple of 8); unset = the image's, rounded down")


class Svd(Node):
    """Image to video: Stable Video Diffusion animates a frame into a clip (frames, fps, motion)."""

    type = "svd"
    category = "generation"
    Params = SvdParams
    inputs = {"image": port(PortType.IMAGE, doc="the first frame to animate")}
    outputs = {"video": port(PortType.VIDEO, doc="the clip, starting from the image")}
    request_params = frozenset(
        {
            "frames",
            "fps",
            "motion_bucket_id",
            "noise_aug_strength",
            "steps",
            "min_guidance",
            "max_guidance",
            "seed",
            "decode_chunk_size",
            "width",
            "height",
        }
    )
    uses_gpu = True
    max_batch = 1
    """One clip per call: a clip is already a batch of frames for the UNet."""
    weights = {"model": WEIGHTS}
    cost_ms = 2000.0
    request_timeout_s = 900.0
    """A 25-frame clip at 1024 x 576 takes about a minute on one H100-class GPU, several on smaller ones."""

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        import torch
        from diffusers import StableVideoDiffusionPipeline

        no_progress_bars(diffusers=True)
        torch_dtype = getattr(torch, dtype)
        path = self.resolve_weights("model")
        pipe = StableVideoDiffusionPipeline.from_pretrained(path, dtype=torch_dtype, **fp16_variant(path, torch_dtype))
        self.pipe = pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.weight_bytes = module_bytes(pipe.unet, pipe.vae, pipe.image_encoder)

    def example_inputs(self) -> Frame:
        return {"image": example_value(PortType.IMAGE, WARMUP_SIDE)}

    def warmup(self) -> None:
        """A 2-frame, 1-step clip at 64 x 64: kernels and lazy imports load, cold start stays short."""
        small = self.params.model_copy(
            update={"frames": 2, "steps": 1, "width": WARMUP_SIDE, "height": WARMUP_SIDE, "decode_chunk_size": 2}
        )
        self.run_batch([self.example_inputs()], [small])

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[SvdParams]) -> list[Frame]:
        return [{"video": self._clip(frame["image"], p)} for frame, p in zip(inputs, params)]

    def _clip(self, image: np.ndarray, p: SvdParams) -> Video:
        import torch
        from PIL import Image

        width = p.width or to_multiple(image.shape[1], 8)
        height = p.height or to_multiple(image.shape[0], 8)

        def step_done(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            self.progress = (step + 1, p.steps)  # the decode after the last step is not counted
            return tensors

        self.progress = (0, p.steps)
        with torch.inference_mode():
            frames = self.pipe(
                Image.fromarray(image),
                height=height,
                width=width,
                num_frames=p.frames,
                num_inference_steps=p.steps,
                min_guidance_scale=p.min_guidance,
                max_guidance_scale=p.max_guidance,
                fps=p.fps,
                motion_bucket_id=p.motion_bucket_id,
                noise_aug_strength=p.noise_aug_strength,
                decode_chunk_size=p.decode_chunk_size,
                generator=torch.Generator("cpu").manual_seed(p.seed),  # device-independent
                output_type="np",
                callback_on_step_end=step_done,
            ).frames[0]
        self.progress = None
        return Video((np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), float(p.fps))
