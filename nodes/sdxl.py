"""SDXL generation with diffusers: text-to-image, img2img, inpainting and ControlNet, one family.

The mode follows from the wired ports (and each frame's params), over one base pipeline
shared by every node of the process that loads the same model, so UNet, VAE and text
encoders load once. docs/models.md has the modes, batching, weights and VRAM.
"""

import hashlib
import logging
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from capgraph.engine.errors import InputError
from capgraph.engine.node import Frame, Node, NodeParams, example_value
from capgraph.engine.types import PortType, port
from capgraph.engine.weights import Weights, model_dir, models_mode, resolve, tiny_model
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
from capgraph.nodes.helpers import fp16_variant, module_bytes, no_progress_bars, resize, to_multiple

# Weights: the default checkpoints, and the tiny and full-size random models built in their layouts.

CLIP_L: dict[str, Any] = dict(  # the base's text_encoder (OpenAI CLIP ViT-L/14 text): 123 M
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    projection_dim=768,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    **TOKENS,
)
UNET: dict[str, Any] = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet: 2.567 B
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
VAE_CONFIG: dict[str, Any] = dict(  # the SDXL VAE: 83.65 M
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
BASE_CONFIG: Config = {
    "unet": UNET,
    "vae": VAE_CONFIG,
    "text_encoder": CLIP_L,
    "text_encoder_2": dict(  # OpenCLIP ViT-bigG/14 text with projection: 695 M
        vocab_size=49408,
        hidden_size=1280,
        intermediate_size=5120,
        num_attention_heads=20,
        num_hidden_layers=32,
        projection_dim=1280,
        max_position_embeddings=77,
        hidden_act="gelu",
        **TOKENS,
    ),
}
VAE_ONLY_CONFIG: Config = {"vae": {**VAE_CONFIG, "force_upcast": False}}  # madebyollin/sdxl-vae-fp16-fix
CONTROLNET_CONFIG: Config = {  # diffusers/controlnet-{depth,canny}-sdxl-1.0: 1.25 B
    "controlnet": dict(
        {k: v for k, v in UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")},
        conditioning_channels=3,
        conditioning_embedding_out_channels=[16, 32, 96, 256],
    ),
}


def _save_base(folder: Path, modules: dict[str, Any], config: Config | None = None) -> None:
    """The base pipeline in the layout of stabilityai/stable-diffusion-xl-base-1.0
    (tokenizers: the tiny byte-level one)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        **modules, tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), scheduler=scheduler, add_watermarker=False
    )
    pipe.save_pretrained(folder)


def _steering(net: Any) -> Any:
    """A fresh ControlNet's output convolutions are zero, so it would not steer at all and a
    test could not tell a wired control image from none (nor is a trained one's zero): small random weights."""
    import torch

    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            if conv.weight.device.type != "meta":
                conv.weight.normal_(0.0, 0.05)
    return net


def _save_single(folder: Path, modules: dict[str, Any], config: Config | None = None) -> None:
    """A VAE or a ControlNet on its own, the layout of its own repo."""
    (module,) = modules.values()
    module.save_pretrained(folder)


def tiny_unet() -> Any:
    """The tiny SDXL UNet: text_time added embedding, two text encoders' widths for cross-attention."""
    import torch
    from diffusers import UNet2DConditionModel

    time_dim = 8
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * time_dim + TEXT_HIDDEN,  # 6 size/crop ids + pooled text
        cross_attention_dim=2 * TEXT_HIDDEN,  # both text encoders' hidden states, concatenated
        norm_num_groups=16,
    ).eval()


def tiny_base(folder: Path) -> None:
    """A tiny base pipeline: two 2-layer text encoders, a 2-block UNet, an 8x VAE, Euler."""
    _save_base(
        folder,
        {
            "vae": tiny_vae(),
            "text_encoder": tiny_clip_text(seed=1),
            "text_encoder_2": tiny_clip_text(projection=True, seed=2),
            "unet": tiny_unet(),
        },
    )


def tiny_vae_only(folder: Path) -> None:
    """A tiny SDXL VAE on its own, the layout of a replacement VAE repo such as madebyollin/sdxl-vae-fp16-fix."""
    tiny_vae().save_pretrained(folder)


def tiny_controlnet(folder: Path) -> None:
    """A ControlNet copied from the tiny UNet, as diffusers/controlnet-*-sdxl-1.0 are; its
    conditioning embedding downsamples by the tiny VAE's factor of 8."""
    import torch
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(tiny_unet(), conditioning_embedding_out_channels=(16, 16, 32, 32))
    torch.manual_seed(3)
    _steering(net).save_pretrained(folder)


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections a LoRA adapts (those of every SDXL LoRA trained with diffusers' scripts)."""


def tiny_lora(folder: Path, seed: int = 4) -> None:
    """A tiny LoRA for the tiny UNet, in the diffusers LoRA format (`pytorch_lora_weights.safetensors`):
    peft's LoraConfig on the attention projections, B random (seeded) so that it changes the image."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_unet()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(LORA_TARGETS)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: the adapter would change nothing
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))


def tiny_lora_for(model: str) -> tuple[str, Any]:
    """The tiny LoRA an adapter id stands for in tiny mode: (key, builder). Each id gets its
    own seed, so two adapters give two images, as real ones would."""
    seed = int(hashlib.sha256(model.encode()).hexdigest()[:8], 16)
    return f"{LORA.key}-{seed:08x}", partial(tiny_lora, seed=seed)


def base_modules(config: Config) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return {
        "unet": UNet2DConditionModel(**config["unet"]).eval(),
        "vae": AutoencoderKL(**config["vae"]).eval(),
        "text_encoder": clip_text(config["text_encoder"]),
        "text_encoder_2": clip_text(config["text_encoder_2"], projection=True),
    }


def vae_modules(config: Config) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    return {"vae": AutoencoderKL(**config["vae"]).eval()}


def controlnet_modules(config: Config) -> dict[str, Any]:
    """A full ControlNet whose output convolutions get small random weights, as the tiny one's do."""
    from diffusers import ControlNetModel

    return {"controlnet": _steering(ControlNetModel(**config["controlnet"]).eval())}


BASE = Weights(
    "sdxl",
    "stabilityai/stable-diffusion-xl-base-1.0",
    tiny_base,
    FullSize(BASE_CONFIG, base_modules, _save_base, diffusers=True),
)
VAE = Weights("sdxl-vae", None, tiny_vae_only, FullSize(VAE_ONLY_CONFIG, vae_modules, _save_single, diffusers=True))
CONTROLNET = Weights(
    "sdxl-controlnet",
    None,
    tiny_controlnet,
    FullSize(CONTROLNET_CONFIG, controlnet_modules, _save_single, diffusers=True),
)
LORA = Weights("sdxl-lora", None, tiny_lora)
"""LoRA adapters (`allowed_loras`); in tiny mode each id resolves to its own tiny adapter (`tiny_lora_for`)."""

CONTROL_PORTS = ("control_image", "control_image_2", "control_image_3")
DEFAULT_SIDE = 1024
"""Text-to-image size when neither params nor a wired image give one: SDXL's native size."""
MAX_SIDE = 2048
WARMUP_SIDE = 64

# diffusers class names by (mode, with ControlNet)
PIPELINES = {
    ("t2i", False): "StableDiffusionXLPipeline",
    ("img2img", False): "StableDiffusionXLImg2ImgPipeline",
    ("inpaint", False): "StableDiffusionXLInpaintPipeline",
    ("t2i", True): "StableDiffusionXLControlNetPipeline",
    ("img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
}
# scheduler choice -> diffusers class and config overrides; "default" keeps the checkpoint's own
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),  # SDXL-Lightning
    "euler_a_trailing": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),  # SDXL-Turbo
    "lcm": ("LCMScheduler", {}),  # LCM-distilled UNets
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
}

Side = Annotated[int, Field(ge=64, le=MAX_SIDE, multiple_of=8)]
Scale = Annotated[float, Field(ge=0.0, le=2.0)]
Model = Annotated[str, Field(min_length=1, max_length=512)]
MAX_LORAS = 4
"""Most adapters one frame runs with."""
LoraWeight = Annotated[float, Field(ge=-4.0, le=4.0)]


class ControlNetSpec(NodeParams):
    model: Model = Field(description="Hugging Face id or local folder of a diffusers SDXL ControlNet")
    scale: Scale = Field(1.0, description="controlnet_conditioning_scale: how strongly the control image steers")


class SdxlParams(NodeParams):
    model: Model = Field(
        BASE.default, description="Hugging Face id or local folder of an SDXL checkpoint (diffusers layout)"
    )
    vae: Model | None = Field(
        None, description="replacement VAE, e.g. madebyollin/sdxl-vae-fp16-fix (decodes in fp16 with no fp32 upcast)"
    )
    controlnets: tuple[ControlNetSpec, ...] = Field(
        (),
        max_length=len(CONTROL_PORTS),
        description="ControlNets, entry i conditioned on port control_image, control_image_2, ...",
    )
    prompt: str = Field("", max_length=2000, description="prompt; a wired `prompt` port overrides it")
    negative_prompt: str = Field(
        "", max_length=2000, description="what to steer away from; empty = SDXL's zeroed negative embedding"
    )
    steps: int = Field(30, ge=1, le=100, description="denoising steps (img2img runs steps x strength of them)")
    guidance: float = Field(
        5.0, ge=0.0, le=30.0, description="classifier-free guidance scale; 1 or less turns CFG off (Turbo, Lightning)"
    )
    strength: float = Field(
        0.6, ge=0.0, le=1.0, description="img2img / inpainting: how much of the init image is re-noised"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="noise seed; same seed and params give the same image")
    width: Side | None = Field(None, description="output width (multiple of 8); unset = the wired image's, or 1024")
    height: Side | None = Field(None, description="output height (multiple of 8); unset = the wired image's, or 1024")
    scheduler: Literal[
        "default", "euler", "euler_a", "euler_trailing", "euler_a_trailing", "lcm", "dpmpp_2m_karras"
    ] = Field(
        "default",
        description=(
            "sampler; 'default' keeps the checkpoint's own, *_trailing suit Lightning/Turbo few-step checkpoints"
        ),
    )
    controlnet_scales: tuple[Scale, ...] | None = Field(
        None, description="per-request ControlNet scales overriding controlnets[i].scale, one per ControlNet"
    )
    allowed_loras: dict[Model, Model] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "LoRA adapters `loras` may name: name -> Hugging Face id or local folder (a list: each id its own name); "
            "fixed by the graph, fetched by `capgraph prepare`"
        ),
    )
    loras: dict[Model, LoraWeight] = Field(
        default_factory=dict,
        max_length=MAX_LORAS,
        description=f"LoRA adapters to run with: allowed_loras name -> weight (-4..4), at most {MAX_LORAS}",
    )
    max_loaded_loras: int = Field(
        8, ge=MAX_LORAS, le=64, description="adapters a replica keeps loaded; the least recently used leaves first"
    )

    @field_validator("allowed_loras", mode="before")
    @classmethod
    def _list_is_its_own_names(cls, value: Any) -> Any:
        return {str(model): model for model in value} if isinstance(value, (list, tuple)) else value

    @field_validator("loras")
    @classmethod
    def _only_allowed_loras(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        allowed = info.data.get("allowed_loras", {})
        refused = [name for name in value if name not in allowed]
        if refused:
            shown = refused[0] if len(refused[0]) <= 80 else refused[0][:77] + "..."
            raise ValueError(
                f"LoRA '{shown}' is not one this graph allows; allowed: {', '.join(sorted(allowed)) or 'none'} "
                "(a graph lists its adapters in allowed_loras)"
            )
        return value

    @model_validator(mode="after")
    def _one_scale_per_controlnet(self) -> "SdxlParams":
        if self.controlnet_scales is not None and len(self.controlnet_scales) != len(self.controlnets):
            raise ValueError(
                f"controlnet_scales has {len(self.controlnet_scales)} values for {len(self.controlnets)} ControlNets"
            )
        return self

    def scales(self) -> tuple[float, ...]:
        return (
            self.controlnet_scales if self.controlnet_scales is not None else tuple(c.scale for c in self.controlnets)
        )


class Sdxl(Node):
    """Stable Diffusion XL: text-to-image, img2img, inpainting or ControlNet, chosen by the wired ports."""

    type = "sdxl"
    category = "generation"
    Params = SdxlParams
    inputs = {
        "prompt": port(PortType.TEXT, doc="prompt for this frame, overriding params.prompt", optional=True),
        "image": port(PortType.IMAGE, doc="init image: img2img, or inpainting when mask is wired too", optional=True),
        "mask": port(PortType.MASK, doc="where to repaint (1 = repaint, 0 = keep); needs image", optional=True),
        "control_image": port(
            PortType.IMAGE, doc="control image of controlnets[0] (depth, edges, segment colours)", optional=True
        ),
        "control_image_2": port(PortType.IMAGE, doc="control image of controlnets[1]", optional=True),
        "control_image_3": port(PortType.IMAGE, doc="control image of controlnets[2]", optional=True),
    }
    outputs = {"image": port(PortType.IMAGE, doc="generated frame, width x height")}
    request_params = frozenset(
        {
            "prompt",
            "negative_prompt",
            "seed",
            "steps",
            "guidance",
            "strength",
            "width",
            "height",
            "controlnet_scales",
            "loras",  # names from the graph's allowed_loras only: never a path or an id of the caller's
        }
    )
    uses_gpu = True
    max_batch = 4
    weights = {"model": BASE, "vae": VAE, "controlnets": CONTROLNET, "loras": LORA}
    shared_weights = frozenset({"model", "vae"})
    """The base pipeline's weights; ControlNets are loaded for every caller that names one, and
    `scheduler` is per call already (one scheduler per name)."""
    cost_ms = 120.0

    @classmethod
    def for_callers(cls, callers: Sequence[tuple[NodeParams, frozenset[str]]]) -> tuple[NodeParams, frozenset[str]]:
        """The ControlNets of every caller, each model once (after the longest caller's own
        list, so that its ports stay valid), and the control ports they take."""
        params = [cast(SdxlParams, p) for p, _ in callers]
        longest = max((p.controlnets for p in params), key=len)
        named = {c.model for c in longest}
        nets = (*longest, *{c.model: c for p in params for c in p.controlnets if c.model not in named}.values())
        if len(nets) > len(CONTROL_PORTS):
            raise ValueError(f"{len(nets)} ControlNets between them; one node takes at most {len(CONTROL_PORTS)}")
        allowed: dict[str, str] = {}
        for p in params:
            for name, model in p.allowed_loras.items():
                if allowed.setdefault(name, model) != model:
                    raise ValueError(f"LoRA '{name}' is {allowed[name]} for one caller and {model} for another")
        merged = params[0].model_copy(
            update={
                "controlnets": nets,
                "controlnet_scales": None,
                "allowed_loras": allowed,
                "max_loaded_loras": max(p.max_loaded_loras for p in params),
            }
        )
        return merged, frozenset().union(*(wired for _, wired in callers), CONTROL_PORTS[: len(nets)])

    @classmethod
    def tiny_models(cls) -> dict[str, Any]:
        """The tiny models but the LoRA: in tiny mode each adapter id has its own, built on
        first use (`tiny_lora_for`), and there is no full-size random one to pair it with."""
        return {key: build for key, build in super().tiny_models().items() if key != LORA.key}

    def models(self) -> list[str]:
        """The base model, the VAE when one is set, each ControlNet's, then every allowed LoRA's."""
        p = self.params
        return list(dict.fromkeys([*super().models(), *(c.model for c in p.controlnets), *p.allowed_loras.values()]))

    def load(self, device: str, dtype: str) -> None:
        super().load(device, dtype)
        import torch
        from diffusers import ControlNetModel

        no_progress_bars(diffusers=True)
        for logger in (
            "diffusers.models.modeling_utils",
            "diffusers.loaders.lora_base",
            "diffusers.loaders.lora_pipeline",
            "diffusers.loaders.peft",
        ):
            logging.getLogger(logger).addFilter(_drop_noise)
        p = self.params
        self.torch_dtype = torch_dtype = getattr(torch, dtype)
        # resolve every id first: a missing ControlNet fails before gigabytes of base model load
        base_path = self.resolve_weights("model")
        vae_path = self.resolve_weights("vae") if p.vae else None
        net_paths = {c.model: self.resolve_weights("controlnets", c.model) for c in p.controlnets}
        self.base = _base_pipeline(base_path, vae_path, device, torch_dtype)
        loaded: dict[str, Any] = {}  # the same ControlNet twice is loaded once
        for path in net_paths.values():
            if path not in loaded:
                loaded[path] = ControlNetModel.from_pretrained(
                    path, dtype=torch_dtype, **fp16_variant(path, torch_dtype)
                ).to(device)
        self.nets = {model: loaded[path] for model, path in net_paths.items()}
        """Loaded ControlNets by model id: a frame's params name the ones it runs with."""
        self.controlnets = self._nets(p)
        self.pipes: dict[tuple[str, tuple[str, ...]], Any] = {}
        """Pipelines by (mode, ControlNet models), made on first use."""
        self.schedulers: dict[str, Any] = {}
        b = self.base
        self.weight_bytes = module_bytes(b.unet, b.vae, b.text_encoder, b.text_encoder_2, *loaded.values())
        self.adapters = _adapters_of(self.base)
        self.lora_folders: dict[str, str] = {}
        """Local folders of the adapters by id, resolved once: the graph's own at load, others on first use."""
        for name in p.loras:  # the graph's own adapters: missing ones fail the load, as a missing model does
            model = p.allowed_loras[name]
            self.lora_folders[model] = self._tiny_lora(model) or resolve(model, self.node_id, LORA)

    def example_inputs(self) -> Frame:
        image = example_value(PortType.IMAGE, WARMUP_SIDE)
        return {name: image for name in CONTROL_PORTS[: len(self.params.controlnets)]}

    def warmup(self) -> None:
        """One 1-step generation at 64 x 64: kernels and lazy imports load, cold start stays short."""
        small = self.params.model_copy(update={"steps": 1, "width": WARMUP_SIDE, "height": WARMUP_SIDE})
        self.run_batch([self.example_inputs()], [small])

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[SdxlParams]) -> list[Frame]:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (frame, p) in enumerate(zip(inputs, params)):
            width, height = target_size(frame, p)
            nets = tuple(c.model for c in p.controlnets)  # one call never mixes ControlNet sets
            key = (
                self._mode(frame, p),
                nets,
                width,
                height,
                p.steps,
                p.guidance,
                p.strength,
                p.scheduler,
                p.scales(),
                bool(p.negative_prompt),
                _lora_set(p),  # one call runs one adapter set: an adapter never touches another's frame
            )
            groups.setdefault(key, []).append(i)
        out: list[Frame] = [{} for _ in inputs]
        for (mode, _, width, height, *_), members in groups.items():
            images = self._generate(mode, width, height, [inputs[i] for i in members], [params[i] for i in members])
            for i, image in zip(members, images):
                out[i] = {"image": image}
        return out

    @classmethod
    def check_wiring(cls, params: SdxlParams, wired: frozenset[str]) -> list[tuple[str, str]]:
        problems = []
        needed = CONTROL_PORTS[: len(params.controlnets)]
        for name in CONTROL_PORTS:
            if name in needed and name not in wired:
                problems.append(
                    (
                        name,
                        f"has {len(needed)} ControlNet(s), so port '{name}' must be wired "
                        "(one control image per ControlNet).",
                    )
                )
            elif name in wired and name not in needed:
                problems.append(
                    (
                        name,
                        f"port '{name}' is wired but the node has {len(needed)} ControlNet(s); "
                        "add one to 'controlnets' or unwire it.",
                    )
                )
        if "mask" in wired and "image" not in wired:
            problems.append(("mask", "'mask' is wired but 'image' is not; inpainting needs the image to repaint."))
        return problems

    def _mode(self, frame: Frame, p: SdxlParams) -> str:
        """The frame's mode, its wiring checked against its own params (a shared node's
        callers wire different ports)."""
        problems = self.check_wiring(p, frozenset(frame))
        if problems:
            raise ValueError(f"node '{self.node_id}': " + " ".join(problem for _, problem in problems))
        return "inpaint" if "mask" in frame else "img2img" if "image" in frame else "t2i"

    def _generate(
        self, mode: str, width: int, height: int, frames: list[Frame], params: list[SdxlParams]
    ) -> list[np.ndarray]:
        """One pipeline call for frames that share every call-shaping param."""
        import torch
        from PIL import Image

        p = params[0]
        nets = self._nets(p)
        pipe = self._pipe(mode, tuple(c.model for c in p.controlnets), nets)
        pipe.scheduler = self._scheduler(p.scheduler)
        kwargs: dict[str, Any] = {
            "prompt": [frame.get("prompt", q.prompt) for frame, q in zip(frames, params)],
            # None, not "": SDXL then uses zeroed negative embeddings, as it was trained to
            "negative_prompt": [q.negative_prompt for q in params] if p.negative_prompt else None,
            "num_inference_steps": p.steps,
            "guidance_scale": p.guidance,
            "generator": [torch.Generator("cpu").manual_seed(q.seed) for q in params],
            "output_type": "np",
        }
        if mode != "img2img" or nets:  # plain SDXL img2img takes its size from the image
            kwargs |= {"width": width, "height": height}
        if mode != "t2i":
            if int(p.steps * p.strength) < 1:
                raise InputError(
                    f"params.{self.node_id}.strength",
                    f"strength {p.strength} x steps {p.steps} leaves no denoising step; raise strength or steps",
                )
            kwargs["image"] = [Image.fromarray(resize(f["image"], width, height)) for f in frames]
            kwargs["strength"] = p.strength
        if mode == "inpaint":
            kwargs["mask_image"] = [Image.fromarray(_mask_to_gray(resize(f["mask"], width, height))) for f in frames]
        if nets:
            # one float batch (N, H, W, 3) per ControlNet keeps control images per frame,
            # which diffusers' nested-list form refuses for several ControlNets
            controls = [
                np.stack([resize(f[name], width, height) for f in frames]).astype(np.float32) / 255.0
                for name in CONTROL_PORTS[: len(nets)]
            ]
            single = len(controls) == 1
            kwargs["image" if mode == "t2i" else "control_image"] = controls[0] if single else controls
            kwargs["controlnet_conditioning_scale"] = p.scales()[0] if single else list(p.scales())
        if pipe.vae.dtype != self.torch_dtype:  # img2img/inpaint calls leave the shared VAE upcast to fp32
            pipe.vae.to(self.torch_dtype)
        loras = [(self._lora_folder(model), weight) for model, weight in _lora_set(p)]
        with self.adapters.lock:  # the adapters live in the UNet every node on this base shares
            self.adapters.activate(self.base, loras, p.max_loaded_loras)
            with torch.inference_mode():
                images = pipe(**kwargs).images
        return [(np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8) for image in images]

    def _tiny_lora(self, model: str) -> str | None:
        """In tiny mode, the tiny adapter standing for `model`; else None."""
        if models_mode() != "tiny":
            return None
        return str(tiny_model(*tiny_lora_for(model)))

    def _lora_folder(self, model: str) -> str:
        """The local folder of an allowed adapter a request names. Never a download on a
        request's say: one not on this machine is a 4xx pointing at `capgraph prepare`."""
        if model not in self.lora_folders:
            folder = self._tiny_lora(model) or (str(Path(model).expanduser()) if models_mode() != "random" else None)
            if folder is None:
                folder = resolve(model, self.node_id, LORA)  # random mode: says it has no full-size LoRA
            elif not Path(folder).exists():
                folder = _cached_snapshot(model)
            if folder is None:
                raise InputError(
                    f"params.{self.node_id}.loras",
                    f"LoRA '{model}' is allowed but not on this machine (a request never starts a download); "
                    "fetch it first with: capgraph prepare <graph.yaml>",
                    409,
                )
            self.lora_folders[model] = folder
        return self.lora_folders[model]

    def _nets(self, p: SdxlParams) -> list[Any]:
        """The loaded ControlNets of `p`, in its order."""
        missing = [c.model for c in p.controlnets if c.model not in self.nets]
        if missing:  # load-time params: a request cannot name another, so this is a wiring bug
            raise ValueError(
                f"node '{self.node_id}' has not loaded ControlNet {', '.join(missing)} "
                f"(it loaded {', '.join(self.nets) or 'none'})"
            )
        return [self.nets[c.model] for c in p.controlnets]

    def _pipe(self, mode: str, models: tuple[str, ...], nets: list[Any]) -> Any:
        """The pipeline of a mode with these ControlNets, made on first use from the base
        pipeline's components: nothing is loaded twice."""
        key = (mode, models)
        if key not in self.pipes:
            import diffusers

            cls = getattr(diffusers, PIPELINES[mode, bool(nets)])
            extra: dict[str, Any] = {}
            if len(nets) == 1:
                extra["controlnet"] = nets[0]
            elif nets:
                extra["controlnet"] = list(nets)
            logging.getLogger(cls.__module__).addFilter(_drop_noise)
            pipe = cls.from_pipe(self.base, dtype=self.base.dtype, **extra)  # without dtype it casts all to fp32
            pipe.set_progress_bar_config(disable=True)
            self.pipes[key] = pipe
        return self.pipes[key]

    def _scheduler(self, name: str) -> Any:
        """A scheduler of this node's own: schedulers keep per-call state, the base is shared."""
        if name not in self.schedulers:
            import diffusers

            config = self.base.scheduler.config
            cls_name, overrides = SCHEDULERS.get(name, (type(self.base.scheduler).__name__, {}))
            self.schedulers[name] = getattr(diffusers, cls_name).from_config(config, **overrides)
        return self.schedulers[name]


def target_size(frame: Frame, p: SdxlParams) -> tuple[int, int]:
    """Output (width, height): the params' size, else the wired image's rounded down to a
    multiple of 8 (scaled down to fit 2048), else 1024 square. One side given keeps the aspect."""
    source = next((frame[name] for name in ("image", *CONTROL_PORTS) if name in frame), None)
    src_w, src_h = (source.shape[1], source.shape[0]) if source is not None else (DEFAULT_SIDE, DEFAULT_SIDE)
    if p.width and p.height:
        return p.width, p.height
    if p.width or p.height:
        scale = p.width / src_w if p.width else (p.height or 0) / src_h
    else:
        scale = min(1.0, MAX_SIDE / max(src_w, src_h))
    width, height = (p.width or src_w * scale), (p.height or src_h * scale)
    return min(MAX_SIDE, to_multiple(width, 8)), min(MAX_SIDE, to_multiple(height, 8))


_BASES: "weakref.WeakValueDictionary[tuple[str, str | None, str, str], Any]" = weakref.WeakValueDictionary()
"""Base pipelines alive in this process, so nodes loading the same checkpoint share it."""


def _base_pipeline(path: str, vae_path: str | None, device: str, torch_dtype: Any) -> Any:
    key = (path, vae_path, device, str(torch_dtype))
    pipe = _BASES.get(key)
    if pipe is None:
        from diffusers import AutoencoderKL, StableDiffusionXLPipeline

        extra = {"vae": AutoencoderKL.from_pretrained(vae_path, dtype=torch_dtype)} if vae_path else {}
        pipe = StableDiffusionXLPipeline.from_pretrained(
            path, dtype=torch_dtype, **fp16_variant(path, torch_dtype), **extra
        )
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        _BASES[key] = pipe
    return pipe


def _lora_set(p: SdxlParams) -> tuple[tuple[str, float], ...]:
    """A frame's adapters as (id, weight), sorted, zero weights dropped, one id named twice summed."""
    weights: dict[str, float] = {}
    for name, weight in p.loras.items():
        model = p.allowed_loras[name]
        weights[model] = weights.get(model, 0.0) + weight
    return tuple(sorted((model, weight) for model, weight in weights.items() if weight != 0.0))


def _cached_snapshot(model: str) -> str | None:
    """The cached snapshot of a hub id, looked up locally only; None where it is not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(model, cache_dir=model_dir(), local_files_only=True)
    except (HFValidationError, LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None


class _Adapters:
    """The LoRA adapters loaded into one base pipeline (so into the UNet and text encoders
    every node on it shares), at most a bound of them, the least recently used leaving first.
    Hold `lock` from `activate` to the end of the pipeline call."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.loaded: OrderedDict[str, str] = OrderedDict()
        """peft adapter name by folder, least recently used first."""
        self.loads = 0
        """Adapters loaded so far (a test reads it: an adapter loads once, not per frame)."""

    def activate(self, pipe: Any, loras: Sequence[tuple[str, float]], bound: int) -> None:
        """Make exactly `loras` (folder, weight) active on `pipe`, loading the missing ones."""
        wanted = [folder for folder, _ in loras]
        for folder in wanted:
            if folder in self.loaded:
                self.loaded.move_to_end(folder)
                continue
            while len(self.loaded) >= bound:
                victim = next((f for f in self.loaded if f not in wanted), None)
                if victim is None:
                    break
                pipe.delete_adapters([self.loaded.pop(victim)])
            name = "lora_" + hashlib.sha256(folder.encode()).hexdigest()[:16]
            with warnings.catch_warnings():  # peft's warning that a second adapter joins the first: that is the plan
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(folder, adapter_name=name)
            self.loaded[folder] = name
            self.loads += 1
        if not self.loaded:
            return
        if not loras:
            pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([self.loaded[f] for f in wanted], adapter_weights=[w for _, w in loras])


_ADAPTERS: "weakref.WeakKeyDictionary[Any, _Adapters]" = weakref.WeakKeyDictionary()


def _adapters_of(pipe: Any) -> _Adapters:
    """The adapter set of a base pipeline, made on first use."""
    if pipe not in _ADAPTERS:
        _ADAPTERS[pipe] = _Adapters()
    return _ADAPTERS[pipe]


def _mask_to_gray(mask: np.ndarray) -> np.ndarray:
    return (np.clip(mask, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


NOISE = (
    # several ControlNets and a list of prompts: with one control batch per ControlNet the
    # conditionings are per frame, not "fixed across the prompts" as this warning says
    "fixed across the prompts",
    # every `.to(dtype)` (from_pipe, the VAE's fp32 upcast in img2img/inpaint) warns when nothing must stay fp32
    "should be kept in float32: []",
    # a LoRA with UNet layers only (most SDXL ones): nothing for the text encoders is expected
    "No LoRA keys associated to",
)


def _drop_noise(record: logging.LogRecord) -> bool:
    """Logging filter dropping the diffusers warnings above, which fire on every call and are wrong here."""
    message = record.getMessage()
    return not any(fragment in message for fragment in NOISE)
