"""fpn.ops.nms / batched_nms must keep exactly the indices torchvision keeps, in the same order.

Every test runs twice: with the tiles the CPU uses and with the fixed-shape blocks accelerators use (the strategy
fixture), so both forms of the algorithm are checked here on the CPU.
"""
import importlib
import math

import pytest
import torch
import torchvision

from fpn.ops import batched_nms, nms, roi_align

nms_module = importlib.import_module("fpn.ops.nms")  # the module (fpn.ops.nms is also the function's name)


@pytest.fixture(autouse=True, params=["tiles", "blocks"])
def strategy(request, monkeypatch):
    if request.param == "blocks":
        monkeypatch.setattr(nms_module, "SPARSE_DEVICES", ())
    return request.param


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


# ---- adversarial and realistic inputs (those of scripts/bench_ops.py) ------------------------------------------

def _jittered(n: int, objects: int, spread: float, seed: int):
    """n boxes jittered around `objects` objects (centre and size noise `spread`), distinct scores."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([1344.0, 800.0])
    size = torch.exp(torch.empty(objects, 2).uniform_(3.0, 6.0, generator=g))
    which = torch.randint(0, objects, (n,), generator=g)
    c = centre[which] + torch.randn(n, 2, generator=g) * size[which] * spread
    s = size[which] * torch.exp(torch.randn(n, 2, generator=g) * spread)
    return torch.cat((c - s / 2, c + s / 2), dim=1), torch.randperm(n, generator=g).float() / n


def _chain(n: int):
    # each box overlaps its neighbour with IoU 31/33 > 0.9 and the next but one with 30/34 < 0.9: greedy keeps
    # every other box, and a window settles one box per round
    x = torch.arange(n, dtype=torch.float32)
    return torch.stack((x, torch.zeros(n), x + 32, torch.full((n,), 32.0)), dim=1), torch.linspace(1, 0, n)


ADVERSARIAL = {
    "4000 identical boxes": lambda: (torch.tensor([[100.0, 100.0, 300.0, 250.0]]).repeat(4000, 1),
                                     torch.randperm(4000, generator=torch.Generator().manual_seed(0)).float()),
    "4000 identical boxes, tied scores": lambda: (torch.tensor([[5.0, 5.0, 50.0, 40.0]]).repeat(4000, 1),
                                                  torch.ones(4000)),
    "10000 boxes in 5 tight clusters": lambda: _jittered(10000, 5, 0.02, 1),
    "5000 boxes around 8 objects": lambda: _jittered(5000, 8, 0.1, 2),
    "3000 boxes around 120 objects": lambda: _jittered(3000, 120, 0.15, 3),
    "1500 chained boxes": lambda: _chain(1500),
    "nested boxes": lambda: (torch.stack([torch.tensor([i, i, 600.0 - i, 500.0 - i]) for i in range(0, 240, 2)]),
                             torch.rand(120, generator=torch.Generator().manual_seed(4))),
}


@pytest.mark.parametrize("case", list(ADVERSARIAL))
@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_adversarial_inputs_match_torchvision(case, threshold):
    boxes, scores = ADVERSARIAL[case]()
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("seed", range(40))
def test_random_structures_match_torchvision(seed):
    # small inputs of every kind at once: sizes 1..600, thresholds 0..1, integer coordinates (exact IoU ties),
    # duplicates, zero-area and reversed boxes, boxes far outside the image, tied scores
    g = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(1, 600, (1,), generator=g))
    boxes, scores = _jittered(n, int(torch.randint(1, 40, (1,), generator=g)), float(torch.rand(1, generator=g)) * 0.3,
                              seed)
    if seed % 4 == 0:
        boxes = boxes.round()
    if seed % 5 == 0:
        boxes[: n // 7] = boxes[n // 7: 2 * (n // 7)]
        scores = (scores * 8).round()
    if seed % 6 == 0:
        boxes[::11, 2] = boxes[::11, 0]  # zero width
        boxes[1::13] = boxes[1::13][:, [2, 3, 0, 1]]  # reversed corners
        boxes[2::17] -= 5000.0
    threshold = float(torch.rand(1, generator=g))
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_nan_inf_and_reversed_boxes_match_torchvision(threshold):
    boxes, scores = _uniform(300, 8)
    boxes[::7] = math.nan
    boxes[3::11, 2] = math.inf
    boxes[5::13, 0] = -math.inf
    boxes[6::17] = boxes[6::17][:, [2, 1, 0, 3]]
    scores[9::19] = math.nan
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_batched_many_categories_match_per_category_nms():
    # 90 categories, huge and negative ids: a detector's per-class NMS. Above 1,000 boxes torchvision's CPU
    # batched_nms runs one nms per category; distinct scores make its final order well defined.
    boxes, scores = _jittered(3000, 60, 0.15, 9)
    categories = torch.randint(0, 90, (3000,), generator=torch.Generator().manual_seed(10))
    idxs = categories * 1_000_003 - 40_000_000
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), torchvision.ops.batched_nms(boxes, scores, idxs, 0.5))


def test_empty_batched_and_integer_idxs_dtypes():
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=dtype), 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64
    boxes, scores = _uniform(200, 12)
    idxs = torch.arange(200) % 3
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(batched_nms(boxes, scores, idxs.to(dtype), 0.5), expected)


# ---- registered operators ------------------------------------------------------------------------------------

def test_opcheck_nms_ops():
    boxes, scores = _clustered(300, 13)
    idxs = torch.arange(300) % 4
    torch.library.opcheck(torch.ops.fpn.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.fpn.batched_nms.default, (boxes, scores, idxs, 0.5))
    torch.library.opcheck(torch.ops.fpn.nms.default, (boxes.double(), scores.double(), 0.7))


def test_compiled_detection_step_has_no_graph_break():
    # NMS then RoIAlign of the kept boxes, as a detector's second stage does. An op whose output size depends on
    # the data (NMS, like nonzero) needs dynamo's capture_dynamic_output_shape_ops, as torchvision's nms does.
    def detect(features, boxes, scores, idxs):
        keep = batched_nms(boxes, scores, idxs, 0.5)
        return roi_align(features, [boxes[keep]], 7, 0.25, 2).flatten(1).sum(1) * scores[keep]

    boxes, scores = _clustered(400, 14)
    boxes = boxes / 8  # inside a 100 x 168 image: a 25 x 42 feature map at stride 4
    features = torch.randn(1, 8, 25, 42, generator=torch.Generator().manual_seed(15))
    idxs = torch.arange(400) % 5
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(detect)(features, boxes, scores, idxs)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(detect, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(features, boxes, scores, idxs), detect(features, boxes, scores, idxs),
                                   rtol=0, atol=0)


def test_exported_detection_step_carries_the_ops_and_reloads(tmp_path):
    class Detect(torch.nn.Module):
        def forward(self, features, boxes, scores, idxs):
            keep = batched_nms(boxes, scores, idxs, 0.5)
            return roi_align(features, [boxes[keep]], 7, 0.25, 2).flatten(1).sum(1) * scores[keep]

    boxes, scores = _clustered(300, 16)
    boxes = boxes / 8
    features = torch.randn(1, 8, 25, 42, generator=torch.Generator().manual_seed(17))
    idxs = torch.arange(300) % 4
    exported = torch.export.export(Detect(), (features, boxes, scores, idxs))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert {"fpn.batched_nms.default", "fpn.roi_align.default"} <= targets
    torch.export.save(exported, tmp_path / "detect.pt2")
    reloaded = torch.export.load(tmp_path / "detect.pt2").module()
    expected = Detect()(features, boxes, scores, idxs)
    assert torch.equal(reloaded(features, boxes, scores, idxs), expected)
    # other inputs, another number of kept boxes: the kept count is dynamic in the exported graph
    boxes2, scores2 = _clustered(300, 18)
    assert torch.equal(reloaded(features, boxes2 / 8, scores2, idxs), Detect()(features, boxes2 / 8, scores2, idxs))


def test_batched_nms_of_boxes_kept_by_a_threshold_traces(strategy):
    # the boxes' count is data-dependent: batched_nms must not branch on it (its empty-input shortcut is eager only)
    class Detect(torch.nn.Module):
        def forward(self, boxes, scores, idxs):
            kept = torch.nonzero(scores > 0.3).squeeze(1)
            return kept[batched_nms(boxes[kept], scores[kept], idxs[kept], 0.5)]

    boxes, scores = _clustered(200, 19)
    idxs = torch.arange(200) % 3
    exported = torch.export.export(Detect(), (boxes, scores, idxs)).module()
    assert torch.equal(exported(boxes, scores, idxs), Detect()(boxes, scores, idxs))
    assert exported(boxes, scores * 0, idxs).shape == (0,)  # nothing above the threshold
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        torch._dynamo.reset()
        compiled = torch.compile(Detect(), backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(boxes, scores, idxs), Detect()(boxes, scores, idxs))


def test_batched_nms_of_no_boxes_returns_before_checking_the_rest():
    # torchvision's batched_nms returns early for empty boxes (its own test passes None for the rest)
    for empty in (torch.empty((0,)), torch.empty((0, 4)), torch.empty((0,), dtype=torch.int64)):
        keep = batched_nms(empty, None, None, None)
        assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device == empty.device
    with pytest.raises(ValueError, match=r"scores must have shape \(1,\) like boxes, got NoneType"):
        batched_nms(torch.zeros(1, 4), None, None, 0.5)  # a box: the arguments are checked
    with pytest.raises(ValueError, match=r"idxs must be a tensor of shape \(1,\) like scores, got NoneType"):
        batched_nms(torch.zeros(1, 4), torch.ones(1), None, 0.5)
