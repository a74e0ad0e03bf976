"""Built-in node families, one module each.

The catalogue (`engine.registry.catalogue`) reads this literal list, then the
`capgraph.nodes` entry points. Importing a family module is cheap: heavy libraries are
imported inside `load`.
"""

BUILTIN: tuple[str, ...] = (
    "nodes.codec:Decode",
    "nodes.codec:Encode",
    "nodes.resize:Resize",
    "nodes.canny:Canny",
    "nodes.depth_control:DepthControl",
    "nodes.depth:Depth",
    "nodes.segmentation:Segmentation",
    "nodes.sam2:Sam2",
    "nodes.composite:Composite",
    "nodes.sdxl:Sdxl",
    "nodes.upscale:Upscale",
)
