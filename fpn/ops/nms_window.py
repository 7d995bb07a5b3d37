"""A window of greedy NMS: the next boxes to decide, and greedy among them by a fixed-point iteration.

The window is the first B boxes, in visiting order, that are neither suppressed nor decided. None of them is
suppressed by the boxes kept so far, so greedy restricted to the window is exact for them. With S the window's
(B, B) overlap matrix (S[j, i]: box i is visited before box j and IoU > t), iterate
    keep[j] = not any(keep[i] and S[j, i])
from "all kept". After r rounds the first r boxes are right, and where two consecutive rounds agree on a prefix,
that prefix is settled: on it the rule holds, and its fixed point is unique (box by box, in order). Clusters
settle in a few rounds; a suppression chain (each box overlapping the next) settles one box per round, so the
caller commits the settled prefix and gives the next window more rounds.

Shape shorthand: N boxes, B boxes per window.
"""
import struct
from typing import NamedTuple, Optional

import torch
from torch import Tensor


class Window(NamedTuple):
    ranks: Tensor  # (B,) int64 ranks (visiting positions) of the window's boxes; N pads a short window
    rows: Tensor  # (B, 5) their x1, y1, x2, y2, area (NaN for padding: NaN never overlaps)
    groups: Optional[Tensor]  # (B,) their categories, or None
    kept: Tensor  # (B,) bool: kept, within the settled prefix
    settled: Tensor  # () int64: the length of the settled prefix (B when it all settled)
    count: Tensor  # () int64: the number of real boxes in the window
    frontier: Tensor  # () int64: the first open rank past the settled prefix (N when none): all before are decided


def next_window(table: Tensor, groups: Optional[Tensor], open_box: Tensor, size: int, earlier: Tensor,
                threshold: float, rounds: int, stop_early: bool = False) -> Window:
    """Select the first `size` open boxes and run up to `rounds` rounds of greedy among them.

    Args:
        table: (N + 1, 5) rows x1, y1, x2, y2, area in visiting order; row N is all NaN.
        groups: (N + 1,) int64 categories, or None.
        open_box: (N,) bool: neither suppressed nor decided.
        size: B.
        earlier: (B, B) [j, i] 1.0 where i < j, else 0.0.
        threshold: IoU threshold as given by threshold_below.
        rounds: rounds of the fixed-point iteration.
        stop_early: stop as soon as a round changes nothing (a host read every other round: for the CPU).
    """
    n = open_box.shape[0]
    ranks_and_next = first_true(open_box, size + 1)  # (B + 1,) ranks in [0, N]: the window's and the next open one
    ranks = ranks_and_next[:size]
    rows = table.index_select(0, ranks)
    window_groups = groups.index_select(0, ranks) if groups is not None else None
    valid = ranks < n
    columns = rows.t().contiguous()  # (5, B)
    overlap = iou(columns[:, :, None], columns[:, None, :]) > threshold  # (B, B) symmetric
    if window_groups is not None:
        overlap &= window_groups[:, None] == window_groups[None, :]
    # [j, i]: 1.0 where box i, visited before box j, overlaps it; sums of 0/1 below 2**24 are exact
    suppressors = overlap.view(torch.uint8).to(rows.dtype).mul_(earlier)  # (via uint8: a faster conversion)
    keep = previous = valid_float = valid.to(rows.dtype)
    for step in range(rounds):
        keep, previous = valid_float * (torch.mv(suppressors, keep) == 0), keep
        if stop_early and step % 2 == 1 and torch.equal(keep, previous):
            break
    changed = torch.cat((keep != previous, valid.new_ones(1)))  # a change just past the window
    settled = changed.view(torch.uint8).argmax()  # the first change: argmax returns the first maximum
    kept = keep.bool() & (torch.arange(size, device=ranks.device) < settled)
    frontier = ranks_and_next.index_select(0, settled.view(1))[0]
    return Window(ranks, rows, window_groups, kept, settled, valid.sum(), frontier)


def first_true(mask: Tensor, count: int) -> Tensor:
    """(count,) int64 positions of the first `count` True entries of mask (M,), in order; M where fewer."""
    return torch.searchsorted(torch.cumsum(mask, dim=0), torch.arange(1, count + 1, device=mask.device))


def iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU in torchvision's nms arithmetic of boxes a and b, each (5, ...) rows x1, y1, x2, y2, area; the rows
    of a and b broadcast against each other."""
    width = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp_(min=0)
    height = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp_(min=0)
    inter = width.mul_(height)
    return inter.div_((a[4] + b[4]).sub_(inter))  # inter / (area_a + area_b - inter)


def box_table(boxes: Tensor) -> Tensor:
    """(N, 4) boxes -> (N + 1, 5) rows x1, y1, x2, y2, area and a last row of NaN (padding, never overlaps)."""
    table = torch.cat((boxes, (boxes[:, 2:] - boxes[:, :2]).prod(dim=1, keepdim=True)), dim=1)
    return torch.cat((table, table.new_full((1, 5), float("nan"))))


def threshold_below(iou_threshold: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` <= iou_threshold: for an IoU x of that dtype, x > it iff x > iou_threshold.

    torchvision compares the IoU with the threshold in double precision; comparing a float32 tensor with a Python
    float rounds the threshold to float32 instead, and float32(0.1) > 0.1 would be missed. Computed on the host
    in plain Python (no tensor op, no device round trip).
    """
    if dtype == torch.float64:
        return iou_threshold
    threshold = min(iou_threshold, 2.0)  # an IoU never exceeds 1: larger thresholds act alike
    rounded = struct.unpack("<f", struct.pack("<f", threshold))[0]  # to the nearest float32
    if rounded > threshold:  # one float32 down (positive floats are ordered like their bit patterns)
        rounded = struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", rounded))[0] - 1))[0]
    return rounded
