"""Tiny vision models (depth, segmentation, SAM 2), random-initialised from configs, for
offline tests and `CAPGRAPH_MODELS=tiny`.

Each builder writes the model and its processor with `save_pretrained`, in the folder
layout of the family's default hub repo, so the node loads it through the same
`from_pretrained` calls production uses. Sizes are small ones the libraries accept, and
every value below is one a library check depends on, not a taste: Depth Anything's sides
are a multiple of its patch size 14, Mask2Former's widths multiples of 32, and SAM 2's
Hiera and processor sizes follow the rules stated at `sam2`.
Seeded, so two builds of a model hold the same weights.
"""

from pathlib import Path

from capgraph.nodes.helpers import no_progress_bars

ADE_LABELS = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car",
)
"""The first 21 ADE20K classes, ids as in `nvidia/segformer-b0-finetuned-ade-512-512`."""


def _quiet() -> None:
    no_progress_bars()  # "Writing model shards" bars on every build otherwise


def depth_anything(folder: Path) -> None:
    """Depth Anything V2 on a 4-layer DINOv2 (139 k params), processor as in the -hf repos:
    aspect kept, sides a multiple of the patch size 14."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    _quiet()
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=14,
        image_size=112, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, fusion_hidden_size=16, neck_hidden_sizes=[8, 16, 32, 32],
        head_hidden_size=8, reassemble_hidden_size=32,
    )
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 112, "width": 112}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3, do_pad=False,
    ).save_pretrained(folder)


def segformer(folder: Path) -> None:
    """SegFormer (54 k params) with ADE20K's first class names, so `classes: [person]` works."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    _quiet()
    config = SegformerConfig(
        depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 32], num_attention_heads=[1, 1, 2, 2],
        mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=16,
        id2label=dict(enumerate(ADE_LABELS)), label2id={name: i for i, name in enumerate(ADE_LABELS)},
    )
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).eval().save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)


def mask2former(folder: Path) -> None:
    """Mask2Former on a Swin backbone (267 k params; the decoder widths are multiples of 32
    for its GroupNorms), the universal-segmentation path of the segmentation family."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig

    _quiet()
    backbone = SwinConfig(
        image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, mlp_ratio=2.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=8,
        id2label=dict(enumerate(ADE_LABELS)), label2id={name: i for i, name in enumerate(ADE_LABELS)},
    )
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).eval().save_pretrained(folder)
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}, ignore_index=255).save_pretrained(folder)


SAM2_SIZE = 64
"""Input side of the tiny SAM 2: the processor must resize to the model's own size."""


def sam2(folder: Path) -> None:
    """SAM 2 with a 5-block Hiera (301 k params, 109 k of them the image model), saved like `facebook/sam2-hiera-large`:
    a `sam2_video` checkpoint (image model plus memory modules) with a `Sam2VideoProcessor`.
    Hiera rules: no global-attention block may open a query-pooling stage, and the FPN
    feature sizes are S/4, S/8, S/16."""
    import torch
    from transformers import Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    _quiet()
    size = SAM2_SIZE
    backbone = dict(
        model_type="sam2_hiera_det_model", hidden_size=8, num_attention_heads=1, image_size=[size, size],
        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2],
    )
    vision = dict(
        model_type="sam2_vision_model", backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2], fpn_hidden_size=32,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16),
        image_size=size, num_maskmem=2, max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=32, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=32,
        memory_attention_rope_feat_sizes=[size // 16] * 2, memory_encoder_hidden_size=32, memory_encoder_output_channels=16,
        mask_downsampler_embed_dim=32, memory_fuser_embed_dim=32, memory_fuser_intermediate_dim=32,
    )
    torch.manual_seed(0)
    Sam2VideoModel(config).eval().save_pretrained(folder)
    Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size={"height": size, "width": size}, mask_size={"height": size // 4, "width": size // 4}),
        video_processor=Sam2VideoVideoProcessor(size={"height": size, "width": size}),
        target_size=size,
    ).save_pretrained(folder)
