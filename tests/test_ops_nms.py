"""fpn.ops.nms / batched_nms must keep exactly the indices torchvision keeps, in the same order."""
import pytest
import torch
import torchvision

from fpn.ops import batched_nms, nms


def _uniform(n: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 60
    return torch.cat((xy, xy + wh), dim=1).to(dtype), torch.rand(n, generator=g).to(dtype)


def _clustered(n: int, seed: int):
    """Detection-like boxes: jittered copies of n // 25 objects of 12 .. 665 px in an 800 x 1344 image."""
    g = torch.Generator().manual_seed(seed)
    objects = max(1, n // 25)
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([1344.0, 800.0])
    size = torch.exp(torch.rand(objects, 2, generator=g) * 4.0 + 2.5)
    which = torch.randint(0, objects, (n,), generator=g)
    c = centre[which] + torch.randn(n, 2, generator=g) * size[which] * 0.15
    s = size[which] * torch.exp(torch.randn(n, 2, generator=g) * 0.2)
    boxes = torch.cat((c - s / 2, c + s / 2), dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 1344)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 800)
    # distinct scores: torchvision's batched_nms orders tied scores arbitrarily above 1000 boxes
    return boxes, torch.randperm(n, generator=g).float() / n


def test_hand_computed():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0],
                          [0.0, 0.0, 10.0, 5.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(0, 1) = 81 / 119 = 0.68, IoU(3, 0) = 0.5, IoU(3, 1) = 36 / 114
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]  # 0.5 does not suppress (IoU must be > thr)
    assert nms(boxes, scores, 0.49).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 0, 1, 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.3, 0.5, 0.7, 0.95, 1.0])
def test_random_matches_torchvision(threshold, dtype):
    boxes, scores = _uniform(400, 0, dtype)
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_tied_scores_and_duplicates_match_torchvision(threshold):
    boxes, scores = _clustered(600, 1)
    scores = (scores * 4).round() / 4  # five distinct values: many ties
    boxes[100:110] = boxes[5]  # exact duplicates, some with tied scores
    idxs = torch.randint(0, 3, (600,), generator=torch.Generator().manual_seed(2))
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))
    assert torch.equal(batched_nms(boxes, scores, idxs, threshold),
                       torchvision.ops.batched_nms(boxes, scores, idxs, threshold))


def test_all_tied_keeps_lowest_index_first():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]] * 2)
    scores = torch.ones(5)
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_5000_boxes_match_torchvision(threshold):
    boxes, scores = _clustered(5000, 3)
    idxs = torch.randint(0, 5, (5000,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))
    assert torch.equal(batched_nms(boxes, scores, idxs, threshold),
                       torchvision.ops.batched_nms(boxes, scores, idxs, threshold))


def test_integer_boxes_low_threshold_match_torchvision():
    boxes, scores = _clustered(1500, 5)
    boxes = boxes.round()  # exact IoUs such as 1/10 and 1/2 occur; some boxes get zero width
    for threshold in (0.1, 0.5):
        assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_iou_equal_to_threshold_in_float32_compares_like_torchvision():
    # IoU = 10 / 100 is stored as float32(0.1) = 0.10000000149 > 0.1: torchvision suppresses
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.1).tolist() == [0]
    assert torch.equal(nms(boxes, scores, 0.1), torchvision.ops.nms(boxes, scores, 0.1))


def test_long_suppression_chain_matches_torchvision():
    # each box overlaps its neighbours with IoU 31/33 > 0.9, the next but one with 30/34 < 0.9:
    # greedy keeps every other box, a chain that takes one sweep per box to settle
    x = torch.arange(200, dtype=torch.float32)
    boxes = torch.stack((x, torch.zeros(200), x + 32, torch.full((200,), 32.0)), dim=1)
    scores = torch.linspace(1, 0, 200)
    keep = nms(boxes, scores, 0.9)
    assert keep.tolist() == list(range(0, 200, 2))
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.9))


def test_widely_spread_coordinates_match_torchvision():
    boxes, scores = _uniform(200, 6)
    boxes = torch.cat((boxes * 1e-3, boxes * 1e5 + 1e9))  # tiny boxes and far away huge ones
    scores = torch.cat((scores, scores.flip(0)))
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    # crowded tiny boxes at 0 and at 1e9: too many grid cells for int64 keys, so the dense pass runs
    g = torch.Generator().manual_seed(7)
    tiny = torch.tensor([0.0, 0.0, 1e-4, 1e-4], dtype=torch.float64) + torch.rand(600, 4, generator=g,
                                                                                   dtype=torch.float64) * 2e-5
    tiny[300:] += 1e9
    scores = torch.rand(600, generator=g, dtype=torch.float64)
    assert torch.equal(nms(tiny, scores, 0.5), torchvision.ops.nms(tiny, scores, 0.5))


def test_batched_categories_do_not_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [1, 2]
    assert batched_nms(boxes, scores, torch.tensor([7, -3, 2]), 0.5).tolist() == [1, 2, 0]


def test_inputs_that_require_grad():
    # e.g. detections decoded at eval time outside torch.no_grad()
    boxes, scores = _clustered(500, 11)
    boxes.requires_grad_(True)
    scores.requires_grad_(True)
    idxs = torch.arange(500) % 3
    expected = torchvision.ops.batched_nms(boxes.detach(), scores.detach(), idxs, 0.5)
    assert torch.equal(batched_nms(boxes * 1.0, scores * 1.0, idxs, 0.5), expected)
    assert torch.equal(nms(boxes * 1.0, scores * 1.0, 0.5), torchvision.ops.nms(boxes.detach(), scores.detach(), 0.5))


def test_empty_and_single():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)
    assert nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_half_precision_boxes():
    boxes, scores = _uniform(300, 7)
    boxes = boxes.half()
    expected = torchvision.ops.nms(boxes.float(), scores, 0.5)
    assert torch.equal(nms(boxes, scores, 0.5), expected)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="-0.1"):
        nms(torch.zeros(3, 4), torch.zeros(3), -0.1)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="integer"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
