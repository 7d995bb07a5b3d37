"""fpn.ops.AnchorGenerator must produce exactly torchvision's anchors."""
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from fpn.ops import AnchorGenerator

SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)


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
    ours = AnchorGenerator(SIZES, RATIOS)(image_size, feature_shapes, torch.device("cpu"), torch.float32)
    expected = _torchvision_anchors(image_size, feature_shapes)
    assert ours.shape == (sum(h * w for h, w in feature_shapes) * 3, 4)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_layout_location_major_then_ratio():
    generator = AnchorGenerator((32,), (0.5, 1.0, 2.0))
    anchors = generator((8, 8), [(2, 2)], torch.device("cpu"), torch.float32)
    assert generator.num_anchors_per_location == 3
    # ratio 0.5: h = 32 * sqrt(.5) = 22.6, w = 45.3 -> round(+-11.3), round(+-22.6)
    assert anchors[:3].tolist() == [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
    # second location is x + stride 4 on the first row
    assert torch.equal(anchors[3:6], anchors[:3] + torch.tensor([4.0, 0.0, 4.0, 0.0]))
    assert torch.equal(anchors[6:9], anchors[:3] + torch.tensor([0.0, 4.0, 0.0, 4.0]))


def test_dtype_and_cache():
    generator = AnchorGenerator()
    shapes = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    first = generator((16, 16), shapes, torch.device("cpu"), torch.float64)
    assert first.dtype == torch.float64
    assert generator((16, 16), shapes, torch.device("cpu"), torch.float64) is first


def test_wrong_number_of_levels_raises():
    with pytest.raises(ValueError, match="2 feature maps"):
        AnchorGenerator()((64, 64), [(16, 16), (8, 8)], torch.device("cpu"))
