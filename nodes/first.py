"""Pass on the first input that has a value: where two branches meet.

A node skipped by its `when:` gives no value, so a graph output that one branch or the
other computes reads from a `first` node: `a` when the node feeding it ran, else `b`.
Ports have one type per family, so there is one family per common type: `first` (Image),
`first_mask`, `first_depth_map`, `first_text`, `first_number`. No weights; runs anywhere.
docs/graph-format.md ("Branches") has an example.
"""

from collections.abc import Sequence

from capgraph.engine.node import Frame, Node, NodeParams, example_value
from capgraph.engine.types import PortType, port


class First(Node):
    """The first of `a`, `b` that has a value (the other's node was skipped): where two branches meet."""

    type = "first"
    category = "condition"
    kind = PortType.IMAGE
    inputs = {
        "a": port(kind, doc="taken when it has a value (its node ran)", optional=True),
        "b": port(kind, doc="taken when `a` has none", optional=True),
    }
    outputs = {"value": port(kind, doc="`a` if it has a value, else `b`")}
    max_batch = 256

    @classmethod
    def check_wiring(cls, params: NodeParams, wired: frozenset[str]) -> list[tuple[str, str]]:
        if {"a", "b"} <= wired:
            return []
        return [("b" if "a" in wired else "a", "wire both 'a' and 'b': one branch's value and the other's.")]

    def example_inputs(self) -> Frame:
        return {"b": example_value(self.kind)}

    def run_batch(self, inputs: Sequence[Frame], params: Sequence[NodeParams]) -> list[Frame]:
        return [{"value": frame["a"] if "a" in frame else frame["b"]} for frame in inputs]


def _first_of(kind: PortType) -> type[First]:
    """The `first` family for another port type: same ports and rule, typed `kind`."""
    return type(
        f"First{kind.title}",
        (First,),
        {
            "__doc__": First.__doc__,
            "__module__": __name__,
            "type": f"first_{kind.value}",
            "kind": kind,
            "inputs": {name: port(kind, doc=p.doc, optional=True) for name, p in First.inputs.items()},
            "outputs": {"value": port(kind, doc=First.outputs["value"].doc)},
        },
    )


FirstMask = _first_of(PortType.MASK)
FirstDepthMap = _first_of(PortType.DEPTH_MAP)
FirstText = _first_of(PortType.TEXT)
FirstNumber = _first_of(PortType.NUMBER)
