"""The sparse overlap graph of NMS: all pairs of boxes with IoU > t, found without an N x N matrix.

Two boxes can only have IoU > t if they are alike in size and close to each other. With inter <= ow * h_i (ow
the overlap of the x extents) and union >= max(area_i, area_j), IoU > t implies, for t >= 1/2:
  * t < w_j / w_i < 1 / t (and the same for heights): their log-sizes differ by less than log(1 / t);
  * |cx_i - cx_j| < (1 - t) * min(w_i, w_j) (and the same in y), since ow <= (w_i + w_j) / 2 - |cx_i - cx_j|
    and ow > t * max(w_i, w_j);
(for t < 1/2 the centre bound is (1 - t) / (2t) times the smaller side). So boxes are bucketed by (log-width bin,
log-height bin, row of a y grid sized for that bin) and sorted by centre x inside a bucket; each box looks up
the x range its bound allows in its own bucket and the neighbouring rows and size bins, and only those
candidates get an exact IoU, computed with the same float arithmetic as torchvision's kernel. All bounds are
widened by a few float ulps of the boxes' dtype so that no pair the exact IoU would keep is missed.
Shape shorthand: N boxes, V boxes with positive width and height, C candidate pairs, E edges.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

SPARSE_MIN_IOU = 0.25  # below this almost every overlapping pair is an edge: use the dense pass
_X_STEPS = 2**20  # resolution of the quantised centre x within a bucket
_CANDIDATES_PER_CHUNK = 2**22  # bounds the memory of candidate enumeration
# A member registers in the size bins (bw + dw, bh + dh) for these (dw, dh), so that a query in its own bins
# meets every neighbour bin pair once; (0, 0) comes first and pairs inside it are seen from both ends.
_MEMBER_BIN_OFFSETS = ((0, 0), (-1, 1), (-1, 0), (-1, -1), (0, -1))


def pair_iou(boxes: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """IoU of the pairs (boxes[first[p]], boxes[second[p]]), in torchvision's nms arithmetic.

    Args:
        boxes: (N, 4) float boxes (x1, y1, x2, y2).
        first, second: (P,) int64 indices into boxes.

    Returns:
        (P,) IoU in the boxes' dtype.
    """
    a, b = boxes[first], boxes[second]  # (P, 4) each
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp_(min=0)  # (P, 2)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area_a + area_b - inter)


def threshold_below(iou_threshold: float, dtype: torch.dtype) -> float:
    """The largest value of `dtype` <= iou_threshold: for an IoU x of that dtype, x > it iff x > iou_threshold.

    torchvision compares the IoU with the threshold in double precision; comparing a float32 tensor with a Python
    float rounds the threshold to float32 instead, and 0.1f > 0.1 would be missed.
    """
    rounded = torch.tensor(iou_threshold, dtype=torch.float64).to(dtype)
    if float(rounded) > iou_threshold:
        rounded = torch.nextafter(rounded, rounded.new_tensor(-math.inf))
    return float(rounded)


def overlap_edges(ranked: Tensor, groups: Optional[Tensor], iou_threshold: float) -> Optional[Tuple[Tensor, Tensor]]:
    """All pairs with IoU > iou_threshold (and equal group), as edges from the higher to the lower rank.

    Args:
        ranked: (N, 4) float boxes (x1, y1, x2, y2), sorted by decreasing score.
        groups: (N,) int64 categories in [0, G), or None when all boxes are one category.
        iou_threshold: in [SPARSE_MIN_IOU, 1).

    Returns:
        (src, dst): (E,) int64 ranks with src < dst, or None when the coordinates are too spread out for the
        int64 bucket keys (the caller then uses the dense pass).
    """
    device = ranked.device
    wh = ranked[:, 2:] - ranked[:, :2]
    valid = torch.nonzero((wh > 0).all(dim=1)).squeeze(1)  # (V,) a box without area has IoU 0 with anything
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if valid.numel() < 2:
        return empty, empty
    buckets = _buckets(ranked, groups, valid, iou_threshold)
    if buckets is None:
        return None
    member_key, member, member_own, query_lo, query_hi = buckets
    member_key, sort = torch.sort(member_key)
    member, member_own = member[sort], member_own[sort]
    lo = torch.searchsorted(member_key, query_lo).reshape(-1)  # (3V,) three rows per query
    hi = torch.searchsorted(member_key, query_hi, right=True).reshape(-1)
    counts = (hi - lo).clamp_(min=0)
    ends = torch.cumsum(counts, dim=0)
    # enumerate the candidates in chunks of whole query rows so that memory stays bounded
    marks = list(range(_CANDIDATES_PER_CHUNK, int(ends[-1]), _CANDIDATES_PER_CHUNK))
    bounds = torch.searchsorted(ends, torch.tensor(marks, device=device), right=True).tolist() if marks else []
    src, dst = [], []
    for row_start, row_end in zip([0] + bounds, bounds + [counts.numel()]):
        chunk_counts = counts[row_start:row_end]
        total = int(chunk_counts.sum())
        rows = torch.repeat_interleave(chunk_counts, output_size=total) + row_start  # (C,) query row
        first_slot = ends[rows] - counts[rows]  # (C,) first candidate slot of the row
        slot = torch.arange(total, device=device) + (ends[row_start] - counts[row_start]) - first_slot + lo[rows]
        query, other = rows.div(3, rounding_mode="floor"), member[slot]  # (C,) indices into valid
        fresh = ~member_own[slot] | (query < other)  # a pair in one bucket is met from both ends: keep one
        query, other = valid[query[fresh]], valid[other[fresh]]
        over = pair_iou(ranked, query, other) > threshold_below(iou_threshold, ranked.dtype)
        query, other = query[over], other[over]
        src.append(torch.min(query, other))
        dst.append(torch.max(query, other))
    return torch.cat(src), torch.cat(dst)


def _buckets(ranked: Tensor, groups: Optional[Tensor], valid: Tensor, iou_threshold: float):
    """Sortable int64 keys of the members and [lo, hi] key ranges of the queries, or None on overflow."""
    device = ranked.device
    # the exact IoU of float boxes may exceed t by a few ulps; bound the sizes for a slightly lower t
    slack = 64 * torch.finfo(ranked.dtype).eps
    t = iou_threshold * (1 - slack)
    bin_width = math.log(1 / t) + 1e-6  # > log(1/t): partners' bins differ by at most one
    reach = (1 - t) * (1.0 if t >= 0.5 else 1 / (2 * t)) * (1 + slack)  # centre distance / smaller side
    box = ranked[valid].double()  # (V, 4); a difference of two floats is exact in float64
    size = box[:, 2:] - box[:, :2]  # (V, 2) width, height
    centre = (box[:, :2] + box[:, 2:]) * 0.5
    centre = centre - centre.min(dim=0).values
    bins = torch.floor(torch.log(size) / bin_width).long()  # (V, 2)
    bin_min = bins.min(dim=0).values
    bins = bins - bin_min
    num_bins = bins.max(dim=0).values + 2  # room for the member offsets -1 .. +1
    num_w, num_h = int(num_bins[0]), int(num_bins[1])
    # rows of the y grid of height-bin b: taller than any centre distance of a query in bin b
    row_height = reach * torch.exp((torch.arange(num_h, device=device) + bin_min[1] + 1) * bin_width) * 1.001
    x_step = float(max(centre[:, 0].max(), size[:, 0].max())) / _X_STEPS + 1e-12
    group = groups[valid] if groups is not None else torch.zeros_like(valid)

    offsets = torch.tensor(_MEMBER_BIN_OFFSETS, device=device)  # (5, 2)
    member_bins = (bins[None] + offsets[:, None]).reshape(-1, 2)  # (5V, 2)
    member = torch.arange(valid.numel(), device=device).repeat(len(_MEMBER_BIN_OFFSETS))
    registered = (member_bins >= 0).all(dim=1)
    member, member_bins = member[registered], member_bins[registered]
    member_own = registered.nonzero().squeeze(1) < valid.numel()  # offset (0, 0)
    member_row = torch.floor(centre[member, 1] / row_height[member_bins[:, 1]]).long()
    member_x = torch.floor(centre[member, 0] / x_step).long()  # in [0, _X_STEPS]
    query_row = torch.floor(centre[:, 1] / row_height[bins[:, 1]]).long()  # (V,)
    radius = reach * size[:, 0]  # (V,) the x bound uses the query's own width (the smaller side or less)
    x_lo = (torch.floor((centre[:, 0] - radius) / x_step).long() - 1).clamp_(min=-1)[:, None]
    x_hi = (torch.floor((centre[:, 0] + radius) / x_step).long() + 1).clamp_(max=_X_STEPS + 1)[:, None]

    num_rows = int(torch.max(member_row.max(), query_row.max())) + 3  # query rows reach -1 .. max + 1
    num_groups = int(groups.max()) + 1 if groups is not None else 1
    if num_groups * num_w * num_h * num_rows >= 2**62 // (_X_STEPS + 4):
        return None

    def key(grp: Tensor, bin_w: Tensor, bin_h: Tensor, row: Tensor, x: Tensor) -> Tensor:
        bucket = ((grp * num_w + bin_w) * num_h + bin_h) * num_rows + row + 1
        return bucket * (_X_STEPS + 4) + x + 1  # x in [-1, _X_STEPS + 1] never spills into the next bucket

    member_key = key(group[member], member_bins[:, 0], member_bins[:, 1], member_row, member_x)
    rows = query_row[:, None] + torch.tensor([-1, 0, 1], device=device)  # (V, 3)
    query = (group[:, None], bins[:, 0:1], bins[:, 1:2], rows)
    return member_key, member, member_own, key(*query, x_lo), key(*query, x_hi)
