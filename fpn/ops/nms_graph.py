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
widened by a few float ulps so that no pair the exact IoU would keep is missed. When boxes are few or sparse
the buckets are skipped: a sweep over boxes sorted by x1 (a partner j after i has x1_j < x1_i + (1 - t) w_i)
then yields few enough candidates and is cheaper to set up.
Shape shorthand: N boxes, V boxes with positive width and height, C candidate pairs, E edges.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

SPARSE_MIN_IOU = 0.25  # below this almost every overlapping pair is an edge: use the dense pass
SWEEP_MAX_CANDIDATES_PER_BOX = 64  # up to this many the x sweep's candidates are cheaper than the buckets
_X_STEPS = 2**20  # resolution of the quantised centre x within a bucket
_CANDIDATES_PER_CHUNK = 2**16  # bounds the memory of candidate enumeration
_NO_BOUND = torch.iinfo(torch.int64).max
# A member registers in the size bins (bw + dw, bh + dh) for these (dw, dh), so that a query in its own bins
# meets every neighbour bin pair once; (0, 0) comes first and pairs inside it are seen from both ends.
_MEMBER_BIN_OFFSETS = ((0, 0), (-1, 1), (-1, 0), (-1, -1), (0, -1))


def iou_table(boxes: Tensor) -> Tensor:
    """(N, 4) boxes (x1, y1, x2, y2) -> (5, N) rows x1, y1, x2, y2, area: the operand of pair_iou."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return torch.cat((boxes.t(), area[None]), dim=0)


def pair_iou(table: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """IoU of the pairs (box first[p], box second[p]), in torchvision's nms arithmetic.

    Args:
        table: (5, N) float rows x1, y1, x2, y2, area from iou_table.
        first, second: (P,) int64 box indices.

    Returns:
        (P,) IoU in the table's dtype.
    """
    a, b = table.index_select(1, first), table.index_select(1, second)  # (5, P) each, rows contiguous
    # in place on these fresh copies: fewer large temporaries (allocating them costs more than the arithmetic)
    top_left = torch.maximum(a[:2], b[:2], out=b[:2])
    wh = torch.minimum(a[2:4], b[2:4], out=a[2:4]).sub_(top_left).clamp_(min=0)  # (2, P)
    inter = wh[0].mul_(wh[1])
    return inter.div_(a[4].add_(b[4]).sub_(inter))  # inter / (area_a + area_b - inter)


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
    if ranked.device.type == "mps":  # the bounds are computed in float64, which MPS lacks: use the CPU
        edges = overlap_edges(ranked.cpu(), groups.cpu() if groups is not None else None, iou_threshold)
        return None if edges is None else (edges[0].to(ranked.device), edges[1].to(ranked.device))
    # the exact IoU of float boxes may exceed t by a few ulps: bound the geometry for a slightly lower t
    t = iou_threshold * (1 - 64 * torch.finfo(ranked.dtype).eps)
    threshold = threshold_below(iou_threshold, ranked.dtype)
    edges = _sweep_edges(ranked, groups, t, threshold)
    if edges is None:
        ranges = _grid_ranges(ranked, groups, t)
        if ranges is None:
            return None
        edges = _grid_edges(ranked, ranges, threshold)
    return edges


def _candidate_chunks(lo: Tensor, counts: Tensor):
    """Enumerate candidates: row r meets slots lo[r] .. lo[r] + counts[r] - 1. Yields (rows, slots), (C,) each,
    in chunks of whole rows so that memory stays bounded."""
    ends = torch.cumsum(counts, dim=0)
    row_shift = lo - (ends - counts)  # (R,) candidate number -> slot, per row
    marks = list(range(_CANDIDATES_PER_CHUNK, int(ends[-1]), _CANDIDATES_PER_CHUNK))
    bounds = torch.searchsorted(ends, torch.tensor(marks, device=lo.device), right=True).tolist() if marks else []
    for row_start, row_end in zip([0] + bounds, bounds + [counts.numel()]):
        first = int(ends[row_start] - counts[row_start])
        total = int(ends[row_end - 1]) - first
        rows = torch.repeat_interleave(counts[row_start:row_end], output_size=total) + row_start  # (C,)
        yield rows, torch.arange(first, first + total, device=lo.device) + row_shift.index_select(0, rows)


def _sweep_edges(ranked: Tensor, groups: Optional[Tensor], t: float, threshold: float):
    """Edges from the x sweep: sorted by x1 (within a group), j follows i while x1_j < x1_i + (1 - t) w_i.
    None when that yields more than SWEEP_MAX_CANDIDATES_PER_BOX candidates per box."""
    box = ranked.double()  # a difference of two floats is exact in float64
    width = box[:, 2] - box[:, 0]
    key = box[:, 0] - box[:, 0].min()
    if groups is not None:  # sort by (group, x1): a window never reaches into the next group
        key = key + groups.double() * (float(key.max() + width.clamp(min=0).max()) + 1.0)
    key, order = torch.sort(key, stable=True)
    reach = (1 - t) * width.index_select(0, order) * (1 + 1e-6) + 1e-7 * (1 + key.abs())  # float rounding
    end = torch.searchsorted(key, key + reach, right=True)  # (N,) past the last candidate of each box
    start = torch.arange(1, key.numel() + 1, device=key.device)
    counts = (end - start).clamp_(min=0)
    if int(counts.sum()) > SWEEP_MAX_CANDIDATES_PER_BOX * key.numel():
        return None
    table = iou_table(ranked.index_select(0, order))  # (5, N) in x order
    src, dst = [], []
    for rows, slots in _candidate_chunks(start, counts):  # positions in x order
        hit = torch.nonzero(pair_iou(table, rows, slots) > threshold).squeeze(1)
        first = order.index_select(0, rows.index_select(0, hit))  # back to ranks
        second = order.index_select(0, slots.index_select(0, hit))
        src.append(torch.minimum(first, second))
        dst.append(torch.maximum(first, second))
    return torch.cat(src), torch.cat(dst)


def _grid_edges(ranked: Tensor, ranges, threshold: float) -> Tuple[Tensor, Tensor]:
    """Exact IoU test of the bucket candidates: row r pairs query rank row_query[r] with the members in slots
    [lo[r], lo[r] + counts[r]), unless query >= member_bound[slot] (a pair met from both ends)."""
    lo, counts, row_query, member, member_bound = ranges
    table = iou_table(ranked)
    src, dst = [], []
    for rows, slots in _candidate_chunks(lo, counts):
        query, other = row_query.index_select(0, rows), member.index_select(0, slots)  # (C,) ranks
        fresh = torch.nonzero(query < member_bound.index_select(0, slots)).squeeze(1)
        query, other = query.index_select(0, fresh), other.index_select(0, fresh)
        hit = torch.nonzero(pair_iou(table, query, other) > threshold).squeeze(1)  # (E',)
        query, other = query.index_select(0, hit), other.index_select(0, hit)
        src.append(torch.minimum(query, other))
        dst.append(torch.maximum(query, other))
    return torch.cat(src), torch.cat(dst)


def _grid_ranges(ranked: Tensor, groups: Optional[Tensor], t: float):
    """Candidates of the size-bin / row buckets, or None when the int64 bucket keys would overflow."""
    device = ranked.device
    wh = ranked[:, 2:] - ranked[:, :2]
    valid = torch.nonzero(torch.minimum(wh[:, 0], wh[:, 1]) > 0).squeeze(1)  # (V,) no area: IoU 0 with anything
    box = ranked.index_select(0, valid).double()  # (V, 4); a difference of two floats is exact in float64
    size = box[:, 2:] - box[:, :2]  # (V, 2) width, height
    centre = box[:, :2] + size * 0.5
    centre = centre - centre.min(dim=0).values
    bin_width = math.log(1 / t) + 1e-6  # > log(1/t): partners' bins differ by at most one
    reach = (1 - t) * (1.0 if t >= 0.5 else 1 / (2 * t)) * (1 + 1e-6)  # centre distance / smaller side
    bins = torch.floor(torch.log(size) / bin_width).long()  # (V, 2)
    bin_min = bins.min(dim=0).values
    bins = bins - (bin_min - 1)  # >= 1, so that a member's neighbour bin (>= 0) is a valid key
    num_w, num_h = (int(n) + 2 for n in bins.max(dim=0).values)
    # rows of the y grid of height-bin b: taller than any centre distance of a query in bin b
    row_height = reach * torch.exp((torch.arange(num_h, device=device) + bin_min[1]) * bin_width) * 1.001
    x_step = float(max(centre[:, 0].max(), size[:, 0].max())) / _X_STEPS + 1e-12
    # members: every box in its own bins and in four neighbouring ones (offset-major, (5, V))
    offsets = torch.tensor(_MEMBER_BIN_OFFSETS, device=device)
    member_h = bins[None, :, 1] + offsets[:, 1, None]  # (5, V)
    member_row = torch.floor(centre[None, :, 1] / row_height.index_select(0, member_h.reshape(-1)).view_as(
        member_h)).long()
    member_x = torch.floor(centre[:, 0] / x_step).long()  # (V,) in [0, _X_STEPS]
    # queries: rows met by the box's own bound [cy - r, cy + r], r = reach * height < row height: at most three
    query_height = row_height.index_select(0, bins[:, 1])
    row_lo = torch.floor((centre[:, 1] - reach * size[:, 1]) / query_height).long()
    row_hi = torch.floor((centre[:, 1] + reach * size[:, 1]) / query_height).long()
    radius = reach * size[:, 0]  # (V,) the x bound uses the query's own width (the smaller side or less)
    x_lo = (torch.floor((centre[:, 0] - radius) / x_step).long() - 1).clamp_(min=-1)
    x_hi = (torch.floor((centre[:, 0] + radius) / x_step).long() + 2).clamp_(max=_X_STEPS + 2)  # exclusive

    num_rows = int(torch.max(member_row.max(), row_hi.max())) + 3  # rows -1 .. max + 1
    num_groups = int(groups.max()) + 1 if groups is not None else 1
    if num_groups * num_w * num_h * num_rows >= 2**62 // (_X_STEPS + 4):
        return None
    # key = (((group * num_w + bin_w) * num_h + bin_h) * num_rows + row + 1) * (_X_STEPS + 4) + x + 1
    group = groups.index_select(0, valid) if groups is not None else torch.zeros_like(valid)
    box_bucket = ((group * num_w + bins[:, 0]) * num_h + bins[:, 1]) * num_rows + 1  # (V,) at row 0
    offset_bucket = (offsets[:, 0] * num_h + offsets[:, 1]) * num_rows  # (5,)
    member_key = ((box_bucket + offset_bucket[:, None] + member_row) * (_X_STEPS + 4) + member_x + 1).view(-1)
    member_key, sort = torch.sort(member_key)
    member = valid.index_select(0, sort.remainder(valid.numel()))  # (5V,) rank of each member
    # a pair inside one bucket is met from both ends: keep it from the lower rank only
    member_bound = torch.where(sort < valid.numel(), member, torch.full_like(member, _NO_BOUND))
    rows = row_lo[:, None] + torch.arange(3, device=device)  # (V, 3)
    x_range = torch.stack((x_lo, x_hi), dim=1)[:, None, :].expand(-1, 3, -1)  # (V, 3, 2) [lo, hi)
    x_range = torch.where((rows <= row_hi[:, None])[..., None], x_range, x_lo[:, None, None])  # past row_hi: empty
    query_key = ((box_bucket[:, None, None] + rows[..., None]) * (_X_STEPS + 4) + x_range + 1)  # (V, 3, 2)
    lo_hi = torch.searchsorted(member_key, query_key)  # (V, 3, 2)
    lo = lo_hi[..., 0].reshape(-1)  # (3V,) three rows per query
    return lo, (lo_hi[..., 1].reshape(-1) - lo).clamp_(min=0), valid.repeat_interleave(3), member, member_bound
