"""fpn.ops.boxes against torchvision.ops and hand-computed values."""
import pytest
import torch
import torchvision

from fpn.ops import box_area, box_iou, clip_boxes_to_image, remove_small_boxes


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50
    return torch.cat((xy, xy + wh), dim=1)  # (n, 4) xyxy


def test_box_area_exact():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [-1.0, -2.0, 3.0, 2.0]])
    assert torch.equal(box_area(boxes), torch.tensor([6.0, 0.0, 16.0]))


def test_box_area_matches_torchvision():
    boxes = _random_boxes(50, 0)
    assert torch.equal(box_area(boxes), torchvision.ops.box_area(boxes))


def test_box_iou_exact():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 1.0, 2.0]])
    expected = torch.tensor([[1.0 / 7.0, 1.0, 0.0, 0.5]])
    assert torch.allclose(box_iou(a, b), expected, rtol=0, atol=1e-7)


def test_box_iou_matches_torchvision():
    a, b = _random_boxes(30, 1), _random_boxes(40, 2)
    ours = box_iou(a, b)
    assert ours.shape == (30, 40)
    torch.testing.assert_close(ours, torchvision.ops.box_iou(a, b), rtol=0, atol=1e-7)


def test_box_iou_empty():
    assert box_iou(torch.zeros(0, 4), _random_boxes(3, 0)).shape == (0, 3)
    assert box_iou(_random_boxes(3, 0), torch.zeros(0, 4)).shape == (3, 0)


def test_clip_boxes_to_image_matches_torchvision_and_keeps_shape():
    boxes = torch.tensor([[-5.0, -3.0, 50.0, 20.0], [10.0, 12.0, 30.0, 40.0], [70.0, 90.0, 80.0, 95.0]])
    clipped = clip_boxes_to_image(boxes, (30, 60))  # height 30, width 60
    assert torch.equal(clipped, torch.tensor([[0.0, 0.0, 50.0, 20.0], [10.0, 12.0, 30.0, 30.0],
                                              [60.0, 30.0, 60.0, 30.0]]))
    assert torch.equal(clipped, torchvision.ops.clip_boxes_to_image(boxes, (30, 60)))
    batched = boxes.reshape(1, 3, 4).repeat(2, 1, 1)
    assert clip_boxes_to_image(batched, (30, 60)).shape == (2, 3, 4)


def test_remove_small_boxes_inclusive_threshold():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 4.0], [0.0, 0.0, 4.0, 0.99], [2.0, 2.0, 5.0, 6.0]])
    keep = remove_small_boxes(boxes, 1.0)
    assert keep.dtype == torch.int64
    assert keep.tolist() == [0, 3]
    assert torch.equal(keep, torchvision.ops.remove_small_boxes(boxes, 1.0))
    assert remove_small_boxes(torch.zeros(0, 4), 1.0).tolist() == []


@pytest.mark.parametrize("bad", [torch.zeros(3, 5), torch.zeros(4), torch.zeros(2, 3, 4)])
def test_bad_box_shapes_raise(bad):
    with pytest.raises(ValueError, match="shape"):
        box_iou(bad, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="shape"):
        box_area(bad)
    with pytest.raises(ValueError, match="shape"):
        remove_small_boxes(bad, 1.0)


def test_clip_bad_shape_raises():
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        clip_boxes_to_image(torch.zeros(3, 5), (10, 10))
