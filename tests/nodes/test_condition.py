"""The weightless condition nodes, one user-level check each, plus the family contract
that every registered family must keep (ports typed, batch == frames one by one)."""

import numpy as np
import pytest

from capgraph.engine.node import Node
from capgraph.engine.registry import catalogue
from capgraph.engine.types import check_value
from capgraph.engine.values import decode_image, encode_image

WEIGHTLESS = [f for f in catalogue().values() if not f.uses_gpu]


def loaded(family: type[Node], **params: object) -> Node:
    node = family(family.Params(**params))
    node.load("cpu", "float32")
    return node


@pytest.mark.parametrize("family", WEIGHTLESS, ids=[f.type for f in WEIGHTLESS])
def test_family_contract(family: type[Node]) -> None:
    node = loaded(family)
    frames = [node.example_inputs(), node.example_inputs()]
    batch = node.run_batch(frames, [node.params] * 2)
    assert len(batch) == 2
    for out in batch:
        assert set(out) == set(family.outputs)
        for name, value in out.items():
            assert check_value(family.outputs[name].type, value) is None, name
    single = node.run_batch(frames[:1], [node.params])[0]
    for name in family.outputs:
        assert np.array_equal(np.asarray(single[name]), np.asarray(batch[0][name]))
    assert family.doc() and all(p.doc for p in family.inputs.values()) and all(p.doc for p in family.outputs.values())
    assert family.request_params <= set(family.Params.model_fields)


def test_resize_crops_pads_and_stretches_to_multiples_of_8() -> None:
    image = np.full((101, 203, 3), 200, np.uint8)
    crop = loaded(catalogue()["resize"], max_side=100).run_batch(
        [{"image": image}], [catalogue()["resize"].Params(max_side=100)]
    )[0]
    assert crop["image"].shape == (48, 96, 3) and crop["mask"].shape == (48, 96)
    Params = catalogue()["resize"].Params
    node = loaded(catalogue()["resize"])
    pad = node.run_batch([{"image": image}], [Params(width=64, height=64, fit="pad")])[0]["image"]
    assert pad.shape == (64, 64, 3) and pad[0, 0].sum() == 0 and pad[32, 32, 0] == 200
    stretch = node.run_batch([{"image": image}], [Params(width=50, height=30, fit="stretch")])[0]["image"]
    assert stretch.shape == (24, 48, 3)


def test_depth_control_makes_near_white_grey_rgb() -> None:
    family = catalogue()["depth_control"]
    depth = np.linspace(0.2, 0.6, 16, dtype=np.float32).reshape(4, 4)
    image = loaded(family).run_batch([{"depth": depth}], [family.Params()])[0]["image"]
    assert image.shape == (4, 4, 3) and image[-1, -1, 0] == 255 and image[0, 0, 0] == 0
    assert np.array_equal(image[..., 0], image[..., 2])
    inverted = loaded(family).run_batch([{"depth": depth}], [family.Params(invert=True)])[0]["image"]
    assert inverted[0, 0, 0] == 255


def test_composite_blends_through_a_feathered_mask() -> None:
    family = catalogue()["composite"]
    white, black = np.full((32, 32, 3), 255, np.uint8), np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((32, 32), np.float32)
    mask[:, 16:] = 1.0
    out = loaded(family).run_batch(
        [{"foreground": white, "background": black, "mask": mask}], [family.Params(feather=2)]
    )[0]
    assert out["image"].shape == (32, 32, 3)
    assert out["image"][0, 0, 0] == 0 and out["image"][0, 31, 0] == 255 and 0 < out["image"][0, 16, 0] < 255


def test_decode_refuses_a_decompression_bomb_before_decoding() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, format="PNG")
    with pytest.raises(Exception, match="over the limit"):
        decode_image(buf.getvalue(), max_pixels=1000)
    assert decode_image(encode_image(np.zeros((4, 6, 3), np.uint8))).shape == (4, 6, 3)
