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
    assert torch.equal(ours, torchvision.ops.box_iou(a, b))  # same arithmetic in float32


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
    if bad.shape[-1] != 4:
        with pytest.raises(ValueError, match=r"\(3, 5\)"):
            box_area(bad)
    if bad.dim() < 2 or bad.shape[-1] != 4:  # batched (B, N, 4) boxes are valid for box_iou, as in torchvision
        with pytest.raises(ValueError, match="shape"):
            box_iou(bad, torch.zeros(1, 4))
        with pytest.raises(ValueError, match="boxes2 must have shape"):
            box_iou(torch.zeros(1, 4), bad)
    with pytest.raises(ValueError, match="shape"):
        remove_small_boxes(bad, 1.0)


@pytest.mark.parametrize("fmt", ["xyzw", "cxcywhr"])
def test_bad_format_raises(fmt):
    with pytest.raises(ValueError, match=fmt):
        box_iou(torch.zeros(1, 4), torch.zeros(1, 4), fmt=fmt)
    with pytest.raises(ValueError, match=fmt):
        box_area(torch.zeros(1, 4), fmt=fmt)


# Integer dtypes: areas in int32 for the narrow ones (torchvision's upcast), IoUs in float32.
INT_DTYPES = [(torch.int8, torch.int32), (torch.int16, torch.int32), (torch.uint8, torch.int32),
              (torch.int32, torch.int32), (torch.int64, torch.int64)]


@pytest.mark.parametrize("dtype, area_dtype", INT_DTYPES)
def test_integer_boxes_dtypes_and_no_overflow(dtype, area_dtype):
    boxes = torch.tensor([[0, 0, 120, 100], [10, 20, 60, 120]], dtype=dtype)  # areas overflow 8 and 16 bits
    area = box_area(boxes)
    assert area.dtype == area_dtype and area.tolist() == [12000, 5000]
    iou = box_iou(boxes, boxes)
    assert iou.dtype == torch.float32
    torch.testing.assert_close(iou, torch.tensor([[1.0, 4000 / 13000], [4000 / 13000, 1.0]]), rtol=1e-7, atol=0)
    assert torch.equal(area, torchvision.ops.box_area(boxes))


def test_narrow_integers_widened_before_differences():
    """torchvision subtracts corners in the boxes' own dtype: uint8 wraps around for boxes that do not overlap
    (negative IoU) and int8 overflows for intersections wider than 127 (IoU 0 for a box with itself). Ours widens
    first and gives the true IoU."""
    a = torch.tensor([[0, 0, 10, 10]], dtype=torch.uint8)
    b = torch.tensor([[20, 20, 30, 30]], dtype=torch.uint8)
    assert box_iou(a, b).tolist() == [[0.0]]
    assert torchvision.ops.box_iou(a, b).item() < 0
    wide = torch.tensor([[-100, -100, 100, 100]], dtype=torch.int8)
    assert box_iou(wide, wide).tolist() == [[1.0]]
    assert torchvision.ops.box_iou(wide, wide).tolist() == [[0.0]]
    # remove_small_boxes: x2 < x1 is a negative width, not 246 after uint8 wrap-around
    assert remove_small_boxes(torch.tensor([[10, 0, 0, 5]], dtype=torch.uint8), 1.0).tolist() == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_boxes_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(20, 2, generator=g) * 200
    boxes = torch.cat((xy, xy + 300 + torch.rand(20, 2, generator=g) * 500), dim=1).to(dtype)  # 300-800 px
    area = box_area(boxes)
    assert area.dtype == torch.float32 and area.isfinite().all()
    assert torch.equal(area, box_area(boxes.float()))
    iou = box_iou(boxes, boxes[:7])
    assert iou.dtype == torch.float32 and iou.isfinite().all()
    assert torch.equal(iou, box_iou(boxes.float(), boxes[:7].float()))
    assert torch.equal(iou.diagonal(), torch.ones(7))
    # computed in the boxes' own dtype this would overflow (float16) or lose the areas' low bits (bfloat16)
    assert not torch.equal(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float(), area)


def test_float64_kept():
    boxes = _random_boxes(5, 4).double()
    assert box_area(boxes).dtype == torch.float64 and box_iou(boxes, boxes).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.int8, torch.float16, torch.float32, torch.int64])
def test_empty_inputs(dtype):
    empty, three = torch.zeros(0, 4, dtype=dtype), torch.tensor([[0, 0, 5, 5]] * 3, dtype=dtype)
    assert box_iou(empty, three).shape == (0, 3) and box_iou(three, empty).shape == (3, 0)
    assert box_iou(empty, empty).shape == (0, 0)
    assert box_iou(empty, three).dtype == torchvision.ops.box_iou(empty, three).dtype
    assert box_area(empty).shape == (0,) and box_area(empty).dtype == torchvision.ops.box_area(empty).dtype
    assert clip_boxes_to_image(empty, (10, 10)).shape == (0, 4)
    assert remove_small_boxes(empty, 1.0).shape == (0,)


def test_batched_and_formats_match_torchvision():
    a, b = _random_boxes(6, 5).reshape(2, 3, 4), _random_boxes(10, 6).reshape(2, 5, 4)
    assert torch.equal(box_iou(a, b), torchvision.ops.box_iou(a, b))  # (2, 3, 5)
    assert torch.equal(box_area(a), torchvision.ops.box_area(a))  # (2, 3)
    g = torch.Generator().manual_seed(7)
    a, b = torch.rand(8, 4, generator=g) * 50, torch.rand(9, 4, generator=g) * 50  # (x, y, w, h) / (cx, cy, w, h)
    for fmt in ("xywh", "cxcywh"):
        assert torch.equal(box_iou(a, b, fmt=fmt), torchvision.ops.box_iou(a, b, fmt=fmt))
        assert torch.equal(box_area(a, fmt=fmt), torchvision.ops.box_area(a, fmt=fmt))


def test_clip_integer_boxes_bound_beyond_dtype():
    boxes = torch.tensor([[-5, -5, 100, 120]], dtype=torch.int8)
    assert clip_boxes_to_image(boxes, (300, 50)).tolist() == [[0, 0, 50, 120]]  # torchvision raises here
    assert clip_boxes_to_image(boxes, (300, 50)).dtype == torch.int8


def test_clip_bad_shape_raises():
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        clip_boxes_to_image(torch.zeros(3, 5), (10, 10))
