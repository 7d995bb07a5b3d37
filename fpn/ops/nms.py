"""Exact greedy non-maximum suppression (NMS): bounded time and memory on any input, few host syncs, any device.

Greedy NMS visits boxes by decreasing score (ties: lower index first) and keeps a box unless a kept box visited
before it overlaps it with IoU > iou_threshold. The kept indices here are identical to torchvision.ops.nms (same
IoU arithmetic, same threshold comparison), computed a window of boxes at a time (fpn/ops/nms_window.py):

1. Window: the first B boxes, in score order, that are neither suppressed nor decided.
2. Greedy inside the window by a fixed-point iteration of its (B, B) overlap matrix; its settled prefix is
   committed (usually the whole window).
3. Suppress: each kept box of the window suppresses every box after it that it overlaps.
Clustered boxes are the cheap case (one kept box suppresses its whole cluster at once, as in torchvision's
kernel); spread-out boxes cost about (kept boxes) x (boxes near them); a suppression chain (each box overlapping
the next) costs one round of step 2 per box of the chain.

Step 3 has two forms, one algorithm:
  * on the CPU, where reading a size on the host costs nothing, each kept box is compared with the tiles of boxes
    that may be near it (fpn/ops/nms_tiles.py), found and counted on the host: one host read per window;
  * on accelerators (CUDA, MPS), in fixed-shape blocks: every kept box of the window against every box, which
    needs no host read at all; the host asks whether the work is done after windows 1, 3, 7, 15, ... (windows
    past the end are empty and change nothing).
Both are exact on every device; the tests run both on the CPU against fpn/ops/nms_reference.py, the algorithm
as defined above in a few dozen slow lines.

Shape shorthand: N boxes, B boxes per window, L tiles of T boxes.
"""
from typing import Optional

import torch
from torch import Tensor

from fpn.ops.boxes import check_boxes
from fpn.ops.nms_tiles import Tiles
from fpn.ops.nms_window import box_table, first_true, iou, next_window, threshold_below

# Why these values. Timings: the 9 NMS cases of scripts/bench_ops.py on an "Intel(R) Xeon(R) Processor" (2 cores
# shared with other jobs), 1 thread, torch 2.14.1, each value against the one here, alternating, min of 7, two runs;
# ratios > 1 mean the alternative is slower. The same value against itself gave 0.82-1.07: differences below ~20%
# are noise there. No accelerator was at hand: the block constants state their memory bound and trade-off.
# Tiles need a host read per window (free on a CPU); blocks on the CPU are 8.5-35x slower (5000 proposals: 470 ms/32 ms)
SPARSE_DEVICES = ("cpu",)  # devices where step 3 uses tiles and reads a size per window; elsewhere fixed blocks
# 512: 1.22x / 1.26x slower (geometric mean of the 9 cases; the chain 1.6x / 2.3x); 128: 1.01x / 1.00x (noise)
WINDOW = 256  # boxes per window (B) with tiles; up to WINDOW boxes make one window, more start with FIRST_WINDOW
# 16: 1.04x / 1.10x (tight clusters up to 3.4x); 256: 0.97x / 1.06x (noise): a cluster's (B, B) matrix stays small
FIRST_WINDOW = 64  # (a cluster often settles everything in the first window) and grow 4x per window
# not measured (no accelerator): B = 1024 makes a (B, B) fixed point of 4 MiB in float32; larger windows mean fewer
# host reads but more rounds for a chain, smaller ones more windows
BLOCK_WINDOW = 1024  # boxes per window in fixed-shape blocks (a (B, B) and a (B, N) pass per window)
# 8: 1.04x / 0.97x, 32: 1.19x / 1.03x (noise): trades rounds spent on a settled window for windows left unsettled
FIRST_ROUNDS = 16  # rounds of greedy in a window; doubled while windows do not settle, halved when they do
# memory bound: ~60 bytes of temporaries per pair -> <= 16 MiB; time 2**16: 0.95x / 0.91x, 2**20: 0.86x / 0.91x (noise)
PAIRS_PER_CHUNK = 2**18  # box pairs per chunk of step 3 with tiles: bounds its memory (~16 MiB)
# 0 (always sorted tiles): 1.05x / 0.94x, 2**14: 0.94x / 1.13x, 2**18: 0.81x / 1.00x (noise): sorting N boxes into
# tiles against comparing the few kept boxes of a clustered input with all N
ONE_TILE_PAIRS = 2**16  # kept boxes x N box pairs up to which tiles stay one tile in visiting order
# memory bound, not measured (no accelerator): ~15 bytes of temporaries per pair -> ~30 MiB; larger: fewer launches
PAIRS_PER_BLOCK = 2**21  # box pairs per block of step 3 in fixed shapes (~30 MiB in float32)


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
        (K,) int64 indices of the kept boxes, by decreasing score (ties: lower index first). Empty boxes of
        any shape give an empty result without looking at the other arguments, as torchvision's does.
    """
    if _known_empty(boxes):
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    _check_inputs(boxes, scores, iou_threshold)
    if not isinstance(idxs, Tensor):
        raise ValueError(f"idxs must be a tensor of shape {tuple(scores.shape)} like scores, got {type(idxs).__name__}")
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must have shape {tuple(scores.shape)} like scores, got {tuple(idxs.shape)}")
    if idxs.is_floating_point() or idxs.is_complex():
        raise ValueError(f"idxs must be an integer tensor, got {idxs.dtype}")
    return torch.ops.fpn.batched_nms(boxes.detach(), scores.detach(), idxs.detach(), float(iou_threshold))


def _known_empty(boxes: Tensor) -> bool:
    """`boxes` holds no element, known without branching on a count that a trace has left unknown."""
    if not isinstance(boxes, Tensor):
        return False
    if not torch.compiler.is_compiling():
        return boxes.numel() == 0
    # torch.compile / torch.export: the count can be data-dependent (e.g. the boxes a score threshold kept); then
    # no branch on it (guard_or_false: False when unknown), and the operator gives the same empty result itself.
    from torch.fx.experimental.symbolic_shapes import guard_or_false  # loaded already when tracing

    return guard_or_false(boxes.numel() == 0)


def _check_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    check_boxes(boxes)
    if boxes.dim() != 2:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if not isinstance(scores, Tensor):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) like boxes, got {type(scores).__name__}")
    if scores.shape != (boxes.shape[0],):
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
    greedy = _greedy_with_tiles if ranked.device.type in SPARSE_DEVICES else _greedy_in_blocks
    return order[greedy(ranked, ranked_groups, iou_threshold)]


def _greedy_with_tiles(boxes: Tensor, groups: Optional[Tensor], iou_threshold: float) -> Tensor:
    """(N,) bool greedy keep mask of boxes (N, 4) in visiting order (optionally within groups (N,)); step 3 by
    tiles, one host read per window."""
    n, device = boxes.shape[0], boxes.device
    threshold = threshold_below(iou_threshold, boxes.dtype)
    table = box_table(boxes)  # (N + 1, 5)
    table_groups = torch.cat((groups, groups.new_zeros(1))) if groups is not None else None  # (N + 1,) like table
    # the first window's kept boxes meet every box if they are few (one tile in visiting order, no sort: one kept box
    # per cluster often ends the job); more kept boxes, and the later windows, use tiles of nearby boxes
    tiles, spatial_tiles = Tiles(table[:n], groups, iou_threshold, tile=n), False
    times_suppressed = torch.zeros(n, dtype=torch.int32, device=device)  # (N,) how many kept boxes overlap each box
    ranks = torch.arange(n, device=device)
    frontier = torch.zeros((), dtype=torch.int64, device=device)  # every rank below it is decided
    size, rounds, earlier = (n if n <= WINDOW else FIRST_WINDOW), FIRST_ROUNDS, None  # few boxes: one window
    while True:
        if earlier is None or earlier.shape[0] != size:  # (B, B) [j, i]: 1.0 where i < j
            earlier = torch.ones(size, size, dtype=boxes.dtype, device=device).tril_(diagonal=-1)
        window = next_window(table, table_groups, (times_suppressed == 0) & (ranks >= frontier), size, earlier,
                             threshold, rounds, stop_early=True)
        frontier = window.frontier
        # the kept boxes of the window suppress the boxes after them that they overlap, tile by tile
        while True:
            near = tiles.near(window.rows, window.groups) & window.kept[:, None]  # (B, L) kept box b may reach tile l
            still_open = (times_suppressed == 0) & (ranks >= frontier)
            unreached = tiles.holding(still_open) & ~near.any(dim=0)  # (L,) open boxes that no kept box nears
            num_near, done, more, all_settled = torch.stack((
                near.sum(), frontier >= n, unreached.any(), window.settled >= window.count)).tolist()  # the read
            if spatial_tiles or num_near * n <= ONE_TILE_PAIRS:  # one tile: num_near kept boxes x n boxes
                break
            tiles, spatial_tiles = Tiles(table[:n], groups, iou_threshold), True  # many kept boxes: sort tiles now
        tile_size = tiles.members.shape[1]  # T
        for chunk in first_true(near.view(-1), num_near).split(max(1, PAIRS_PER_CHUNK // tile_size)):
            slot, tile = chunk.div(near.shape[1], rounding_mode="floor"), chunk.remainder(near.shape[1])  # (p,)
            members = tiles.members.index_select(0, tile)  # (p, T) ranks
            kept_rows = window.rows.index_select(0, slot).t()[:, :, None]  # (5, p, 1)
            hit = iou(kept_rows, tiles.rows.index_select(0, tile).transpose(0, 1)) > threshold  # (p, T)
            hit &= members > window.ranks.index_select(0, slot)[:, None]
            if groups is not None:
                hit &= tiles.groups.index_select(0, tile) == window.groups.index_select(0, slot)[:, None]
            times_suppressed.index_add_(0, members.view(-1), hit.view(-1).view(torch.uint8).to(torch.int32))
        # when every open box was near a kept box, all may be suppressed now: ask (a second read)
        if done or not (more or ((times_suppressed == 0) & (ranks >= frontier)).any()):
            return times_suppressed == 0
        size = min(4 * size, WINDOW)
        rounds = max(FIRST_ROUNDS, rounds // 2) if all_settled else min(2 * rounds, WINDOW)
        if not spatial_tiles:
            tiles, spatial_tiles = Tiles(table[:n], groups, iou_threshold), True


def _greedy_in_blocks(boxes: Tensor, groups: Optional[Tensor], iou_threshold: float) -> Tensor:
    """(N,) bool greedy keep mask of boxes (N, 4) in visiting order (optionally within groups (N,)); step 3 in
    fixed-shape blocks, a host read after windows 1, 3, 7, 15, ..."""
    n, device = boxes.shape[0], boxes.device
    threshold = threshold_below(iou_threshold, boxes.dtype)
    table = box_table(boxes)  # (N + 1, 5)
    columns = table[:n].t().contiguous()  # (5, N)
    if groups is not None:
        groups = torch.cat((groups, groups.new_zeros(1)))
    alive = torch.ones(n, dtype=torch.bool, device=device)  # (N,) not suppressed
    ranks = torch.arange(n, device=device)
    frontier = torch.zeros((), dtype=torch.int64, device=device)  # every rank below it is decided
    size = min(BLOCK_WINDOW, n)
    earlier = torch.ones(size, size, dtype=boxes.dtype, device=device).tril_(diagonal=-1)  # [j, i]: i < j
    chunk = max(1, PAIRS_PER_BLOCK // size)  # boxes per block of step 3
    rounds, unsettled, windows, next_read = FIRST_ROUNDS, torch.zeros((), dtype=torch.bool, device=device), 0, 1
    decided = 0  # every rank below it was decided at the last host read: step 3 can skip those boxes
    while True:
        window = next_window(table, groups, alive & (ranks >= frontier), size, earlier, threshold, rounds)
        frontier = window.frontier
        unsettled |= window.settled < window.count
        kept_rows = window.rows.t()[:, :, None]  # (5, B, 1)
        for start in range(decided, n, chunk):  # every kept box against every box after it
            block = slice(start, min(start + chunk, n))
            hit = iou(kept_rows, columns[:, None, block]) > threshold  # (B, C)
            hit &= window.kept[:, None] & (ranks[None, block] > window.ranks[:, None])
            if groups is not None:
                hit &= window.groups[:, None] == groups[None, block]
            alive[block] &= ~hit.any(dim=0)
        windows += 1
        if windows == next_read:
            decided, slow = torch.stack((frontier, unsettled.long())).tolist()  # the host read
            if decided >= n:
                return alive
            next_read, unsettled = 2 * next_read + 1, torch.zeros_like(unsettled)
            rounds = min(2 * rounds, size) if slow else max(FIRST_ROUNDS, rounds // 2)
