"""Every fast form of NMS keeps exactly what fpn/ops/nms_reference.py, greedy NMS as written in its definition, keeps.

The fast forms: nms and batched_nms with the tiles the CPU uses and with the fixed-shape blocks accelerators use
(the strategy fixture forces either on the CPU), and nms_per_image. The reference itself is checked against
torchvision first, so a test failing here points at the fast code, not at the oracle.
"""
import importlib

import pytest
import torch
import torchvision

from fpn.ops import batched_nms, nms
from fpn.ops.nms_per_image import nms_per_image
from fpn.ops.nms_reference import batched_nms_reference, nms_per_image_reference, nms_reference

nms_module = importlib.import_module("fpn.ops.nms")  # the module (fpn.ops.nms is also the function's name)


@pytest.fixture(params=["tiles", "blocks"])
def strategy(request, monkeypatch):
    if request.param == "blocks":
        monkeypatch.setattr(nms_module, "SPARSE_DEVICES", ())
    return request.param


def _clustered(n: int, objects: int, spread: float, seed: int):
    """(n, 4) xyxy boxes jittered around `objects` objects of 20 .. 400 px (a trained detector's boxes), (n,) scores."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([1344.0, 800.0])
    size = torch.exp(torch.empty(objects, 2).uniform_(3.0, 6.0, generator=g))
    which = torch.randint(0, objects, (n,), generator=g)
    c = centre[which] + torch.randn(n, 2, generator=g) * size[which] * spread
    s = size[which] * torch.exp(torch.randn(n, 2, generator=g) * spread)
    return torch.cat((c - s / 2, c + s / 2), dim=1), torch.randperm(n, generator=g).float() / n  # distinct


def _random(n: int, seed: int):
    """(n, 4) xyxy boxes of up to 60 px spread over 600 x 600 px (most are kept), (n,) scores."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 600
    return torch.cat((xy, xy + torch.rand(n, 2, generator=g) * 60), dim=1), torch.randperm(n, generator=g).float() / n


def _chain(n: int):
    # each box overlaps its neighbour with IoU 31/33 and the next but one with 30/34: at 0.9 greedy keeps every other
    x = torch.arange(n, dtype=torch.float32)
    return torch.stack((x, torch.zeros(n), x + 32, torch.full((n,), 32.0)), dim=1), torch.linspace(1, 0, n)


def _zero_area():
    boxes, scores = _clustered(400, 6, 0.1, 7)
    boxes = boxes.round()  # integer coordinates: exact IoUs such as 1/2 meet the threshold exactly
    boxes[::5, 2] = boxes[::5, 0]  # zero width
    boxes[1::9, 3] = boxes[1::9, 1]  # zero height
    boxes[2::13] = 0.0  # points at the origin, all identical
    return boxes, scores


def _tied(n: int, seed: int):
    boxes, scores = _clustered(n, 12, 0.15, seed)
    return boxes, (scores * 4).round() / 4  # five distinct scores


CASES = {
    "no boxes": lambda: (torch.zeros(0, 4), torch.zeros(0)),
    "one box": lambda: (torch.tensor([[3.0, 4.0, 30.0, 40.0]]), torch.tensor([0.2])),
    "identical boxes": lambda: (torch.tensor([[10.0, 10.0, 90.0, 70.0]]).repeat(300, 1), torch.rand(300)),
    "identical boxes, tied scores": lambda: (torch.tensor([[10.0, 10.0, 90.0, 70.0]]).repeat(300, 1),
                                             torch.ones(300)),
    "tied scores": lambda: _tied(800, 1),
    "clustered, 2000 boxes around 10 objects": lambda: _clustered(2000, 10, 0.1, 2),
    "clustered, 3000 boxes around 150 objects": lambda: _clustered(3000, 150, 0.15, 3),
    "suppression chain": lambda: _chain(400),
    "random, 3000 boxes": lambda: _random(3000, 4),
    "zero-area boxes": _zero_area,
    "nested boxes": lambda: (torch.stack([torch.tensor([i, i, 600.0 - i, 500.0 - i]) for i in range(0, 240, 2)]),
                             torch.rand(120, generator=torch.Generator().manual_seed(5))),
}
THRESHOLDS = [0.0, 0.5, 0.9]


@pytest.mark.parametrize("case", ["tied scores", "clustered, 2000 boxes around 10 objects", "suppression chain",
                                  "zero-area boxes", "random, 3000 boxes"])
def test_reference_matches_torchvision(case):
    # scores are distinct above 1,000 boxes, where torchvision's batched_nms orders tied scores arbitrarily
    boxes, scores = CASES[case]()
    idxs = torch.arange(boxes.shape[0]) % 3
    for threshold in THRESHOLDS:
        assert torch.equal(nms_reference(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))
        assert torch.equal(batched_nms_reference(boxes, scores, idxs, threshold),
                           torchvision.ops.batched_nms(boxes, scores, idxs, threshold))


def test_reference_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0],
                          [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.9])
    # IoU(3, 0) = 0.5 (not > 0.5), IoU(0, 1) = 81 / 119, box 4 is box 0 with the same score: visited after it
    assert nms_reference(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert nms_reference(boxes, scores, 0.49).tolist() == [3, 1, 2]
    assert batched_nms_reference(boxes, scores, torch.tensor([0, 0, 0, 0, 1]), 0.5).tolist() == [3, 0, 4, 2]
    assert nms_reference(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("case", list(CASES))
def test_nms_matches_reference(case, threshold, strategy):
    boxes, scores = CASES[case]()
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, nms_reference(boxes, scores, threshold))


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("case", list(CASES))
def test_batched_nms_matches_reference(case, threshold, strategy):
    boxes, scores = CASES[case]()
    g = torch.Generator().manual_seed(6)
    idxs = torch.randint(0, 4, (boxes.shape[0],), generator=g) * 1_000_003 - 2_000_000  # huge and negative ids
    assert torch.equal(batched_nms(boxes, scores, idxs, threshold),
                       batched_nms_reference(boxes, scores, idxs, threshold))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64])
@pytest.mark.parametrize("case", ["tied scores", "clustered, 2000 boxes around 10 objects", "zero-area boxes"])
def test_other_dtypes_match_reference(case, dtype, strategy):
    # half-precision and integer boxes are compared in float32, float64 boxes in float64, by both
    boxes, scores = CASES[case]()
    boxes = boxes.to(dtype)
    if dtype.is_floating_point:
        scores = scores.to(dtype)
    idxs = torch.arange(boxes.shape[0]) % 3
    for threshold in (0.5, 0.7):
        assert torch.equal(nms(boxes, scores, threshold), nms_reference(boxes, scores, threshold))
        assert torch.equal(batched_nms(boxes, scores, idxs, threshold),
                           batched_nms_reference(boxes, scores, idxs, threshold))


def _candidates(seed: int, counts, num_classes: int):
    boxes, scores = _clustered(sum(counts), 8, 0.15, seed)
    scores = (scores * 8).round() / 8  # coarse: many tied scores
    classes = torch.randint(num_classes, (sum(counts),), generator=torch.Generator().manual_seed(seed))
    images = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    return boxes, scores, classes, images, scores > 0.2


@pytest.mark.parametrize("counts", [[0], [1], [300, 0, 450, 800], [1200]])
def test_nms_per_image_matches_reference(counts, strategy):
    num_classes = 3
    boxes, scores, classes, images, valid = _candidates(len(counts), counts, num_classes)
    for threshold, top_k in [(0.5, 1000), (0.3, 7), (0.7, 1), (0.0, 50)]:
        got = nms_per_image(boxes, scores, classes, images, valid, len(counts), num_classes, threshold, top_k)
        expected = nms_per_image_reference(boxes, scores, classes, images, valid, len(counts), threshold, top_k)
        assert len(got) == len(counts)
        for g, e in zip(got, expected):
            assert g.dtype == torch.int64 and torch.equal(g, e)
