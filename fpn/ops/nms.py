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
    table = torch.cat((boxes, (boxes[:, 2] - boxes[:, 0]).mul_(boxes[:, 3] - boxes[:, 1])[:, None]), dim=1)
    tiles = _Tiles(table, groups, iou_threshold)
    table = torch.cat((table, table.new_full((1, 5), math.nan)))
    if groups is not None:
        groups = torch.cat((groups, groups.new_zeros(1)))
    suppressed = torch.zeros(n, dtype=torch.int32, device=device)  # (N,) how many kept boxes overlap each box
    ranks = torch.arange(n, device=device)
    frontier = torch.zeros((), dtype=torch.int64, device=device)  # every rank below it is decided
    size, rounds = FIRST_WINDOW, FIRST_ROUNDS
    while True:
        # 1. the window: the first `size` open (unsuppressed, undecided) ranks; rank N pads a short window
        slots = torch.arange(size, device=device)
        open_box = (suppressed == 0) & (ranks >= frontier)
        window = torch.searchsorted(torch.cumsum(open_box, 0), slots + 1)  # (B,) in [0, N]
        rows = table.index_select(0, window)  # (B, 5)
        window_groups = groups.index_select(0, window) if groups is not None else None
        # 2. greedy inside the window; its settled prefix is committed
        keep, settled = _window_greedy(rows, window_groups, window < n, threshold, rounds)
        kept = keep & (slots < settled)  # (B,)
        frontier = torch.cat((window, window[-1:] + 1)).index_select(0, settled.view(1))[0]
        # 3. the kept boxes suppress the boxes after them that they overlap
        pairs = tiles.candidates(rows, window_groups) & kept[:, None]  # (B, L)
        unreached = open_box & (ranks >= frontier) & ~tiles.covered(pairs)  # open boxes no kept box can reach
        num_pairs, done, more, all_settled = torch.stack((
            pairs.sum(), frontier >= n, unreached.any(), settled >= (window < n).sum())).tolist()  # the sync
        for pair in torch.nonzero_static(pairs, size=num_pairs).split(max(1, _CHUNK // TILE)):
            first = window.index_select(0, pair[:, 0])  # (p,) ranks of kept boxes
            members = tiles.members.index_select(0, pair[:, 1])  # (p, T) ranks
            hit = _iou(rows.index_select(0, pair[:, 0])[:, :, None], tiles.rows.index_select(0, pair[:, 1]), dim=1)
            hit = (hit > threshold) & (members > first[:, None])  # (p, T)
            if groups is not None:
                hit &= tiles.groups.index_select(0, pair[:, 1]) == window_groups.index_select(0, pair[:, 0])[:, None]
            suppressed.index_add_(0, members.view(-1), hit.view(-1).to(torch.int32))
        # when every open box was within reach of a kept box, all may be gone now: ask (a second sync)
        if done or not (more or ((suppressed == 0) & (ranks >= frontier)).any()):
            return suppressed == 0
        size, rounds = min(4 * size, WINDOW), FIRST_ROUNDS if all_settled else min(2 * rounds, WINDOW)


def _window_greedy(rows: Tensor, groups: Optional[Tensor], valid: Tensor, threshold: float, rounds: int):
    """Greedy on the window's boxes by `rounds` rounds of the fixed-point iteration (see the module docstring).

    Args:
        rows: (B, 5) boxes and areas in visiting order; groups: (B,) or None; valid: (B,) False for padding.

    Returns:
        keep: (B,) bool after the last round; settled: () int64, the length of the prefix known to be final.
    """
    overlap = (_iou(rows[:, None], rows[None, :]) > threshold).triu_(diagonal=1)  # (B, B) i visited before j
    if groups is not None:
        overlap &= groups[:, None] == groups[None, :]
    overlap = overlap.to(rows.dtype)  # counts of 0/1 below 2**24 are exact
    keep = previous = valid = valid.to(rows.dtype)
    for _ in range(rounds):
        keep, previous = valid * ((keep @ overlap) == 0), keep
    changed = (keep != previous).to(torch.int32)
    return keep.bool(), torch.where(changed.any(), changed.argmax(), rows.shape[0])


class _Tiles:
    """The boxes in tiles of TILE, each with the ranges of its boxes' coordinates.

    Tiles are runs of the boxes sorted by group, then by vertical strip (x1) and by y1 within a strip, so that a
    tile covers a small area and skipping it by its ranges is effective; N <= TILE boxes make one tile. The order
    matters for speed only: the skip test uses the true ranges of whatever boxes a tile holds.
    """

    def __init__(self, table: Tensor, groups: Optional[Tensor], iou_threshold: float):
        n = table.shape[0]
        order = torch.arange(n, device=table.device)
        if n > TILE:
            strips = math.ceil(math.sqrt(n / TILE))  # tiles about as wide as high, in boxes
            x1, y1 = table[:, 0], table[:, 1]
            strip = ((x1 - x1.min()) / (x1.max() - x1.min()) * strips).floor_().clamp_(max=strips - 1)
            key = strip + (y1 - y1.min()) / (y1.max() - y1.min()) * 0.5  # (N,) NaN for odd extents: order only
            order = torch.argsort(key, stable=True)
            if groups is not None:
                order = order.index_select(0, torch.argsort(groups.index_select(0, order), stable=True))
        # the last tile is padded with copies of its last box: a pair seen twice suppresses the same box
        self.members = torch.cat((order, order[-1:].expand((-n) % TILE))).view(-1, TILE)  # (L, T) ranks
        self.tile_of = torch.empty_like(order).index_put_(
            (self.members.view(-1),), torch.arange(self.members.shape[0], device=order.device).repeat_interleave(
                TILE))  # (N,) the tile of each rank
        self.rows = table.index_select(0, self.members.view(-1)).view(-1, TILE, 5).transpose(1, 2).contiguous()
        self.low, self.high = self.rows[:, :4].amin(dim=2), self.rows[:, :4].amax(dim=2)  # (L, 4) ranges
        if groups is not None:
            self.groups = groups[self.members]  # (L, T)
            self.group_low, self.group_high = self.groups.amin(dim=1), self.groups.amax(dim=1)
        t = iou_threshold * (1 - _SLACK)
        self.reach_after = (1 - t) * (1 + _SLACK)  # partner start - own start < this x own size
        self.reach_before = self.reach_after / t if t > 0 else math.inf  # own start - partner start < ...

    def candidates(self, rows: Tensor, groups: Optional[Tensor]) -> Tensor:
        """(B, L) bool: tile l may hold a box with IoU > t with box b of rows (B, 5); False is a proof."""
        start, size = rows[:, None, :2], (rows[:, 2:4] - rows[:, :2])[:, None]  # (B, 1, 2) each
        skip = (self.low[:, :2] - start >= size * self.reach_after)  # every start too far after
        skip |= start - self.high[:, :2] >= size * self.reach_before  # every start too far before
        skip |= self.high[:, 2:] <= start  # every end before the box starts: no overlap
        skip = skip.any(dim=2)  # (B, L)
        if groups is not None:
            skip |= (self.group_low > groups[:, None]) | (self.group_high < groups[:, None])
        return ~skip

    def covered(self, pairs: Tensor) -> Tensor:
        """(N,) bool: the box is in a tile of some pair of pairs (B, L)."""
        return pairs.any(dim=0).index_select(0, self.tile_of)


def _iou(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """IoU of boxes a and b, broadcast, in torchvision's nms arithmetic; dimension `dim` (of size 5) holds x1, y1,
    x2, y2, area."""
    top_left = torch.maximum(a.narrow(dim, 0, 2), b.narrow(dim, 0, 2))
    size = (torch.minimum(a.narrow(dim, 2, 2), b.narrow(dim, 2, 2)) - top_left).clamp_(min=0)  # overlap w, h
    inter = size.select(dim, 0) * size.select(dim, 1)
    return inter / ((a.select(dim, 4) + b.select(dim, 4)).sub_(inter))  # inter / (area_a + area_b - inter)


def _threshold_below(iou_threshold: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` <= iou_threshold: for an IoU x of that dtype, x > it iff x > iou_threshold.

    torchvision compares the IoU with the threshold in double precision; comparing a float32 tensor with a Python
    float rounds the threshold to float32 instead, and float32(0.1) > 0.1 would be missed.
    """
    rounded = torch.tensor(iou_threshold, dtype=torch.float64).to(dtype)
    if float(rounded) > iou_threshold:
        rounded = torch.nextafter(rounded, rounded.new_tensor(-math.inf))
    return float(rounded)
