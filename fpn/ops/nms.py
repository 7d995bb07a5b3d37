"""Exact greedy non-maximum suppression (NMS) in blocks: bounded time and memory on any input, any device.

Greedy NMS visits boxes by decreasing score (ties: lower index first) and keeps a box unless a kept box visited
before it overlaps it with IoU > iou_threshold. The kept indices here are identical to torchvision.ops.nms (same
IoU arithmetic, same threshold comparison), computed a block of boxes at a time:

1. Window: the first B boxes, in score order, that are neither suppressed nor decided yet.
2. Greedy inside the window. Every box of the window is unsuppressed by the boxes already kept, so greedy on the
   window alone is exact. With S the window's (B, B) overlap matrix (S[i, j]: i is visited first and IoU > t),
   iterate keep[j] = not any(keep[i] and S[i, j]) from "all kept". After r rounds the first r boxes are right,
   and where two consecutive rounds agree on a prefix, that prefix is settled (it is a fixed point of the rule,
   which is unique). Clusters settle in a few rounds; a suppression chain (each box overlapping the next) settles
   one box per round, so an unsettled window commits its settled prefix and the next window takes more rounds.
3. Suppress: every kept box of the settled prefix suppresses the boxes visited after it that it overlaps. The
   candidates come in tiles of boxes sorted by x1; a tile is skipped when its coordinate ranges prove that no box
   in it can reach IoU > t with the kept box (bounds below), so clustered and spread-out inputs both cost about
   (kept boxes) x (boxes near them), like torchvision's kernel, instead of N x N.

Cost: one host sync per window (its sizes), a few hundred box pairs per kept box, memory O(N + B * N / T).

Why a tile can be skipped. IoU(i, j) > t implies ow > t * max(w_i, w_j), with ow the overlap of the x extents
(inter <= ow * min(h_i, h_j) and union >= max(area_i, area_j)). If x1_j >= x1_i then ow <= w_i - (x1_j - x1_i),
so x1_j - x1_i < (1 - t) * w_i; if x1_j < x1_i then likewise x1_i - x1_j < (1 - t) * w_j < (1 - t) / t * w_i
(w_j < w_i / t since ow <= w_i). The same holds in y. A box j with x2_j <= x1_i has no overlap at all. The bounds
are evaluated for t shrunk by _SLACK and widened by _SLACK, far above the float rounding of the IoU (~1e-6), so
a pair whose computed IoU exceeds t is never skipped. NaN coordinates never skip.

Shape shorthand: N boxes, B boxes per window, L tiles of T boxes, P (kept box, tile) candidate pairs.
"""
import math
import struct
from typing import Optional

import torch
from torch import Tensor

from fpn.ops.boxes import check_boxes

WINDOW = 256  # boxes per window (B): a (B, B) overlap matrix and one host sync per window
FIRST_WINDOW = 64  # the first window is small and each next one four times as large, up to WINDOW
FIRST_ROUNDS = 4  # greedy rounds of a window; doubled after a window that did not settle
TILE = 64  # boxes per tile (T) of the suppression candidates
_CHUNK = 2**18  # box pairs per chunk of the suppression step: bounds its memory (~20 MiB in float32)
_SLACK = 1e-4  # relative safety margin of the skip bounds


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (drop-in for torchvision.ops.nms).

    Args:
        boxes: (N, 4) boxes (x1, y1, x2, y2); half-precision and integer boxes are compared in float32.
        scores: (N,) scores.
        iou_threshold: a box is discarded when its IoU with a kept, higher-scored box is > this (>= 0).

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score (ties: lower index first).
    """
    _check_inputs(boxes, scores, iou_threshold)
    # indices are not differentiable: boxes from a graph (e.g. eval without no_grad) are used detached
    return torch.ops.fpn.nms(boxes.detach(), scores.detach(), float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression within each category (drop-in for torchvision.ops.batched_nms).

    Boxes of different categories never suppress each other. Categories are compared exactly (no coordinate
    offsets), in one pass over all boxes.

    Args:
        boxes: (N, 4) boxes (x1, y1, x2, y2).
        scores: (N,) scores.
        idxs: (N,) integer category of each box.
        iou_threshold: IoU above which a lower-scored box of the same category is discarded (>= 0).

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score (ties: lower index first).
    """
    _check_inputs(boxes, scores, iou_threshold)
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must have shape {tuple(scores.shape)} like scores, got {tuple(idxs.shape)}")
    if idxs.is_floating_point() or idxs.is_complex():
        raise ValueError(f"idxs must be an integer tensor, got {idxs.dtype}")
    return torch.ops.fpn.batched_nms(boxes.detach(), scores.detach(), idxs.detach(), float(iou_threshold))


def _check_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    check_boxes(boxes)
    if boxes.dim() != 2:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if not isinstance(scores, Tensor) or scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) like boxes, got {tuple(scores.shape)}")
    if not iou_threshold >= 0:  # also rejects NaN
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")


@torch.library.custom_op("fpn::nms", mutates_args=())
def _nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return _greedy_nms(boxes, scores, None, iou_threshold)


@torch.library.custom_op("fpn::batched_nms", mutates_args=())
def _batched_nms_op(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return _greedy_nms(boxes, scores, idxs, iou_threshold)


@_nms_op.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@_batched_nms_op.register_fake
def _batched_nms_fake(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


def _greedy_nms(boxes: Tensor, scores: Tensor, groups: Optional[Tensor], iou_threshold: float) -> Tensor:
    order = torch.sort(scores, descending=True, stable=True)[1]  # rank -> box index
    if order.numel() == 0:
        return order
    ranked = boxes.index_select(0, order)  # (N, 4): rank i < j means i is visited first
    if ranked.dtype not in (torch.float32, torch.float64):
        ranked = ranked.float()  # IoU of half-precision or integer boxes in float32
    ranked_groups = groups.index_select(0, order).long() if groups is not None else None
    return order[_greedy_keep(ranked, ranked_groups, iou_threshold)]


def _greedy_keep(boxes: Tensor, groups: Optional[Tensor], iou_threshold: float) -> Tensor:
    """(N,) bool greedy keep mask of boxes (N, 4) given in visiting order, optionally within groups (N,)."""
    n, device = boxes.shape[0], boxes.device
    threshold = _threshold_below(iou_threshold, boxes.dtype)
    # (N + 1, 5) rows x1, y1, x2, y2, area; row N (all NaN, never overlapping) pads short windows
    table = torch.cat((boxes, (boxes[:, 2:] - boxes[:, :2]).prod(dim=1, keepdim=True)), dim=1)
    # the first window's kept boxes meet every box (one tile in visiting order: no sort, often the whole job)
    tiles, later_tiles = _Tiles(table, groups, iou_threshold, tile=n), (table, groups)
    table = torch.cat((table, table.new_full((1, 5), math.nan)))
    if groups is not None:
        groups = torch.cat((groups, groups.new_zeros(1)))
    suppressed = torch.zeros(n, dtype=torch.int32, device=device)  # (N,) how many kept boxes overlap each box
    ranks = torch.arange(n, device=device)
    frontier = torch.zeros((), dtype=torch.int64, device=device)  # every rank below it is decided
    size, rounds, earlier = FIRST_WINDOW, FIRST_ROUNDS, None
    while True:
        # 1. the window: the first `size` open (unsuppressed, undecided) ranks, then the next one; N pads
        open_box = (suppressed == 0) & (ranks >= frontier)
        window_and_next = _first_true(open_box, size + 1)  # (B + 1,) in [0, N]
        window = window_and_next[:size]
        rows = table.index_select(0, window)  # (B, 5)
        window_groups = groups.index_select(0, window) if groups is not None else None
        # 2. greedy inside the window; its settled prefix is committed
        if earlier is None or earlier.shape[0] != size:  # (B, B) [j, i]: 1.0 where i < j
            earlier = torch.ones(size, size, dtype=boxes.dtype, device=device).tril_(diagonal=-1)
        keep, settled = _window_greedy(rows, window_groups, window < n, earlier, threshold, rounds)
        kept = keep & (torch.arange(size, device=device) < settled)  # (B,)
        frontier = window_and_next.index_select(0, settled.view(1))[0]  # the first open box not settled
        # 3. the kept boxes suppress the boxes after them that they overlap, tile by tile
        pairs = tiles.candidates(rows, window_groups) & kept[:, None]  # (B, L)
        unreached = tiles.holding(open_box & (ranks >= frontier)) & ~pairs.any(dim=0)  # (L,) no kept box near
        num_pairs, done, more, all_settled = torch.stack(
            (pairs.sum(), frontier >= n, unreached.any(), settled >= (window < n).sum())).tolist()  # the sync
        pair = _first_true(pairs.view(-1), num_pairs)  # (P,) flat (kept box, tile) indices
        for pair in pair.split(max(1, _CHUNK // tiles.members.shape[1])):
            slot, tile = pair.div(pairs.shape[1], rounding_mode="floor"), pair.remainder(pairs.shape[1])  # (p,)
            members = tiles.members.index_select(0, tile)  # (p, T) ranks
            hit = _iou(rows.index_select(0, slot).t()[:, :, None], tiles.rows.index_select(0, tile).transpose(0, 1))
            hit = (hit > threshold) & (members > window.index_select(0, slot)[:, None])  # (p, T)
            if groups is not None:
                hit &= tiles.groups.index_select(0, tile) == window_groups.index_select(0, slot)[:, None]
            suppressed.index_add_(0, members.view(-1), hit.view(-1).view(torch.uint8).to(torch.int32))
        # when every open box was near a kept box, all may be suppressed now: ask (a second sync)
        if done or not (more or ((suppressed == 0) & (ranks >= frontier)).any()):
            return suppressed == 0
        size = min(4 * size, WINDOW)
        rounds = max(FIRST_ROUNDS, rounds // 2) if all_settled else min(2 * rounds, WINDOW)
        if later_tiles is not None:
            tiles, later_tiles = _Tiles(*later_tiles, iou_threshold), None


def _first_true(mask: Tensor, count: int) -> Tensor:
    """(count,) int64 positions of the first `count` True entries of mask (M,), in order; M where fewer."""
    return torch.searchsorted(torch.cumsum(mask, dim=0), torch.arange(1, count + 1, device=mask.device))


def _window_greedy(rows: Tensor, groups: Optional[Tensor], valid: Tensor, earlier: Tensor, threshold: float,
                   rounds: int):
    """Greedy on the window's boxes by `rounds` rounds of the fixed-point iteration (see the module docstring).

    Args:
        rows: (B, 5) boxes and areas in visiting order; groups: (B,) or None; valid: (B,) False for padding;
        earlier: (B, B) [j, i] 1.0 where i < j, else 0.0.

    Returns:
        keep: (B,) bool after the last round; settled: () int64, the length of the prefix known to be final.
    """
    columns = rows.t().contiguous()  # (5, B)
    overlap = _iou(columns[:, :, None], columns[:, None, :]) > threshold  # (B, B) symmetric
    if groups is not None:
        overlap &= groups[:, None] == groups[None, :]
    # (B, B) [j, i]: 1.0 where box i, visited before box j, overlaps it; counts of 0/1 below 2**24 are exact
    suppressors = overlap.view(torch.uint8).to(rows.dtype).mul_(earlier)  # (via uint8: a faster conversion)
    keep = previous = valid = valid.to(rows.dtype)
    for _ in range(rounds):
        keep, previous = valid * (torch.mv(suppressors, keep) == 0), keep
    changed = torch.cat((keep != previous, valid.new_ones(1, dtype=torch.bool)))  # a change past the window
    return keep.bool(), changed.to(torch.int32).argmax()  # argmax: the first maximum


class _Tiles:
    """The boxes in tiles of TILE, each with the ranges of its boxes' coordinates.

    Tiles are runs of the boxes sorted by group, then by vertical strip (x1) and by y1 within a strip, so that a
    tile covers a small area and skipping it by its ranges is effective; N <= TILE boxes make one tile. The order
    matters for speed only: the skip test uses the true ranges of whatever boxes a tile holds.
    """

    def __init__(self, table: Tensor, groups: Optional[Tensor], iou_threshold: float, tile: int = TILE):
        n = table.shape[0]
        order = torch.arange(n, device=table.device)
        if n > tile:
            strips = math.ceil(math.sqrt(n / tile))  # tiles about as wide as high, in boxes
            low, high = table[:, :2].aminmax(dim=0)
            start = (table[:, :2] - low) / (high - low)  # (N, 2) x1, y1 scaled to [0, 1]; NaN: any order
            key = (start[:, 0] * strips).floor_().clamp_(max=strips - 1) + start[:, 1] * 0.5  # strip, then y1
            order = torch.argsort(key, stable=True)
            if groups is not None:
                order = order.index_select(0, torch.argsort(groups.index_select(0, order), stable=True))
        # the last tile is padded with copies of its last box: a pair seen twice suppresses the same box
        self.members = torch.cat((order, order[-1:].expand((-n) % tile))).view(-1, tile)  # (L, T) ranks
        self.rows = table.index_select(0, self.members.view(-1)).view(-1, tile, 5).transpose(1, 2).contiguous()
        self.low = self.rows[:, :4].amin(dim=2).t().contiguous()  # (4, L) ranges of x1, y1, x2, y2
        self.high = self.rows[:, :4].amax(dim=2).t().contiguous()
        if groups is not None:
            self.groups = groups[self.members]  # (L, T)
            self.group_low, self.group_high = self.groups.amin(dim=1), self.groups.amax(dim=1)
        t = iou_threshold * (1 - _SLACK)
        self.reach_after = (1 - t) * (1 + _SLACK)  # partner start - own start < this x own size
        self.reach_before = self.reach_after / t if t > 0 else math.inf  # own start - partner start < ...

    def candidates(self, rows: Tensor, groups: Optional[Tensor]) -> Tensor:
        """(B, L) bool: tile l may hold a box with IoU > t with box b of rows (B, 5); False is a proof."""
        start = rows[:, :2].t()[:, :, None]  # (2, B, 1) x1, y1
        size = (rows[:, 2:4] - rows[:, :2]).t()[:, :, None]  # (2, B, 1) width, height
        # a margin >= 0 proves the skip (x - y >= 0 iff x >= y in floats; NaN never skips): every box of the
        # tile starts too far after the box, or too far before it, or ends before it starts
        margin = torch.maximum(self.low[:2, None] - start - size * self.reach_after,
                               start - self.high[:2, None] - size * self.reach_before)  # (2, B, L)
        margin = torch.maximum(margin, start - self.high[2:, None]).amax(dim=0)  # (B, L)
        reach = ~(margin >= 0)
        if groups is not None:
            reach &= (self.group_low <= groups[:, None]) & (self.group_high >= groups[:, None])
        return reach

    def holding(self, mask: Tensor) -> Tensor:
        """(L,) bool: the tile holds a box of mask (N,)."""
        return mask[self.members].any(dim=1)


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU in torchvision's nms arithmetic of boxes a and b, each (5, ...) rows x1, y1, x2, y2, area; the rows
    of a and b broadcast against each other."""
    width = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp_(min=0)
    height = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp_(min=0)
    inter = width.mul_(height)
    return inter.div_((a[4] + b[4]).sub_(inter))  # inter / (area_a + area_b - inter)


def _threshold_below(iou_threshold: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` <= iou_threshold: for an IoU x of that dtype, x > it iff x > iou_threshold.

    torchvision compares the IoU with the threshold in double precision; comparing a float32 tensor with a Python
    float rounds the threshold to float32 instead, and float32(0.1) > 0.1 would be missed. Computed on the host
    in plain Python (no tensor op, no device round trip).
    """
    if dtype == torch.float64:
        return iou_threshold
    threshold = min(iou_threshold, 2.0)  # an IoU never exceeds 1: larger thresholds act alike
    rounded = struct.unpack("<f", struct.pack("<f", threshold))[0]  # to the nearest float32
    if rounded > threshold:  # step down one float32 (positive floats are ordered like their bit patterns)
        rounded = struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", rounded))[0] - 1))[0]
    return rounded
