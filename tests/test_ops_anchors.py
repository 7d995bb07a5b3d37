"""fpn.ops.AnchorGenerator must produce exactly torchvision's anchors."""
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

import fpn.ops.anchors as anchors_module
from fpn.config import AnchorConfig, RPNConfig
from fpn.heads.rpn import RegionProposalNetwork
from fpn.ops import AnchorGenerator
from fpn.spec import ImageBatch

SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)
CPU = torch.device("cpu")


def _torchvision_anchors(image_size, feature_shapes):
    generator = TVAnchorGenerator(tuple((s,) for s in SIZES), (RATIOS,) * len(SIZES))
    images = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    features = [torch.zeros(1, 1, h, w) for h, w in feature_shapes]
    return generator(images, features)[0]


@pytest.mark.parametrize(
    "image_size, feature_shapes",
    [
        ((800, 1088), [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]),  # P6 stride 800 // 13 = 61
        ((96, 160), [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]),  # odd P6 sizes
        ((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]),
    ],
)
def test_identical_to_torchvision(image_size, feature_shapes):
    ours = AnchorGenerator(SIZES, RATIOS).anchors_for(image_size, feature_shapes, CPU, torch.float32)
    expected = _torchvision_anchors(image_size, feature_shapes)
    assert ours.shape == (sum(h * w for h, w in feature_shapes) * 3, 4)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_layout_location_major_then_ratio_then_size():
    generator = AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),))
    anchors = generator.anchors_for((8, 8), [(2, 2)], CPU, torch.float32)
    assert generator.num_anchors_per_location() == [3]
    # ratio 0.5: h = 32 * sqrt(.5) = 22.6, w = 45.3 -> round(+-11.3), round(+-22.6)
    assert anchors[:3].tolist() == [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
    # second location is x + stride 4 on the first row
    assert torch.equal(anchors[3:6], anchors[:3] + torch.tensor([4.0, 0.0, 4.0, 0.0]))
    assert torch.equal(anchors[6:9], anchors[:3] + torch.tensor([0.0, 4.0, 0.0, 4.0]))
    two_sizes = AnchorGenerator(((16, 32),), ((1.0, 2.0),)).generate_anchors((16, 32), (1.0, 2.0))
    # ratio 1 with sizes 16, 32, then ratio 2 (h = s * 1.414, w = s / 1.414) with sizes 16, 32
    assert two_sizes.tolist() == [[-8, -8, 8, 8], [-16, -16, 16, 16], [-6, -11, 6, 11], [-11, -23, 11, 23]]


def test_constructor_forms_like_torchvision():
    flat = AnchorGenerator((32, 64), (0.5, 1.0))  # one size per level, the same ratios everywhere
    assert flat.sizes == ((32,), (64,)) and flat.aspect_ratios == ((0.5, 1.0), (0.5, 1.0))
    default = AnchorGenerator()
    assert default.sizes == ((128, 256, 512),) and default.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert default.num_anchors_per_location() == [9]
    mixed = AnchorGenerator(((32, 40), (64,)), ((1.0,), (0.5, 1.0, 2.0)))
    assert mixed.num_anchors_per_location() == [2, 3]
    assert [tuple(c.shape) for c in mixed.cell_anchors] == [(2, 4), (3, 4)]


@pytest.mark.parametrize(
    "sizes, ratios, match",
    [
        ((), (1.0,), "at least one"),
        (((32,), (64,)), ((1.0,), (1.0,), (2.0,)), "2 levels of sizes"),
        (((32,), ()), (1.0,), r"\(\)"),
        ((32, -64), (1.0,), "-64"),
        ((32,), (0.0,), "0.0"),
    ],
)
def test_bad_configuration_raises(sizes, ratios, match):
    with pytest.raises(ValueError, match=match):
        AnchorGenerator(sizes, ratios)


def test_is_a_module_without_state():
    generator = AnchorGenerator(SIZES, RATIOS)
    generator.anchors_for((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], CPU)
    assert isinstance(generator, torch.nn.Module)
    assert generator.state_dict() == {} and list(generator.parameters()) == [] and list(generator.buffers()) == []
    rpn = RegionProposalNetwork(8, RPNConfig(), AnchorConfig())
    assert all(key.startswith("head.") for key in rpn.state_dict())  # the detector's checkpoints don't change


def test_forward_accepts_image_list_and_image_batch():
    generator = AnchorGenerator(SIZES, RATIOS)
    features = [torch.zeros(2, 1, 64 // s, 96 // s) for s in (4, 8, 16, 32, 64)]
    batch = torch.zeros(2, 3, 64, 96)
    from_list = generator(ImageList(batch, [(64, 90), (50, 96)]), features)
    from_batch = generator(ImageBatch(batch, [(64, 90), (50, 96)]), features)
    assert len(from_list) == 2 and all(torch.equal(a, from_list[0]) for a in from_list + from_batch)
    from_list[0].zero_()  # copies: the cache and the other image are untouched
    assert torch.equal(from_list[1], from_batch[0])
    with pytest.raises(ValueError, match="dict"):
        generator({"tensors": batch}, features)


def test_dtype_and_cache():
    generator = AnchorGenerator(SIZES, RATIOS)
    shapes = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    first = generator.anchors_for((16, 16), shapes, CPU, torch.float64)
    assert first.dtype == torch.float64
    assert generator.anchors_for((16, 16), shapes, CPU, torch.float64) is first


def test_cache_is_bounded_lru():
    generator = AnchorGenerator(((32,),), ((1.0,),))
    bound = anchors_module.ANCHOR_CACHE_SIZE
    kept = generator.anchors_for((32, 32), [(8, 8)], CPU)
    for i in range(1, 3 * bound):  # multi-scale training: a new padded size every step
        generator.anchors_for((32 + 32 * i, 32), [(8 + 8 * i, 8)], CPU)
        generator.anchors_for((32, 32), [(8, 8)], CPU)  # used every step: stays cached
        assert len(generator._cache) <= bound
    assert len(generator._cache) == bound
    assert generator.anchors_for((32, 32), [(8, 8)], CPU) is kept
    oldest = generator.anchors_for((64, 32), [(16, 8)], CPU)  # long evicted: computed again
    assert len(generator._cache) == bound and torch.equal(oldest, generator.anchors_for((64, 32), [(16, 8)], CPU))


def test_wrong_number_of_levels_raises():
    generator = AnchorGenerator(SIZES, RATIOS)
    with pytest.raises(ValueError, match="2 feature maps"):
        generator.anchors_for((64, 64), [(16, 16), (8, 8)], CPU)
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    with pytest.raises(ValueError, match="1 feature maps but 5"):
        generator(images, [torch.zeros(1, 1, 16, 16)])


def test_rpn_needs_the_same_anchor_count_at_every_level():
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        RegionProposalNetwork(8, RPNConfig(), AnchorConfig(sizes=((32, 40), (64,)), aspect_ratios=((1.0,), RATIOS)))
