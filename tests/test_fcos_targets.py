"""FCOS's target assignment and losses tested directly (fpn/heads/fcos_targets.py, fpn/ops/losses.py): hand-made
cases with known answers, and the pure losses against torchvision.ops."""
import torch
import torchvision

from fpn.heads.fcos_targets import fcos_losses, match_locations
from fpn.ops.losses import generalized_box_iou_loss, sigmoid_focal_loss


def _anchors(centres, side):
    """(L, 4) reference boxes of side `side` centred on the given (x, y) locations."""
    c = torch.tensor(centres, dtype=torch.float32)
    return torch.cat([c - side / 2, c + side / 2], dim=1)


def test_a_location_inside_two_boxes_learns_the_smaller():
    anchors = _anchors([(50.0, 50.0)], 8)  # one level only: range (0, inf)
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [40.0, 40.0, 60.0, 62.0]])
    assert match_locations(anchors, boxes, [1], radius=100.0).tolist() == [1]
    assert match_locations(anchors, boxes.flip(0), [1], radius=100.0).tolist() == [0]


def test_centre_sampling_radius_and_inside_the_box():
    # a 100 px box centred on (50, 50); locations 11 and 13 px right of the centre, reference side 8:
    # radius 1.5 -> within 12 px of the centre
    anchors = _anchors([(61.0, 50.0), (63.0, 50.0), (150.0, 50.0)], 8)
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    assert match_locations(anchors, boxes, [3], radius=1.5).tolist() == [0, -1, -1]
    assert match_locations(anchors, boxes, [3], radius=100.0).tolist() == [0, 0, -1]  # (150, 50) is outside


def test_scale_ranges_per_level():
    # three levels of sides 8, 16, 32: ranges (0, 64), (64, 128), (128, inf) of the longest distance to a side
    anchors = torch.cat([_anchors([(100.0, 100.0)], 8), _anchors([(100.0, 100.0)], 16), _anchors([(100.0, 100.0)], 32)])
    small = torch.tensor([[70.0, 70.0, 130.0, 130.0]])  # distances 30
    medium = torch.tensor([[20.0, 20.0, 180.0, 180.0]])  # 80
    large = torch.tensor([[0.0, 0.0, 400.0, 400.0]])  # 300
    per_level = [1, 1, 1]
    assert match_locations(anchors, small, per_level, 100.0).tolist() == [0, -1, -1]
    assert match_locations(anchors, medium, per_level, 100.0).tolist() == [-1, 0, -1]
    assert match_locations(anchors, large, per_level, 100.0).tolist() == [-1, -1, 0]


def test_no_boxes_means_background_everywhere_and_finite_losses():
    anchors = _anchors([(4.0, 4.0), (12.0, 4.0)], 8)
    assert match_locations(anchors, torch.zeros(0, 4), [2], 1.5).tolist() == [-1, -1]
    logits = torch.randn(1, 2, 3, requires_grad=True)
    losses = fcos_losses(logits, torch.rand(1, 2, 4), torch.randn(1, 2), anchors,
                         [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], [2])
    assert losses["bbox_regression"].item() == 0 and losses["bbox_ctrness"].item() == 0
    expected = torchvision.ops.sigmoid_focal_loss(logits, torch.zeros(1, 2, 3), reduction="sum")  # / max(1, 0)
    assert torch.allclose(losses["classification"], expected)
    losses["classification"].backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_and_giou_losses_match_torchvision():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=generator) * 3
    targets = (torch.rand(50, 7, generator=generator) > 0.8).float()
    for alpha, gamma in ((0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)):
        expected = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="none")
        assert torch.allclose(sigmoid_focal_loss(logits, targets, alpha, gamma), expected, rtol=1e-6, atol=1e-7)
    xy = torch.rand(40, 2, generator=generator) * 100
    boxes1 = torch.cat([xy, xy + torch.rand(40, 2, generator=generator) * 50], 1)
    boxes2 = torch.cat([xy + 10, xy + 10 + torch.rand(40, 2, generator=generator) * 50], 1)
    boxes2[0] = boxes1[0]  # identical: loss 0
    boxes2[1] = torch.tensor([500.0, 500.0, 510.0, 510.0])  # disjoint and far: loss close to 2
    boxes1[2, 2:] = boxes1[2, :2]  # degenerate (zero area)
    expected = torchvision.ops.generalized_box_iou_loss(boxes1, boxes2, reduction="none")
    found = generalized_box_iou_loss(boxes1, boxes2)
    assert torch.allclose(found, expected, rtol=1e-6, atol=1e-6)
    assert found[0].abs() < 1e-6 and found[1] > 1.9
    assert generalized_box_iou_loss(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)
