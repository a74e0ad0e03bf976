"""Graph outputs as the Livepeer job routes answer them: the port codecs with `data:` URLs.

A BYOC job's request is the native job (read by `serve.wire.read_job`, as `/v1` reads it);
its answer carries images, masks, depth and segmentation maps as PNG data URLs, the form
go-livepeer and the livepeer-ai SDK already decode, where `/v1` answers bare base64.
"""

from collections.abc import Mapping
from typing import Any

from capgraph.engine import codecs
from capgraph.engine.plan import Plan


def encode_outputs(plan: Plan, outputs: Mapping[str, Any]) -> dict[str, Any]:
    return codecs.encode_outputs(plan, outputs, data_url=True)
