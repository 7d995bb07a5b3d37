"""fpn.ops.MultiScaleRoIAlign and assign_fpn_levels against torchvision's MultiScaleRoIAlign / LevelMapper."""
import textwrap
from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops.poolers import LevelMapper

from fpn.ops.host_sync import HostSyncCounter
from fpn.ops import MultiScaleRoIAlign, assign_fpn_levels

NAMES = ("p2", "p3", "p4", "p5")
STRIDES = (4, 8, 16, 32)
IMAGE = (128, 192)  # (height, width); the maps are this size divided by 4, 8, 16, 32


def _square(side: float) -> torch.Tensor:
    return torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])


def _boxes(n: int, seed: int, image=IMAGE) -> torch.Tensor:
    """Boxes of 8 .. 900 px (all four levels), some reaching outside the image."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * torch.tensor([image[1], image[0]])
    size = torch.exp(torch.rand(n, 2, generator=g) * 4.7 + 2.1)
    size[0] = torch.tensor([500.0, 700.0])  # at least one box for P5
    return torch.cat((centre - size / 2, centre + size / 2), dim=1)


def _features(seed: int, images: int = 2, channels: int = 3, image=IMAGE, names=NAMES):
    """Maps of ceil(image / 2**level) pixels, as a stride-2 convolution with padding gives."""
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (name, torch.randn(images, channels, -(-image[0] // 2**level), -(-image[1] // 2**level), generator=g))
        for name, level in zip(names, range(2, 2 + len(names)))
    )


def _grad_leaves(features):
    return OrderedDict((k, v.clone().requires_grad_()) for k, v in features.items())


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


def _compare_with_torchvision(ours_pool, ref_pool, features, boxes, image_shapes, tol=1e-5):
    """Same pooled values and feature gradients as torchvision's module (called with image_shapes)."""
    ours_in, ref_in = _grad_leaves(features), _grad_leaves(features)
    ours, ref = ours_pool(ours_in, boxes, image_shapes), ref_pool(ref_in, boxes, image_shapes)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4))
    (ours * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    used = [name for name in features if ref_in[name].grad is not None]
    assert used == [name for name in features if ours_in[name].grad is not None]
    for name in used:
        torch.testing.assert_close(ours_in[name].grad, ref_in[name].grad, rtol=tol, atol=tol)
    return ours


@pytest.mark.parametrize("ratio", [2, -1])
def test_fixed_strides_match_torchvision(ratio):
    boxes = [_boxes(40, 2), _boxes(25, 3)]
    ours = _compare_with_torchvision(MultiScaleRoIAlign(NAMES, 7, ratio, strides=STRIDES),
                                     torchvision.ops.MultiScaleRoIAlign(list(NAMES), 7, ratio), _features(1),
                                     boxes, [IMAGE, IMAGE])
    assert ours.shape == (65, 3, 7, 7)
    assert set(assign_fpn_levels(torch.cat(boxes), 2, 5).tolist()) == {2, 3, 4, 5}  # every level is exercised


@pytest.mark.parametrize("image_shapes", [
    [(128, 192), (128, 192)],
    [(120, 150), (97, 190)],  # padded to 128 x 192: torchvision infers the scales from the largest sizes
    [(130, 190), (61, 77)],  # maps of 33, 17, 9, 5 rows: 33 / 130 still rounds to 1/4, etc.
])
@pytest.mark.parametrize("ratio", [2, 0])
def test_inferred_scales_match_torchvision(image_shapes, ratio):
    padded = (max(h for h, _ in image_shapes), max(w for _, w in image_shapes))
    features = _features(7, image=padded)
    features["pool"] = torch.randn(2, 3, 2, 3)  # an extra level that featmap_names leaves out
    boxes = [_boxes(30, 8, padded), _boxes(20, 9, padded)]
    _compare_with_torchvision(MultiScaleRoIAlign(list(NAMES), (5, 4), ratio),
                              torchvision.ops.MultiScaleRoIAlign(list(NAMES), (5, 4), ratio), features, boxes,
                              image_shapes)


@pytest.mark.parametrize("names", [["p3", "p4", "p5"], ["p4"]])
def test_subsets_of_levels_match_torchvision(names):
    # P3..P5 (levels from the first and last inferred scale) and a single level (every box pooled from it)
    features = OrderedDict((k, v) for k, v in _features(10).items() if k in names)
    boxes = [_boxes(30, 11), _boxes(5, 12)]
    _compare_with_torchvision(MultiScaleRoIAlign(names, 3, 2, canonical_scale=160, canonical_level=5),
                              torchvision.ops.MultiScaleRoIAlign(names, 3, 2, canonical_scale=160, canonical_level=5),
                              features, boxes, [IMAGE, IMAGE])


DROP_IN = """
pooler = MultiScaleRoIAlign(["feat1", "feat2", "feat3"], 3, 2)
features = OrderedDict(feat1=torch.rand(1, 5, 64, 64, generator=g), feat2=torch.rand(1, 5, 32, 32, generator=g),
                       feat3=torch.rand(1, 5, 16, 16, generator=g), unused=torch.rand(1, 5, 8, 8, generator=g))
boxes = torch.rand(6, 4, generator=g) * 256
boxes[:, 2:] += boxes[:, :2]
result = (pooler(features, [boxes], [(512, 512)]), repr(pooler))
"""


def test_torchvision_code_runs_with_our_import():
    results = []
    for module in ("torchvision.ops", "fpn.ops"):
        namespace = {"torch": torch, "OrderedDict": OrderedDict, "g": torch.Generator().manual_seed(13)}
        exec(f"from {module} import MultiScaleRoIAlign\n" + textwrap.dedent(DROP_IN), namespace)
        results.append(namespace["result"])
    (ref, ref_repr), (ours, ours_repr) = results
    assert ours.shape == (6, 5, 3, 3) and ours_repr == ref_repr
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_keeps_input_order_and_handles_an_image_without_boxes():
    features = _features(5)
    boxes = [torch.cat((_square(300.0), _square(900.0), _square(150.0))), torch.zeros(0, 4)]  # P4, P5, P3
    pooler = MultiScaleRoIAlign(NAMES, 7, 2, strides=STRIDES)
    out = pooler(features, boxes)
    assert out.shape == (3, 3, 7, 7)
    for i in range(3):  # each box pooled alone gives the same row
        torch.testing.assert_close(out[i:i + 1], pooler(features, [boxes[0][i:i + 1], boxes[1]]), rtol=0, atol=0)
    assert pooler(features, [torch.zeros(0, 4), torch.zeros(0, 4)]).shape == (0, 3, 7, 7)
    p2 = features["p2"].clone().requires_grad_()
    pooler({**features, "p2": p2}, boxes).sum().backward()  # no box on P2: its gradient is zero, not None
    assert torch.equal(p2.grad, torch.zeros_like(p2))


def test_one_host_sync_per_call():
    features = _grad_leaves(_features(14))
    boxes = [_boxes(40, 15), _boxes(25, 16)]
    with HostSyncCounter() as counter:
        out = MultiScaleRoIAlign(NAMES, 7, 2, strides=STRIDES)(features, boxes)
        out.sum().backward()
    assert dict(counter.by_op) == {"Tensor.tolist": 1}, counter.report()  # RoIs per level; roi_align has none


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="powers of two"):
        MultiScaleRoIAlign(NAMES, 7, 2, strides=(4, 8, 12, 32))
    with pytest.raises(ValueError, match="powers of two"):
        MultiScaleRoIAlign(NAMES, 7, 2, strides=(4, 16, 8, 32))
    with pytest.raises(ValueError, match="one stride per"):
        MultiScaleRoIAlign(NAMES, 7, 2, strides=(4, 8, 16))
    with pytest.raises(ValueError, match="featmap_names"):
        MultiScaleRoIAlign("p2", 7, 2)
    with pytest.raises(ValueError, match="output_size"):
        MultiScaleRoIAlign(NAMES, (7, 0), 2)
    features, pooler = _features(6), MultiScaleRoIAlign(NAMES, 7, 2, strides=STRIDES)
    with pytest.raises(ValueError, match="p5"):
        pooler({k: v for k, v in features.items() if k != "p5"}, [_square(10.0), _square(10.0)])
    with pytest.raises(ValueError, match="1 images"):
        pooler(features, [_square(10.0)])
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        pooler(features, [torch.zeros(1, 3), _square(10.0)])
    with pytest.raises(ValueError, match="image_shapes"):
        MultiScaleRoIAlign(NAMES, 7, 2)(features, [_square(10.0), _square(10.0)])
    with pytest.raises(ValueError, match=r"scales \[0.25, 0.0625\]"):  # P2 and P4: not consecutive levels
        MultiScaleRoIAlign(["p2", "p4"], 7, 2)(features, [_square(10.0), _square(10.0)], [IMAGE])
    with pytest.raises(ValueError, match="min_level"):
        assign_fpn_levels(_square(10.0), 5, 2)
