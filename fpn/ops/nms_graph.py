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
SWEEP_MAX_CANDIDATES = 2**14  # up to this many candidates the plain x sweep beats building the grid
# A member registers in the size bins (bw + dw, bh + dh) for these (dw, dh), so that a query in its own bins
# meets every neighbour bin pair once; (0, 0) comes first and pairs inside it are seen from both ends.
_MEMBER_BIN_OFFSETS = ((0, 0), (-1, 1), (-1, 0), (-1, -1), (0, -1))


def iou_table(boxes: Tensor) -> Tensor:
    """(N, 4) boxes (x1, y1, x2, y2) -> (N, 5) rows (x1, y1, x2, y2, area), the operand of pair_iou."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return torch.cat((boxes, area[:, None]), dim=1)


def pair_iou(table: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """IoU of the pairs (box first[p], box second[p]), in torchvision's nms arithmetic.

    Args:
        table: (N, 5) float rows (x1, y1, x2, y2, area) from iou_table.
        first, second: (P,) int64 indices into table.

    Returns:
        (P,) IoU in the table's dtype.
    """
    a, b = table[first], table[second]  # (P, 5) each
    wh = (torch.min(a[:, 2:4], b[:, 2:4]) - torch.max(a[:, :2], b[:, :2])).clamp_(min=0)  # (P, 2)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (a[:, 4] + b[:, 4] - inter)


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
    # the exact IoU of float boxes may exceed t by a few ulps: bound the geometry for a slightly lower t
    t = iou_threshold * (1 - 64 * torch.finfo(ranked.dtype).eps)
    ranges = _sweep_ranges(ranked, groups, t)
    if int(ranges[1].sum()) > SWEEP_MAX_CANDIDATES:
        ranges = _grid_ranges(ranked, groups, t)
        if ranges is None:
            return None
    return _edges_in_ranges(ranked, ranges, threshold_below(iou_threshold, ranked.dtype))


def _sweep_ranges(ranked: Tensor, groups: Optional[Tensor], t: float):
    """Candidates of the x sweep: sorted by x1 (within a group), j follows i while x1_j < x1_i + (1 - t) w_i."""
    box = ranked.double()  # a difference of two floats is exact in float64
    width = box[:, 2] - box[:, 0]
    key = box[:, 0] - box[:, 0].min()
    if groups is not None:  # sort by (group, x1): a window never reaches into the next group
        key = key + groups.double() * (float(key.max() + width.clamp(min=0).max()) + 1.0)
    key, order = torch.sort(key, stable=True)
    reach = (1 - t) * width[order] * (1 + 1e-6) + 1e-7 * (1 + key.abs())  # a little wider: float rounding
    end = torch.searchsorted(key, key + reach, right=True)  # (N,) past the last candidate of each box
    start = torch.arange(1, key.numel() + 1, device=key.device)
    return start, (end - start).clamp_(min=0), order, order, None


def _edges_in_ranges(ranked: Tensor, ranges, threshold: float) -> Tuple[Tensor, Tensor]:
    """Exact IoU test of every candidate: row r pairs query rank row_query[r] with the members in slots
    [lo[r], lo[r] + counts[r]); member_bound (or None) drops a pair unless query < member_bound[slot]."""
    lo, counts, row_query, member, member_bound = ranges
    device, table = ranked.device, iou_table(ranked)
    ends = torch.cumsum(counts, dim=0)
    row_shift = lo - (ends - counts)  # (R,) candidate number -> member slot, per row
    # enumerate the candidates in chunks of whole rows so that memory stays bounded
    marks = list(range(_CANDIDATES_PER_CHUNK, int(ends[-1]), _CANDIDATES_PER_CHUNK))
    bounds = torch.searchsorted(ends, torch.tensor(marks, device=device), right=True).tolist() if marks else []
    edges = []
    for row_start, row_end in zip([0] + bounds, bounds + [counts.numel()]):
        first = int(ends[row_start] - counts[row_start])
        total = int(ends[row_end - 1]) - first
        rows = torch.repeat_interleave(counts[row_start:row_end], output_size=total) + row_start  # (C,)
        slot = torch.arange(first, first + total, device=device) + row_shift[rows]  # (C,) member slot
        pairs = torch.stack((row_query[rows], member[slot]))  # (2, C) ranks
        if member_bound is not None:
            pairs = pairs[:, pairs[0] < member_bound[slot]]
        pairs = pairs[:, pair_iou(table, pairs[0], pairs[1]) > threshold]  # (2, E')
        edges.append(torch.sort(pairs, dim=0).values)  # src < dst
    edges = torch.cat(edges, dim=1)
    return edges[0], edges[1]


def _grid_ranges(ranked: Tensor, groups: Optional[Tensor], t: float):
    """Candidates of the size-bin / row grid (see the module docstring), or None on int64 key overflow."""
    wh = ranked[:, 2:] - ranked[:, :2]
    valid = torch.nonzero((wh > 0).all(dim=1)).squeeze(1)  # (V,) a box without area has IoU 0 with anything
    buckets = _buckets(ranked, groups, valid, t)
    if buckets is None:
        return None
    member_key, member_own, query_keys = buckets
    member_key, sort = torch.sort(member_key)
    member = valid.repeat(len(_MEMBER_BIN_OFFSETS))[sort]  # (M,) rank of each member
    # a pair inside one bucket is met from both ends: keep it from the lower rank only
    member_bound = torch.where(member_own[sort], member, torch.full_like(member, torch.iinfo(torch.int64).max))
    lo_hi = torch.searchsorted(member_key, query_keys)  # (V, 3, 2): keys are integers, hi was given as hi + 1
    lo = lo_hi[..., 0].reshape(-1)  # (3V,) three rows per query
    return lo, (lo_hi[..., 1].reshape(-1) - lo).clamp_(min=0), valid.repeat_interleave(3), member, member_bound


def _buckets(ranked: Tensor, groups: Optional[Tensor], valid: Tensor, t: float):
    """int64 keys of the members, which of them are in their own bins, and (V, 3, 2) key ranges [lo, hi + 1)
    of the queries' three rows; None when the keys would overflow int64."""
    device = ranked.device
    bin_width = math.log(1 / t) + 1e-6  # > log(1/t): partners' bins differ by at most one
    reach = (1 - t) * (1.0 if t >= 0.5 else 1 / (2 * t)) * (1 + 1e-6)  # centre distance / smaller side
    box = ranked[valid].double()  # (V, 4); a difference of two floats is exact in float64
    size = box[:, 2:] - box[:, :2]  # (V, 2) width, height
    centre = box[:, :2] + size * 0.5
    centre = centre - centre.min(dim=0).values
    bins = torch.floor(torch.log(size) / bin_width).long()  # (V, 2)
    bin_min = bins.min(dim=0).values
    bins = bins - (bin_min - 1)  # >= 1, so that a member's neighbour bin (>= 0) is a valid key
    num_bins = bins.max(dim=0).values + 2
    num_w, num_h = int(num_bins[0]), int(num_bins[1])
    # rows of the y grid of height-bin b: taller than any centre distance of a query in bin b
    row_height = reach * torch.exp((torch.arange(num_h, device=device) + bin_min[1]) * bin_width) * 1.001
    x_step = float(max(centre[:, 0].max(), size[:, 0].max())) / _X_STEPS + 1e-12
    group = groups[valid] if groups is not None else torch.zeros_like(valid)

    offsets = torch.tensor(_MEMBER_BIN_OFFSETS, device=device)  # (5, 2)
    member_bins = (bins[None] + offsets[:, None]).reshape(-1, 2)  # (5V, 2), offset-major
    member_centre = centre.repeat(len(_MEMBER_BIN_OFFSETS), 1)  # (5V, 2)
    member_row = torch.floor(member_centre[:, 1] / row_height[member_bins[:, 1]]).long()
    member_x = torch.floor(member_centre[:, 0] / x_step).long()  # in [0, _X_STEPS]
    # rows met by the query's own bound [cy - r, cy + r], r = reach * height < row height: at most three
    query_height = row_height[bins[:, 1]]
    row_lo = torch.floor((centre[:, 1] - reach * size[:, 1]) / query_height).long()
    row_hi = torch.floor((centre[:, 1] + reach * size[:, 1]) / query_height).long()
    radius = reach * size[:, 0]  # (V,) the x bound uses the query's own width (the smaller side or less)
    x_lo = (torch.floor((centre[:, 0] - radius) / x_step).long() - 1).clamp_(min=-1)
    x_hi = (torch.floor((centre[:, 0] + radius) / x_step).long() + 2).clamp_(max=_X_STEPS + 2)  # exclusive

    num_rows = int(torch.max(member_row.max(), row_hi.max())) + 3  # rows -1 .. max + 1
    num_groups = int(groups.max()) + 1 if groups is not None else 1
    if num_groups * num_w * num_h * num_rows >= 2**62 // (_X_STEPS + 4):
        return None

    def key(grp: Tensor, bin_w: Tensor, bin_h: Tensor, row: Tensor, x: Tensor) -> Tensor:
        bucket = ((grp * num_w + bin_w) * num_h + bin_h) * num_rows + row + 1
        return bucket * (_X_STEPS + 4) + x + 1  # x in [-1, _X_STEPS + 2] never spills into the next bucket

    member_key = key(group.repeat(len(_MEMBER_BIN_OFFSETS)), member_bins[:, 0], member_bins[:, 1], member_row,
                     member_x)
    member_own = torch.arange(member_key.numel(), device=device) < valid.numel()  # offset (0, 0) comes first
    rows = row_lo[:, None] + torch.arange(3, device=device)  # (V, 3)
    x_range = torch.stack((x_lo, x_hi), dim=1)[:, None, :].expand(-1, 3, -1)  # (V, 3, 2)
    x_range = torch.where((rows <= row_hi[:, None])[..., None], x_range, x_lo[:, None, None])  # past row_hi: empty
    query_keys = key(group[:, None, None], bins[:, 0, None, None], bins[:, 1, None, None], rows[..., None], x_range)
    return member_key, member_own, query_keys
