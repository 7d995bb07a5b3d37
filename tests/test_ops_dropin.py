"""Code written against torchvision runs on fpn.ops when only the import changes.

Each snippet below is torchvision user code. It is executed twice, once after TORCHVISION_IMPORTS and once after
FPN_IMPORTS (exec, so that the snippet's text is the same to the letter), and the two `result`s are compared:
exactly (values and dtypes) for anchors, integer results and float results computed in the same order; with a
stated tolerance for IoUs of float16/bfloat16 boxes, where torchvision subtracts the corners in the half dtype
and ours in float32 (see test_half_boxes).
"""
import textwrap

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

TORCHVISION_IMPORTS = """
from torchvision.ops import batched_nms, box_area, box_iou, clip_boxes_to_image, nms, remove_small_boxes
from torchvision.models.detection.anchor_utils import AnchorGenerator
"""
FPN_IMPORTS = """
from fpn.ops import batched_nms, box_area, box_iou, clip_boxes_to_image, nms, remove_small_boxes
from fpn.ops import AnchorGenerator
"""

BOX_OPS = """
area = box_area(boxes)
iou = box_iou(boxes, others)
clipped = clip_boxes_to_image(boxes, (50, 70))
keep = remove_small_boxes(boxes, 10)
result = {"area": area, "iou": iou, "clipped": clipped, "keep": keep}
"""

EMPTY_BOXES = """
result = {
    "iou_0_by_m": box_iou(empty, others),
    "iou_n_by_0": box_iou(others, empty),
    "area": box_area(empty),
    "clipped": clip_boxes_to_image(empty, (5, 5)),
    "keep": remove_small_boxes(empty, 1.0),
}
"""

ANCHORS = """
anchor_generator = AnchorGenerator(sizes, aspect_ratios)
cells = [cell.clone() for cell in anchor_generator.cell_anchors]
images = ImageList(torch.zeros(2, 3, 96, 136), [(96, 120), (80, 136)])  # two images of different sizes, padded
feature_maps = [torch.zeros(2, 8, h, w, dtype=dtype) for h, w in [(24, 34), (12, 17), (6, 9)]]
anchors = anchor_generator(images, feature_maps)
result = {"anchors": anchors, "per_location": anchor_generator.num_anchors_per_location(), "cells": cells}
"""

GRID_ANCHORS = """
anchor_generator = AnchorGenerator((16, 32), (0.5, 1.0, 2.0))
base = anchor_generator.generate_anchors([16, 24], [0.5, 2.0], dtype=torch.float64)
anchor_generator.set_cell_anchors(torch.float32, torch.device("cpu"))
strides = [[torch.tensor(8), torch.tensor(7)], [torch.tensor(16), torch.tensor(15)]]
grids = anchor_generator.grid_anchors([[4, 5], [2, 3]], strides)
result = {"base": base, "grids": grids}
"""


NMS = """
keep = nms(boxes, scores, 0.5)
per_class = batched_nms(boxes, scores, idxs, 0.5)
result = {"keep": keep, "per_class": per_class}
"""

# torchvision's own test (test_ops.py, TestBatchedNMS): batched_nms returns early for empty boxes, before it
# looks at the other arguments
EMPTY_NMS = """
empty = torch.empty((0,), dtype=torch.int64)
result = {
    "no boxes, nothing else": batched_nms(empty, None, None, None),
    "(0,) float": batched_nms(torch.empty((0,)), None, None, None),
    "(0, 4)": batched_nms(torch.empty((0, 4)), torch.empty((0,)), torch.empty((0,), dtype=torch.int64), 0.5),
    "(0, 4) by nms": nms(torch.empty((0, 4)), torch.empty((0,)), 0.5),
}
"""


def _run(imports: str, snippet: str, **inputs):
    namespace = dict(inputs, torch=torch, ImageList=ImageList)
    exec(textwrap.dedent(imports) + textwrap.dedent(snippet), namespace)
    return namespace["result"]


def _both(snippet: str, **inputs):
    """(torchvision's result, ours) for the same snippet and inputs (cloned, so neither sees the other's)."""
    copies = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return _run(TORCHVISION_IMPORTS, snippet, **inputs), _run(FPN_IMPORTS, snippet, **copies)


def _assert_same(theirs, ours):
    """Same structure, dtypes and values; NaN (0 / 0 IoU of two empty boxes) equal to NaN."""
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


def _boxes_around(point: int, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, 4) boxes that all contain (point, point) and lie in [0, 2 * point]: every pair overlaps, so the
    corner differences torchvision takes in the boxes' own dtype neither wrap (uint8) nor overflow (int8)."""
    g = torch.Generator().manual_seed(seed)
    top_left = torch.randint(0, point + 1, (n, 2), generator=g)
    bottom_right = torch.randint(point, 2 * point + 1, (n, 2), generator=g)
    return torch.cat((top_left, bottom_right), dim=1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint8, torch.int32, torch.int64])
def test_integer_boxes(dtype):
    boxes, others = _boxes_around(60, 12, 0, dtype), _boxes_around(60, 9, 1, dtype)
    boxes[0] = torch.tensor([60, 60, 60, 60])  # an empty box: NaN IoU with itself, 0 with the others
    others[0] = boxes[0]
    theirs, ours = _both(BOX_OPS, boxes=boxes, others=others)
    _assert_same(theirs, ours)
    assert ours["area"].dtype == (torch.int64 if dtype == torch.int64 else torch.int32)
    assert ours["iou"].dtype == torch.float32 and ours["clipped"].dtype == dtype


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64])
def test_wide_integer_boxes_that_do_not_overlap(dtype):
    """Boxes up to 2,000 px, most pairs disjoint, areas beyond int16: exact where torchvision's own dtype holds
    the corner differences (int16 and up)."""
    g = torch.Generator().manual_seed(2)
    top_left = torch.randint(0, 1000, (30, 2), generator=g)
    boxes = torch.cat((top_left, top_left + torch.randint(0, 1000, (30, 2), generator=g)), dim=1).to(dtype)
    theirs, ours = _both(BOX_OPS, boxes=boxes, others=boxes[10:])
    _assert_same(theirs, ours)


# Unit roundoff of each half dtype; see test_half_boxes for the bound 4u.
HALF_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_boxes(dtype):
    """Boxes of 300-800 px. Areas, clipping and kept indices are exact. IoU: torchvision takes the intersection's
    width and height as differences in the half dtype, each rounded with relative error <= u, so its intersection
    is off by a factor (1 + e), |e| <= 2u, and IoU = I / (A + B - I) then moves by at most 2u * IoU * (1 + IoU)
    <= 4u; ours takes them in float32 (exact for half inputs) and is the float32 IoU of the same boxes."""
    g = torch.Generator().manual_seed(4)
    top_left = torch.rand(40, 2, generator=g) * 300
    boxes = torch.cat((top_left, top_left + 300 + torch.rand(40, 2, generator=g) * 500), dim=1).to(dtype)
    others = boxes[torch.randperm(40, generator=g)[:25]] + 7
    theirs, ours = _both(BOX_OPS, boxes=boxes, others=others)
    assert ours["iou"].isfinite().all() and ours["iou"].dtype == theirs["iou"].dtype == torch.float32
    torch.testing.assert_close(ours.pop("iou"), theirs.pop("iou"), rtol=0, atol=4 * HALF_ROUNDOFF[dtype])
    _assert_same(theirs, ours)
    assert ours["area"].dtype == torch.float32 and ours["clipped"].dtype == dtype


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int64, torch.float16, torch.float32])
def test_empty_boxes(dtype):
    others = _boxes_around(10, 3, 5, dtype)
    theirs, ours = _both(EMPTY_BOXES, empty=torch.zeros(0, 4, dtype=dtype), others=others)
    _assert_same(theirs, ours)
    assert ours["iou_0_by_m"].shape == (0, 3) and ours["iou_n_by_0"].shape == (3, 0)


def test_nms_and_batched_nms():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5], [2, 0, 12, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.85])
    theirs, ours = _both(NMS, boxes=boxes, scores=scores, idxs=torch.tensor([0, 1, 0, 0, 0]))
    _assert_same(theirs, ours)
    assert ours["per_class"].tolist() == [3, 0, 1, 2]


def test_empty_nms():
    theirs, ours = _both(EMPTY_NMS)
    _assert_same(theirs, ours)
    assert all(keep.shape == (0,) and keep.dtype == torch.int64 for keep in ours.values())


@pytest.mark.parametrize(
    "sizes, aspect_ratios",
    [
        (((32, 40, 50), (64, 80), (128,)), ((0.5, 1.0, 2.0), (1.0,), (0.25, 1.0, 4.0))),  # several sizes per level
        (((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3),  # torchvision's FPN form
        ((32, 64, 128), (0.5, 1.0, 2.0)),  # flat forms: one size per level, the same ratios at every level
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_anchors(sizes, aspect_ratios, dtype):
    theirs, ours = _both(ANCHORS, sizes=sizes, aspect_ratios=aspect_ratios, dtype=dtype)
    _assert_same(theirs, ours)
    assert len(ours["anchors"]) == 2 and ours["anchors"][0].dtype == dtype


def test_generate_and_grid_anchors():
    theirs, ours = _both(GRID_ANCHORS)
    _assert_same(theirs, ours)
    assert [tuple(g.shape) for g in ours["grids"]] == [(4 * 5 * 3, 4), (2 * 3 * 3, 4)]
