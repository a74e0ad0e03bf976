"""Tiny Stable Diffusion components, random-initialised from configs, for offline tests.

The `sdxl` and `upscale` families save these in the real hub repos' folder layout
(`pipeline.save_pretrained`), so `CAPGRAPH_MODELS=tiny` loads them through the very
`from_pretrained` path production uses. Sizes are the smallest the libraries accept, and
every value below is one a library check depends on, not a taste: GroupNorm groups divide
every channel count, a VAE downsamples by 2 ** (blocks - 1), SDXL's UNet cross-attends to
both text encoders' widths side by side, a ControlNet's conditioning embedding downsamples
by the VAE's factor, the x4 upscaler's UNet takes 7 channels and has more noise-level
classes than the pipeline's max noise level, and the tokenizer's `model_max_length` is 77.
Seeded, so two builds of the same model hold the same weights.
"""

from pathlib import Path
from typing import Any

TEXT_HIDDEN = 32
"""Width of every tiny CLIP text encoder; SDXL's UNet cross-attends to two of them side by side."""


def clip_tokenizer() -> Any:
    """A byte-level CLIP tokenizer built with no network: the 256 byte symbols, their
    end-of-word forms and the two special tokens, no merges. `model_max_length=77` is what
    SDXL's prompt encoding expects (it overflows without it)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def clip_text_encoder(*, projection: bool = False, seed: int = 0) -> Any:
    """A 2-layer CLIP text encoder; `projection=True` gives SDXL's second encoder, whose pooled
    projection feeds the UNet's added time/text embedding."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer()),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=TEXT_HIDDEN,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def vae(blocks: tuple[int, ...] = (16, 16, 32, 32), *, scaling_factor: float = 0.13025, seed: int = 0) -> Any:
    """An AutoencoderKL that downsamples by 2 ** (len(blocks) - 1): 8 by default, as SDXL's
    does, so a tiny generation at a real frame size stays cheap (a 2x VAE made 384x256
    frames 192x128 latents, minutes per image on a CPU)."""
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


def save_vae(path: Path) -> None:
    """A tiny SDXL VAE on its own, the layout of a replacement VAE repo such as madebyollin/sdxl-vae-fp16-fix."""
    vae().save_pretrained(path)


def sdxl_unet() -> Any:
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


def save_sdxl(path: Path) -> None:
    """A tiny SDXL base pipeline (two text encoders, UNet, 8x VAE, Euler) in the layout of
    stabilityai/stable-diffusion-xl-base-1.0."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=clip_text_encoder(seed=1),
        text_encoder_2=clip_text_encoder(projection=True, seed=2),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=sdxl_unet(),
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(path)


def save_sdxl_controlnet(path: Path) -> None:
    """A ControlNet copied from the tiny SDXL UNet, as diffusers/controlnet-*-sdxl-1.0 are; its
    conditioning embedding downsamples by the tiny VAE's factor of 8."""
    import torch
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(sdxl_unet(), conditioning_embedding_out_channels=(16, 16, 32, 32))
    # A fresh ControlNet's output convolutions are zero, so it would not steer at all and a
    # test could not tell a wired control image from none: give them small random weights.
    torch.manual_seed(3)
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0.0, 0.05)
    net.save_pretrained(path)


def save_x4_upscaler(path: Path) -> None:
    """A tiny StableDiffusionUpscalePipeline in the layout of stabilityai/stable-diffusion-x4-upscaler:
    the UNet sees the noisy latents next to the low-res image (4 + 3 = 7 channels) and the
    noise level as a class label; the VAE upsamples by 4."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

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
    pipe = StableDiffusionUpscalePipeline(
        vae=vae((32, 32, 64), scaling_factor=0.08333, seed=1),
        text_encoder=clip_text_encoder(seed=2),
        tokenizer=clip_tokenizer(),
        unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
            set_alpha_to_one=False, steps_offset=1, clip_sample=False,
        ),
        max_noise_level=350,
    )
    pipe.save_pretrained(path)
