"""Exact greedy non-maximum suppression (NMS), vectorised.

Greedy NMS visits boxes by decreasing score and keeps a box unless an already kept box overlaps it with
IoU > iou_threshold. The result here is identical to torchvision.ops.nms (same IoU arithmetic, stable sort, so
tied scores resolve by index), but computed without a loop over boxes:

1. Overlap graph. An edge (i, j), i ranked before j, means IoU(i, j) > threshold. For thresholds >= 0.25 the
   graph is sparse and found without an N x N matrix (see `overlap_edges`); below that every box overlaps
   many others and a blocked dense pass is used instead (`_greedy_dense`).
2. Greedy on the graph: box j is kept iff no kept box has an edge into j. Boxes without incoming edges are
   kept and everything they point to is suppressed; on the remaining, undecided boxes the sweep
   kept[j] = not any(kept[i] for edges i -> j), started from "all kept", is repeated until nothing changes: its
   unique fixed point is the greedy answer. Clusters settle in a few sweeps; a long chain of boxes (each
   overlapping the next) needs one sweep per box, so after MAX_SWEEPS a sequential pass over the sparse graph
   finishes the undecided boxes.

Shape shorthand: N boxes, E edges of the overlap graph.
"""
from typing import List, Optional

import torch
from torch import Tensor

from fpn.ops.boxes import check_boxes
from fpn.ops.nms_graph import SPARSE_MIN_IOU, iou_table, overlap_edges, pair_iou, threshold_below

MAX_SWEEPS = 24  # vectorised sweeps before the sequential finish; clustered detections settle in < 12
DENSE_BLOCK = 256  # boxes per block of the dense fallback


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: (N, 4) float boxes (x1, y1, x2, y2).
        scores: (N,) float scores.
        iou_threshold: a box is discarded when its IoU with a kept, higher-scored box is > this (>= 0).

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score (ties: lower index first).
    """
    _check_inputs(boxes, scores, iou_threshold)
    # Indices are not differentiable: work on detached tensors (boxes may come from a graph, e.g. at eval
    # without torch.no_grad()).
    return _greedy_nms(boxes.detach(), scores.detach(), None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, independently within each category.

    Boxes of different categories never suppress each other. Categories are handled exactly (no coordinate
    offsets), in one pass over all boxes.

    Args:
        boxes: (N, 4) float boxes (x1, y1, x2, y2).
        scores: (N,) float scores.
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
    groups = torch.unique(idxs, return_inverse=True)[1] if idxs.numel() > 0 else idxs.long()
    return _greedy_nms(boxes.detach(), scores.detach(), groups, iou_threshold)


def _check_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    check_boxes(boxes)
    if boxes.dim() != 2:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) like boxes, got {tuple(scores.shape)}")
    if not iou_threshold >= 0:  # also rejects NaN
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")


def _greedy_nms(boxes: Tensor, scores: Tensor, groups: Optional[Tensor], iou_threshold: float) -> Tensor:
    order = torch.sort(scores, descending=True, stable=True)[1]  # rank -> box index
    if boxes.shape[0] < 2 or iou_threshold >= 1.0:  # an IoU never exceeds 1
        return order
    ranked = boxes.index_select(0, order)  # (N, 4) in score order: rank i < j means i is visited first
    if ranked.dtype not in (torch.float32, torch.float64):
        ranked = ranked.float()  # IoU of half-precision boxes in float32
    ranked_groups = groups.index_select(0, order) if groups is not None else None
    edges = None
    if iou_threshold >= SPARSE_MIN_IOU:
        edges = overlap_edges(ranked, ranked_groups, float(iou_threshold))
    if edges is None:
        keep = _greedy_dense(ranked, ranked_groups, float(iou_threshold))
    else:
        keep = _greedy_on_graph(ranked.shape[0], edges[0], edges[1])
    return order[keep]


def _greedy_on_graph(num_boxes: int, src: Tensor, dst: Tensor) -> Tensor:
    """(N,) bool greedy keep mask from the edges src -> dst (src ranked first) of the overlap graph."""
    device = src.device
    # settle the easy part first: a box nothing overlaps is kept, and so suppresses everything it overlaps
    source = torch.bincount(dst, minlength=num_boxes) == 0  # (N,)
    suppressed = torch.zeros_like(source)
    suppressed[dst[source.index_select(0, src)]] = True
    open_box = ~(source | suppressed)
    live = torch.nonzero(open_box.index_select(0, src) & open_box.index_select(0, dst)).squeeze(1)
    src, dst = src.index_select(0, live), dst.index_select(0, live)  # edges between undecided boxes
    keep = open_box.clone()
    for _ in range(MAX_SWEEPS):
        hit = torch.zeros_like(keep)
        hit[dst[keep.index_select(0, src)]] = True  # (E',) -> (N,)
        new_keep = open_box & ~hit
        if torch.equal(new_keep, keep):
            return source | keep
        keep = new_keep
    return _greedy_sequential(num_boxes, src, dst, open_box).to(device) | source


def _greedy_sequential(num_boxes: int, src: Tensor, dst: Tensor, open_box: Tensor) -> Tensor:
    # One pass in rank order over the undecided boxes: O(N + E), used only for long suppression chains.
    order = torch.argsort(src, stable=True)
    successors: List[List[int]] = [[] for _ in range(num_boxes)]
    for i, j in zip(src[order].tolist(), dst[order].tolist()):
        successors[i].append(j)
    kept = [False] * num_boxes
    suppressed = [False] * num_boxes
    for i in torch.nonzero(open_box).squeeze(1).tolist():
        if not suppressed[i]:
            kept[i] = True
            for j in successors[i]:
                suppressed[j] = True
    return torch.tensor(kept, dtype=torch.bool)


def _greedy_dense(ranked: Tensor, groups: Optional[Tensor], iou_threshold: float) -> Tensor:
    """(N,) bool greedy keep mask by blocks of DENSE_BLOCK ranks; memory O(kept * DENSE_BLOCK)."""
    num_boxes = ranked.shape[0]
    keep = torch.zeros(num_boxes, dtype=torch.bool, device=ranked.device)
    kept = ranked.new_zeros((0,), dtype=torch.int64)
    table = iou_table(ranked)  # (5, N)
    for start in range(0, num_boxes, DENSE_BLOCK):
        block = torch.arange(start, min(start + DENSE_BLOCK, num_boxes), device=ranked.device)
        if kept.numel() > 0:  # drop the block's boxes that a kept box suppresses
            block = block[~_overlaps(table, groups, kept, block, iou_threshold).any(dim=0)]
        inside = _overlaps(table, groups, block, block, iou_threshold).triu(diagonal=1)  # (B, B) i before j
        inside = inside.float()  # 0/1 counts below 2**24 are exact in float32
        block_keep = torch.ones(block.numel(), dtype=torch.bool, device=ranked.device)
        for _ in range(block.numel()):  # settles in at most B sweeps, usually a few
            new_keep = (block_keep.to(inside.dtype) @ inside) == 0
            if torch.equal(new_keep, block_keep):
                break
            block_keep = new_keep
        keep[block[block_keep]] = True
        kept = torch.cat((kept, block[block_keep]))
    return keep


def _overlaps(table: Tensor, groups: Optional[Tensor], rows: Tensor, cols: Tensor, iou_threshold: float) -> Tensor:
    # (R,) x (C,) ranks -> (R, C) bool: IoU > threshold within the same group
    r, c = rows[:, None].expand(-1, cols.numel()).reshape(-1), cols.repeat(rows.numel())
    over = pair_iou(table, r, c) > threshold_below(iou_threshold, table.dtype)
    if groups is not None:
        over &= groups[r] == groups[c]
    return over.reshape(rows.numel(), cols.numel())
