"""Tiles of nearby boxes, and a proof that a tile holds no box a given box could suppress.

Used by NMS on the CPU to find, for each kept box, the boxes it may overlap with IoU > t, without comparing it
with all N boxes.

Why a tile can be skipped. IoU(i, j) > t implies ow > t * max(w_i, w_j), with ow the overlap of the x extents
(inter <= ow * min(h_i, h_j) and union >= max(area_i, area_j)). If x1_j >= x1_i then ow <= w_i - (x1_j - x1_i),
so x1_j - x1_i < (1 - t) * w_i; if x1_j < x1_i then likewise x1_i - x1_j < (1 - t) * w_j < (1 - t) / t * w_i
(w_j < w_i / t since ow <= w_i). The same holds in y. A box j with x2_j <= x1_i does not overlap at all. The bounds
use t shrunk by SLACK and are widened by SLACK, far above the float rounding of an IoU (~1e-6 relative), so a pair
whose computed IoU exceeds t is never skipped; NaN coordinates never skip.

Shape shorthand: N boxes, L tiles of T boxes, B boxes asking.
"""
import math
from typing import Optional

import torch
from torch import Tensor

# 32: 0.92x / 0.98x, 128: 1.07x / 1.07x the time of 64 on scripts/bench_ops.py's NMS cases (1 thread, "Intel(R)
# Xeon(R) Processor" shared with other jobs, where +-20% is noise): no clear winner, 64 sits between the trade-offs
TILE = 64  # boxes per tile (T): smaller tiles skip more precisely, larger ones cost fewer tile tests
# exactness bound: 100x the float32 rounding of an IoU (~1e-6 relative); it only keeps tiles within 0.01% of a bound
SLACK = 1e-4  # relative safety margin of the skip bounds


class Tiles:
    """The boxes in tiles of `tile` boxes, each with the ranges of its boxes' coordinates.

    Tiles are runs of the boxes sorted by group, then by vertical strip (x1) and by y1 within a strip, so that a
    tile covers a small area and its ranges skip it for most boxes. The order matters for speed only: the skip
    test uses the true ranges of whatever boxes a tile holds. N <= `tile` boxes make one tile, in given order.

    Args:
        table: (N, 5) rows x1, y1, x2, y2, area.
        groups: (N,) int64 categories, or None.
        iou_threshold: t.
        tile: T.
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
        # the last tile is padded with copies of its last box: a pair met twice suppresses the same box twice
        self.members = torch.cat((order, order[-1:].expand((-n) % tile))).view(-1, tile)  # (L, T) indices
        self.rows = table.index_select(0, self.members.view(-1)).view(-1, tile, 5).transpose(1, 2).contiguous()
        self.low = self.rows[:, :4].amin(dim=2).t().contiguous()  # (4, L) ranges of x1, y1, x2, y2
        self.high = self.rows[:, :4].amax(dim=2).t().contiguous()
        self.groups = self.group_low = self.group_high = None
        if groups is not None:
            self.groups = groups[self.members]  # (L, T)
            self.group_low, self.group_high = self.groups.amin(dim=1), self.groups.amax(dim=1)
        t = iou_threshold * (1 - SLACK)
        self.reach_after = (1 - t) * (1 + SLACK)  # a partner's start - own start < this x own size
        self.reach_before = self.reach_after / t if t > 0 else math.inf  # own start - a partner's start < ...

    def near(self, rows: Tensor, groups: Optional[Tensor]) -> Tensor:
        """(B, L) bool: tile l may hold a box with IoU > t with box b of rows (B, 5); False is a proof."""
        start = rows[:, :2].t()[:, :, None]  # (2, B, 1) x1, y1
        size = (rows[:, 2:4] - rows[:, :2]).t()[:, :, None]  # (2, B, 1) width, height
        # a margin >= 0 proves the skip (x - y >= 0 iff x >= y in floats; NaN never skips): every box of the
        # tile starts too far after the box, or too far before it, or ends before it starts
        margin = torch.maximum(self.low[:2, None] - start - size * self.reach_after,
                               start - self.high[:2, None] - size * self.reach_before)  # (2, B, L)
        margin = torch.maximum(margin, start - self.high[2:, None]).amax(dim=0)  # (B, L)
        near = ~(margin >= 0)
        if groups is not None:
            near &= (self.group_low <= groups[:, None]) & (self.group_high >= groups[:, None])
        return near

    def holding(self, mask: Tensor) -> Tensor:
        """(L,) bool: the tile holds a box of mask (N,)."""
        return mask[self.members].any(dim=1)
