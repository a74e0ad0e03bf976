"""Built-in node families, one module each.

The catalogue (`engine.registry.catalogue`) reads this literal list, then the
`capgraph.nodes` entry points. Importing a family module is cheap: heavy libraries are
imported inside `load`.
"""

BUILTIN: tuple[str, ...] = (
    "capgraph.nodes.codec:Decode",
    "capgraph.nodes.codec:Encode",
    "capgraph.nodes.resize:Resize",
    "capgraph.nodes.canny:Canny",
    "capgraph.nodes.depth_control:DepthControl",
    "capgraph.nodes.depth:Depth",
    "capgraph.nodes.segmentation:Segmentation",
    "capgraph.nodes.sam2:Sam2",
    "capgraph.nodes.composite:Composite",
    "capgraph.nodes.template:Template",
    "capgraph.nodes.first:First",
    "capgraph.nodes.first:FirstMask",
    "capgraph.nodes.first:FirstDepthMap",
    "capgraph.nodes.first:FirstText",
    "capgraph.nodes.first:FirstNumber",
    "capgraph.nodes.sdxl:Sdxl",
    "capgraph.nodes.upscale:Upscale",
    "capgraph.nodes.svd:Svd",
    "capgraph.nodes.safety:Safety",
)
