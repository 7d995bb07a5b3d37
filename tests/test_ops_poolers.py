"""fpn.ops.MultiScaleRoIAlign and assign_fpn_levels against torchvision's MultiScaleRoIAlign / LevelMapper."""
from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops.poolers import LevelMapper

from fpn.ops import MultiScaleRoIAlign, assign_fpn_levels

NAMES = ("p2", "p3", "p4", "p5")
IMAGE = (128, 192)  # (height, width); the maps are this size divided by 4, 8, 16, 32


def _square(side: float) -> torch.Tensor:
    return torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])


def _boxes(n: int, seed: int) -> torch.Tensor:
    """Boxes of 8 .. 900 px (all four levels), some reaching outside the image."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * torch.tensor([IMAGE[1], IMAGE[0]])
    size = torch.exp(torch.rand(n, 2, generator=g) * 4.7 + 2.1)
    size[0] = torch.tensor([500.0, 700.0])  # at least one box for P5
    return torch.cat((centre - size / 2, centre + size / 2), dim=1)


def _features(seed: int, images: int = 2, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (name, torch.randn(images, channels, IMAGE[0] // 2**level, IMAGE[1] // 2**level, generator=g))
        for name, level in zip(NAMES, range(2, 6))
    )


def test_level_assignment_hand_computed():
    sides = [224.0, 223.9, 112.0, 111.9, 448.0, 56.0, 1.0, 5000.0]
    boxes = torch.cat([_square(s) for s in sides])
    assert assign_fpn_levels(boxes, 2, 5).tolist() == [4, 3, 3, 2, 5, 2, 2, 5]
    assert assign_fpn_levels(boxes, 2, 5).dtype == torch.int64
    assert assign_fpn_levels(boxes, 3, 4, canonical_scale=112, canonical_level=3).tolist() == [4, 3, 3, 3, 4, 3,
                                                                                              3, 4]


def test_level_assignment_matches_torchvision():
    boxes = _boxes(500, 0)
    expected = LevelMapper(2, 5)([boxes]) + 2
    assert torch.equal(assign_fpn_levels(boxes, 2, 5), expected)


@pytest.mark.parametrize("ratio", [2, -1])
def test_forward_and_backward_match_torchvision(ratio):
    features = _features(1)
    boxes = [_boxes(40, 2), _boxes(25, 3)]
    ours_in = OrderedDict((k, v.clone().requires_grad_()) for k, v in features.items())
    ref_in = OrderedDict((k, v.clone().requires_grad_()) for k, v in features.items())
    ours = MultiScaleRoIAlign(NAMES, (4, 8, 16, 32), 7, ratio)(ours_in, boxes)
    ref = torchvision.ops.MultiScaleRoIAlign(list(NAMES), 7, ratio)(ref_in, boxes, [IMAGE, IMAGE])
    assert ours.shape == (65, 3, 7, 7)
    assert set(assign_fpn_levels(torch.cat(boxes), 2, 5).tolist()) == {2, 3, 4, 5}
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4))
    (ours * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    for name in NAMES:
        torch.testing.assert_close(ours_in[name].grad, ref_in[name].grad, rtol=1e-5, atol=1e-5)


def test_keeps_input_order_and_handles_an_image_without_boxes():
    features = _features(5)
    boxes = [torch.cat((_square(300.0), _square(900.0), _square(150.0))), torch.zeros(0, 4)]  # P4, P5, P3
    pooler = MultiScaleRoIAlign()
    out = pooler(features, boxes)
    assert out.shape == (3, 3, 7, 7)
    for i in range(3):  # each box pooled alone gives the same row
        torch.testing.assert_close(out[i:i + 1], pooler(features, [boxes[0][i:i + 1], boxes[1]]), rtol=0, atol=0)
    assert pooler(features, [torch.zeros(0, 4), torch.zeros(0, 4)]).shape == (0, 3, 7, 7)
    p2 = features["p2"].clone().requires_grad_()
    pooler({**features, "p2": p2}, boxes).sum().backward()  # no box on P2: its gradient is zero, not None
    assert torch.equal(p2.grad, torch.zeros_like(p2))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="powers of two"):
        MultiScaleRoIAlign(NAMES, (4, 8, 12, 32))
    with pytest.raises(ValueError, match="powers of two"):
        MultiScaleRoIAlign(NAMES, (4, 16, 8, 32))
    with pytest.raises(ValueError, match="one stride per"):
        MultiScaleRoIAlign(NAMES, (4, 8, 16))
    features = _features(6)
    with pytest.raises(ValueError, match="p5"):
        MultiScaleRoIAlign()({k: v for k, v in features.items() if k != "p5"}, [_square(10.0), _square(10.0)])
    with pytest.raises(ValueError, match="1 images"):
        MultiScaleRoIAlign()(features, [_square(10.0)])
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        MultiScaleRoIAlign()(features, [torch.zeros(1, 3), _square(10.0)])
    with pytest.raises(ValueError, match="min_level"):
        assign_fpn_levels(_square(10.0), 5, 2)
