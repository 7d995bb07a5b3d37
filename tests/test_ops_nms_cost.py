"""What fpn.ops.nms costs: host reads per call and peak memory, on the inputs that made the previous NMS slow.

Counts and bytes, not seconds (scripts/bench_ops.py times it against torchvision).
"""
import importlib
import math

import pytest
import torch
import torchvision

from fpn.ops.host_sync import HostSyncCounter
from fpn.engine.memory import peak_cpu_memory
from fpn.ops import nms
from test_ops_nms import ADVERSARIAL, _jittered

nms_module = importlib.import_module("fpn.ops.nms")  # the module (fpn.ops.nms is also the function's name)


@pytest.fixture(params=["tiles", "blocks"])
def strategy(request, monkeypatch):
    if request.param == "blocks":
        monkeypatch.setattr(nms_module, "SPARSE_DEVICES", ())
    return request.param


def test_20000_random_boxes_match_torchvision():
    # with the CPU's tiles (the fixed-shape blocks would compare every kept box with all 20,000 boxes: seconds
    # on a CPU; test_ops_nms.py checks them on up to 10,000 boxes)
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(20000, 2, generator=g) * torch.tensor([1344.0, 800.0])
    boxes = torch.cat((xy, xy + torch.exp(torch.empty(20000, 2).uniform_(2.5, 5.5, generator=g))), dim=1)
    scores = torch.randperm(20000, generator=g).float()
    assert torch.equal(nms(boxes, scores, 0.7), torchvision.ops.nms(boxes, scores, 0.7))


@pytest.mark.parametrize("case", ["4000 identical boxes", "10000 boxes in 5 tight clusters"])
def test_clusters_take_a_few_host_reads(case, strategy):
    boxes, scores = ADVERSARIAL[case]()
    with HostSyncCounter() as counter:
        nms(boxes, scores, 0.7)
    # tiles (CPU, where reads are free): the first window's "settled?" check after two rounds, its read, one
    # "all suppressed?" check, the output size; blocks: one read after the first window, one after the (empty)
    # next ones, the output size
    assert counter.total <= (4 if strategy == "tiles" else 3), counter.report()


def test_host_reads_grow_with_windows_not_boxes(strategy):
    boxes, scores = _jittered(5000, 200, 0.1, 11)  # ~1,000 kept boxes
    with HostSyncCounter() as counter:
        keep = nms(boxes, scores, 0.7)
    windows = math.ceil(keep.numel() / (nms_module.WINDOW if strategy == "tiles" else nms_module.BLOCK_WINDOW))
    # tiles (CPU): per window a read, a re-read when it switches to sorted tiles, "settled?" checks every other
    # round and an "all suppressed?" check, for windows of kept boxes and the first, smaller windows; blocks: a
    # read after windows 1, 3, 7, ...; both: the output size
    bound = 4 * (windows + 2) + 1 if strategy == "tiles" else math.ceil(math.log2(windows + 1)) + 3
    assert counter.total <= bound, (keep.numel(), counter.report())


def test_peak_memory_of_20000_boxes_is_bounded():
    # the CPU's tiles; the blocks' memory is set by PAIRS_PER_BLOCK and BLOCK_WINDOW
    boxes, scores = _jittered(20000, 800, 0.1, 12)
    keep, peak = peak_cpu_memory(lambda: nms(boxes, scores, 0.7))
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.7))
    assert peak <= 64 * 2**20, f"{peak / 2**20:.1f} MiB"
    identical, ties = ADVERSARIAL["4000 identical boxes"]()
    assert peak_cpu_memory(lambda: nms(identical, ties, 0.7))[1] <= 4 * 2**20  # not N x N
