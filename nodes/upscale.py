"""4x super-resolution, two ways, chosen by `method`: `sd_x4`, the Stable Diffusion x4 upscaler
that Livepeer's `/upscale` runs (prompt-guided, diffusion cost), and `esrgan`, an
ESRGAN-family network through spandrel (one forward pass, the real-time path).
docs/models.md has weights, costs and the `model` param.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from capgraph.engine.node import Frame, Node, NodeParams, example_value
from capgraph.engine.types import PortType, port
from capgraph.engine.weights import WEIGHT_SUFFIXES, Weights, models_mode, split_weights
from capgraph.nodes.building import (
    TEXT_HIDDEN,
    TOKENS,
    Config,
    FullSize,
    clip_text,
    clip_tokenizer,
    tiny_clip_text,
    tiny_vae,
)
from capgraph.nodes.helpers import fp16_variant, module_bytes, no_progress_bars

WARMUP_SIDE = 32


# Weights: the default checkpoints, and the tiny and full-size random models built in their layouts.

X4_CONFIG: Config = {  # stabilityai/stable-diffusion-x4-upscaler
    "unet": dict(  # 473 M
        sample_size=128,
        in_channels=7,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=[256, 512, 512, 1024],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        attention_head_dim=8,
        cross_attention_dim=1024,
        use_linear_projection=True,
        only_cross_attention=[True, True, True, False],
        num_class_embeds=1000,
        norm_num_groups=32,
    ),
    "vae": dict(  # 55.3 M, upsamples by 4
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        block_out_channels=[128, 256, 512],
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.08333,
    ),
    "text_encoder": dict(  # OpenCLIP ViT-H/14 text, 23 layers: 340 M
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=23,
        projection_dim=512,
        max_position_embeddings=77,
        hidden_act="gelu",
        **TOKENS,
    ),
}
ESRGAN_CONFIG: Config = {"model": dict(num_filters=64, num_blocks=23, scale=4)}  # Real-ESRGAN x4plus: 16.7 M


def _save_x4(folder: Path, modules: dict[str, Any], config: Config | None = None) -> None:
    """The x4 upscaler pipeline in the layout of stabilityai/stable-diffusion-x4-upscaler: its
    two schedulers and noise levels, the tiny byte-level tokenizer."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline(
        **modules,
        tokenizer=clip_tokenizer(),
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
            clip_sample=False,
        ),
        max_noise_level=350,
    )
    pipe.save_pretrained(folder)


def _save_pth(folder: Path, modules: dict[str, Any], config: Config | None = None) -> None:
    """An ESRGAN as a plain `.pth` state dict, which spandrel recognises as it does Real-ESRGAN's files."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in modules["model"].state_dict().items()}, folder / "model.pth")


def tiny_x4(folder: Path) -> None:
    """A tiny x4 upscaler: the UNet sees the noisy latents next to the low-res image (4 + 3 =
    7 channels) and the noise level as a class label; the VAE upsamples by 4."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=1000,  # must exceed the pipeline's max_noise_level (350)
        norm_num_groups=16,
    ).eval()
    _save_x4(
        folder,
        {
            "unet": unet,
            "vae": tiny_vae((32, 32, 64), scaling_factor=0.08333, seed=1),
            "text_encoder": tiny_clip_text(seed=2),
        },
    )


def tiny_esrgan(folder: Path) -> None:
    """A tiny ESRGAN x4 (8 filters, 1 RRDB block, 226 k params)."""
    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    _save_pth(folder, {"model": ESRGAN(num_filters=8, num_blocks=1, scale=4)})


def x4_modules(config: Config) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return {
        "unet": UNet2DConditionModel(**config["unet"]).eval(),
        "vae": AutoencoderKL(**config["vae"]).eval(),
        "text_encoder": clip_text(config["text_encoder"]),
    }


def esrgan_modules(config: Config) -> dict[str, Any]:
    from spandrel.architectures.ESRGAN import ESRGAN

    return {"model": ESRGAN(**config["model"]).eval()}


WEIGHTS = {
    "sd_x4": Weights(
        "sd-x4-upscaler",
        "stabilityai/stable-diffusion-x4-upscaler",
        tiny_x4,
        FullSize(X4_CONFIG, x4_modules, _save_x4, diffusers=True),
    ),
    "esrgan": Weights(
        "esrgan-x4",
        "ai-forever/Real-ESRGAN/RealESRGAN_x4.pth",
        tiny_esrgan,
        FullSize(ESRGAN_CONFIG, esrgan_modules, _save_pth),
    ),
}
"""The weights of each method, whose default is the model when `model` is unset."""


class UpscaleParams(NodeParams):
    method: Literal["sd_x4", "esrgan"] = Field(
        "esrgan", description="sd_x4: diffusion upscaler (prompted, slow); esrgan: one forward pass (fast)"
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description=(
            "sd_x4: id or folder of the pipeline; esrgan: weights file (path or owner/repo/file.pth); "
            "unset = the method's default"
        ),
    )
    prompt: str = Field(
        "", max_length=2000, description="sd_x4: what the image shows; a wired `prompt` port overrides it"
    )
    negative_prompt: str = Field("", max_length=2000, description="sd_x4: what to steer away from")
    steps: int = Field(20, ge=1, le=100, description="sd_x4: denoising steps")
    guidance: float = Field(
        9.0, ge=0.0, le=30.0, description="sd_x4: classifier-free guidance scale; 1 or less turns it off"
    )
    noise_level: int = Field(
        20, ge=0, le=350, description="sd_x4: noise added to the low-res image; more = more invented detail"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="sd_x4: noise seed, per frame")

    @property
    def model_id(self) -> str:
        return self.model or WEIGHTS[self.method].default  # type: ignore[return-value]  # both methods have one


class Upscale(Node):
    """4x upscale of a frame: the Stable Diffusion x4 upscaler (prompted) or an ESRGAN network through \
spandrel (fast)."""

    type = "upscale"
    category = "generation"
    Params = UpscaleParams
    inputs = {
        "image": port(PortType.IMAGE, doc="frame to upscale"),
        "prompt": port(PortType.TEXT, doc="sd_x4: prompt for this frame, overriding params.prompt", optional=True),
    }
    outputs = {"image": port(PortType.IMAGE, doc="the frame, 4x wider and taller")}
    request_params = frozenset({"prompt", "negative_prompt", "steps", "guidance", "noise_level", "seed"})
    uses_gpu = True
    max_batch = 4
    weights = WEIGHTS  # by method, not by param: `model` holds the id of whichever method runs
    cost_ms = 35.0

    def models(self) -> list[str]:
        return [self.params.model_id]  # owner/repo/file.pth for ESRGAN: `capgraph prepare` fetches that file alone

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        import torch

        torch_dtype = getattr(torch, dtype)
        if self.params.method == "sd_x4":
            from diffusers import StableDiffusionUpscalePipeline

            no_progress_bars(diffusers=True)
            path = self.resolve_weights("sd_x4", self.params.model_id)
            pipe = StableDiffusionUpscalePipeline.from_pretrained(
                path, dtype=torch_dtype, **fp16_variant(path, torch_dtype)
            )
            self.pipe = pipe.to(device)
            self.pipe.set_progress_bar_config(disable=True)
            self.weight_bytes = module_bytes(pipe.unet, pipe.vae, pipe.text_encoder)
        else:
            from spandrel import ImageModelDescriptor, ModelLoader

            file = self._weights_file()
            descriptor = ModelLoader().load_from_file(file)
            if not isinstance(descriptor, ImageModelDescriptor):
                raise ValueError(
                    f"node '{self.node_id}': {file} holds a {descriptor.architecture.name} model, "
                    "not an image-to-image network"
                )
            if torch_dtype == torch.float16 and not descriptor.supports_half:
                torch_dtype = torch.float32  # some architectures overflow in fp16; spandrel knows which
            self.net = descriptor.to(device).to(torch_dtype).eval()
            self.weight_bytes = module_bytes(descriptor.model)

    def _weights_file(self) -> Path:
        """The ESRGAN weights file: a local file, a file in a (cached) hub repo, or the tiny or random one."""
        model = self.params.model_id
        repo, filename = split_weights(model)
        if not models_mode() and filename is None and not Path(repo).expanduser().exists():
            raise FileNotFoundError(
                f"node '{self.node_id}': weights file '{model}' does not exist; "
                "give a local path or owner/repo/file.pth"
            )
        found = Path(self.resolve_weights("esrgan", repo))
        if found.is_file():
            return found
        if filename and (found / filename).is_file():
            return found / filename
        candidates = sorted(p for p in found.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(candidates) == 1:  # a folder with one weights file, e.g. the tiny model's
            return candidates[0]
        raise FileNotFoundError(
            f"node '{self.node_id}': no weights file '{filename or '*.pth'}' in {found} "
            f"(found {[p.name for p in candidates]})"
        )

    def example_inputs(self) -> Frame:
        return {"image": example_value(PortType.IMAGE, WARMUP_SIDE)}

    def warmup(self) -> None:
        """One 32 px frame (one step for sd_x4): kernels and lazy imports load, cold start stays short."""
        self.run_batch([self.example_inputs()], [self.params.model_copy(update={"steps": 1})])

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[UpscaleParams]) -> list[Frame]:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (frame, p) in enumerate(zip(inputs, params)):
            shape = frame["image"].shape
            key = shape if self.params.method == "esrgan" else (shape, p.steps, p.guidance, p.noise_level)
            groups.setdefault(key, []).append(i)
        out: list[Frame] = [{} for _ in inputs]
        for members in groups.values():
            frames, group_params = [inputs[i] for i in members], [params[i] for i in members]
            run = self._esrgan if self.params.method == "esrgan" else self._sd_x4
            for i, image in zip(members, run(frames, group_params)):
                out[i] = {"image": image}
        return out

    def _esrgan(self, frames: list[Frame], params: list[UpscaleParams]) -> list[np.ndarray]:
        import torch

        batch = torch.from_numpy(np.stack([f["image"] for f in frames])).permute(0, 3, 1, 2)
        batch = batch.to(self.net.device, self.net.dtype) / 255.0
        with torch.inference_mode():
            result = self.net(batch).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
        return list(result.permute(0, 2, 3, 1).cpu().numpy())

    def _sd_x4(self, frames: list[Frame], params: list[UpscaleParams]) -> list[np.ndarray]:
        import torch
        from PIL import Image

        p = params[0]
        with torch.inference_mode():
            images = self.pipe(
                prompt=[f.get("prompt", q.prompt) for f, q in zip(frames, params)],
                negative_prompt=[q.negative_prompt for q in params],
                image=[Image.fromarray(f["image"]) for f in frames],
                num_inference_steps=p.steps,
                guidance_scale=p.guidance,
                noise_level=p.noise_level,
                generator=[torch.Generator("cpu").manual_seed(q.seed) for q in params],  # per frame, device-independent
                output_type="np",
            ).images
        return [(np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8) for image in images]
