"""Every fast form of NMS keeps exactly what fpn/ops/nms_reference.py, greedy NMS as written in its definition, keeps.

The fast forms: nms and batched_nms with the tiles the CPU uses and with the fixed-shape blocks accelerators use
(the strategy fixture forces either on the CPU), and nms_per_image. The reference itself is checked against
torchvision first, so a test failing here points at the fast code, not at the oracle.

The reference is slow ((kept boxes) x N in Python), so each input is built once and its reference result computed
once (the caches below), then held against every fast form on both paths. Inputs are as small as their purpose
allows: up to WINDOW = 256 boxes make one window with tiles and more start with FIRST_WINDOW = 64, so a few hundred
mostly kept boxes already span several windows there; fixed-shape blocks take BLOCK_WINDOW = 1024 boxes a window,
and one case (MANY_WINDOWS), at one threshold, keeps more than twice that to span three of them.
"""
import functools
import importlib

import pytest
import torch
import torchvision

from fpn.ops import batched_nms, nms
from fpn.ops.nms_per_image import nms_per_image
from fpn.ops.nms_reference import batched_nms_reference, nms_per_image_reference, nms_reference

nms_module = importlib.import_module("fpn.ops.nms")  # the module (fpn.ops.nms is also the function's name)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # small tensors: a second intra-op thread saves little, and on cores shared with other jobs every parallel op
    # waits for a thread that is not running (the file took minutes so); results do not depend on the thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


MANY_WINDOWS = "random, 2200 boxes"  # 2000 kept at 0.5: 3 windows of blocks, 9 with tiles
CASES = {
    "no boxes": lambda: (torch.zeros(0, 4), torch.zeros(0)),
    "one box": lambda: (torch.tensor([[3.0, 4.0, 30.0, 40.0]]), torch.tensor([0.2])),
    "identical boxes": lambda: (torch.tensor([[10.0, 10.0, 90.0, 70.0]]).repeat(300, 1),
                                torch.rand(300, generator=torch.Generator().manual_seed(8))),
    "identical boxes, tied scores": lambda: (torch.tensor([[10.0, 10.0, 90.0, 70.0]]).repeat(300, 1),
                                             torch.ones(300)),
    "tied scores": lambda: _tied(800, 1),  # 769 kept at 0.9: 4 windows with tiles
    "clustered, 700 boxes around 10 objects": lambda: _clustered(700, 10, 0.1, 2),  # 0.0: settled in window 1
    "clustered, 1200 boxes around 80 objects": lambda: _clustered(1200, 80, 0.15, 3),  # 2 windows of blocks at 0.9
    "suppression chain": lambda: _chain(400),  # a window of blocks per 64 links at 0.9
    "random, 700 boxes": lambda: _random(700, 4),  # 3 to 4 windows with tiles
    "zero-area boxes": _zero_area,
    "nested boxes": lambda: (torch.stack([torch.tensor([i, i, 600.0 - i, 500.0 - i]) for i in range(0, 240, 2)]),
                             torch.rand(120, generator=torch.Generator().manual_seed(5))),
    MANY_WINDOWS: lambda: _random(2200, 4),
}
THRESHOLDS = [0.0, 0.5, 0.9]
# every case at every threshold, but the one large case at one: enough for several windows on both paths
CASE_THRESHOLDS = [(case, threshold) for case in CASES for threshold in ([0.5] if case == MANY_WINDOWS else THRESHOLDS)]
OTHER_DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64]


@functools.lru_cache(maxsize=None)
def _inputs(case: str, dtype: torch.dtype = torch.float32):
    """The case's boxes (N, 4) and scores (N,) (float32 or `dtype`; integer boxes keep float32 scores), and
    categories (N,) for batched_nms: huge and negative ids. Cached: callers must not modify them."""
    boxes, scores = CASES[case]()
    boxes = boxes.to(dtype)
    if dtype.is_floating_point:
        scores = scores.to(dtype)
    g = torch.Generator().manual_seed(6)
    idxs = torch.randint(0, 4, (boxes.shape[0],), generator=g) * 1_000_003 - 2_000_000
    return boxes, scores, idxs


@functools.lru_cache(maxsize=None)
def _expected(case: str, threshold: float, batched: bool, dtype: torch.dtype = torch.float32):
    """The reference result for _inputs(case, dtype), computed once for every fast form and path."""
    boxes, scores, idxs = _inputs(case, dtype)
    if batched:
        return batched_nms_reference(boxes, scores, idxs, threshold)
    return nms_reference(boxes, scores, threshold)


@pytest.mark.parametrize("case", ["tied scores", "clustered, 700 boxes around 10 objects", "suppression chain",
                                  "zero-area boxes", "random, 700 boxes", MANY_WINDOWS])
def test_reference_matches_torchvision(case):
    # scores are distinct above 1,000 boxes, where torchvision's batched_nms orders tied scores arbitrarily;
    # small category ids: torchvision offsets the boxes of each category by id x the largest coordinate
    boxes, scores, _ = _inputs(case)
    idxs = torch.arange(boxes.shape[0]) % 3
    for threshold in ([0.5] if case == MANY_WINDOWS else THRESHOLDS):
        assert torch.equal(_expected(case, threshold, False), torchvision.ops.nms(boxes, scores, threshold))
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


@pytest.mark.parametrize("case, threshold", CASE_THRESHOLDS)
def test_nms_matches_reference(case, threshold, strategy):
    boxes, scores, _ = _inputs(case)
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, _expected(case, threshold, False))


@pytest.mark.parametrize("case, threshold", CASE_THRESHOLDS)
def test_batched_nms_matches_reference(case, threshold, strategy):
    boxes, scores, idxs = _inputs(case)
    keep = batched_nms(boxes, scores, idxs, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, _expected(case, threshold, True))


@pytest.mark.parametrize("dtype", OTHER_DTYPES)
@pytest.mark.parametrize("case, threshold", [("tied scores", 0.5), ("clustered, 700 boxes around 10 objects", 0.7),
                                             ("zero-area boxes", 0.5)])  # 0.5: exact IoUs of 1/2 meet it
def test_other_dtypes_match_reference(case, threshold, dtype, strategy):
    # half-precision and integer boxes are compared in float32, float64 boxes in float64, by both
    boxes, scores, idxs = _inputs(case, dtype)
    assert torch.equal(nms(boxes, scores, threshold), _expected(case, threshold, False, dtype))
    assert torch.equal(batched_nms(boxes, scores, idxs, threshold), _expected(case, threshold, True, dtype))


@functools.lru_cache(maxsize=None)
def _candidates(counts: tuple, num_classes: int):
    """Candidates of len(counts) images, counts[i] of image i, with many tied scores. Cached."""
    seed = len(counts)
    boxes, scores = _clustered(sum(counts), 8, 0.15, seed)
    scores = (scores * 8).round() / 8  # coarse: many tied scores
    classes = torch.randint(num_classes, (sum(counts),), generator=torch.Generator().manual_seed(seed))
    images = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    return boxes, scores, classes, images, scores > 0.2


@functools.lru_cache(maxsize=None)
def _expected_per_image(counts: tuple, num_classes: int, threshold: float, top_k: int):
    return nms_per_image_reference(*_candidates(counts, num_classes), len(counts), threshold, top_k)


@pytest.mark.parametrize("counts", [(0,), (1,), (300, 0, 450, 800), (1200,)])
def test_nms_per_image_matches_reference(counts, strategy):
    num_classes = 3
    for threshold, top_k in [(0.5, 1000), (0.3, 7), (0.7, 1), (0.0, 50)]:
        got = nms_per_image(*_candidates(counts, num_classes), len(counts), num_classes, threshold, top_k)
        expected = _expected_per_image(counts, num_classes, threshold, top_k)
        assert len(got) == len(counts)
        for g, e in zip(got, expected):
            assert g.dtype == torch.int64 and torch.equal(g, e)
