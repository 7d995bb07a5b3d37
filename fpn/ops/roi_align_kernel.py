"""The tensor work behind the fpn::roi_align operator: forward and backward passes, one code path for every device.

RoIAlign (He et al., Mask R-CNN, 2017) with torchvision's exact semantics. Each RoI is split into oh x ow bins;
each bin averages a grid of gh x gw bilinear samples (gh = sampling_ratio, or ceil(roi_height / oh) when
sampling_ratio <= 0). torchvision's conventions, kept here:
  * aligned=False: no half-pixel shift and the RoI is at least 1 x 1 feature pixel; aligned=True: coordinates
    shifted by -0.5 and no minimum size;
  * a sample with y < -1 or y > H (or the same in x) contributes 0, others are clamped to [0, H - 1];
  * the bin value is the sum of its samples divided by max(gh * gw, 1).

How it is computed. The channels-last view of the map is a table of pixels, one contiguous C-vector per row.
Every output bin is a weighted sum of 4 * gh * gw rows of that table (the four bilinear corners of each sample,
weight wy * wx / (gh * gw), zero for samples outside the map), which `F.embedding_bag(mode="sum")` evaluates
without materialising the gathered rows. The table keeps the input's dtype (no float32 copy of a bfloat16 map);
the weights then take that dtype too, as embedding_bag requires. The backward pass is the transpose of that sum:
the (pixel, bin, weight) taps sorted by pixel make each pixel a bag of output bins, and a second embedding_bag over
the output gradient sums them, in float32 (float64 for float64 input) whatever the input's dtype.
The axis computations are separable (a sample's y weights depend on its row of the grid only), so positions and
weights are worked out per axis and combined by broadcasting.

Host syncs. With sampling_ratio > 0 the grid is the same for every RoI and every buffer is sized from Python ints:
no sync in either pass. With adaptive sampling the grid depends on each RoI's size, and one `.tolist()` of the
per-RoI grids (one host sync per pass) sizes the chunks.
Shape shorthand: N images, K RoIs, C channels, (H, W) feature map, (oh, ow) output size, (gh, gw) samples per
bin, k RoIs of a chunk, T = 4 * gh * gw taps per bin.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

TAPS_PER_CHUNK = 2**22  # (pixel, weight) pairs per chunk of RoIs: bounds the index memory of both passes
CHANNELS_PER_PASS = 64  # channels of the input gradient summed at a time (the fastest on a CPU, measured)

Chunk = Tuple[slice, int, int]  # a range of RoIs and the (gh, gw) that range is padded to


@dataclass(frozen=True)
class Sampling:
    """Where the samples fall: the map's size, the output size and roi_align's sampling arguments."""

    height: int
    width: int
    out_h: int
    out_w: int
    scale: float  # spatial_scale
    ratio: int  # sampling_ratio (<= 0: adaptive)
    aligned: bool


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Coordinates, weights and gradient sums in float32, or float64 for float64 input (MPS has no float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def roi_align_forward(input: Tensor, rois: Tensor, spatial_scale: float, out_h: int, out_w: int,
                      sampling_ratio: int, aligned: bool) -> Tensor:
    """(N, C, H, W) input, (K, 5) rois (batch_index, x1, y1, x2, y2) -> (K, C, oh, ow) in input's dtype,
    channels-last memory layout."""
    num_rois, channels = rois.shape[0], input.shape[1]
    if num_rois == 0 or input.numel() == 0:
        return torch.empty((num_rois, channels, out_h, out_w), dtype=input.dtype, device=input.device,
                           memory_format=torch.channels_last).zero_()
    sampling = Sampling(input.shape[2], input.shape[3], out_h, out_w, spatial_scale, sampling_ratio, aligned)
    rois = rois.to(compute_dtype(input.dtype))
    table = _pixel_table(input)  # (N*H*W, C)
    order, chunks = plan_chunks(rois, sampling)
    if order is not None:
        rois = rois[order]
    pieces = []
    for rows, g_h, g_w in chunks:
        index, weight = bin_taps(rois[rows], sampling, g_h, g_w)  # (k*oh*ow, T) each
        bins = F.embedding_bag(index, table, per_sample_weights=weight.to(table.dtype), mode="sum")  # (k*oh*ow, C)
        pieces.append(bins.view(-1, out_h, out_w, channels))
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces)  # (K, oh, ow, C), RoIs in chunk order
    if order is not None:
        out = torch.empty_like(out).index_copy_(0, order, out)  # back to the boxes' order
    return out.permute(0, 3, 1, 2)


def roi_align_backward(grad: Tensor, rois: Tensor, spatial_scale: float, out_h: int, out_w: int, num_images: int,
                       channels: int, height: int, width: int, sampling_ratio: int, aligned: bool,
                       channels_last: bool) -> Tensor:
    """(K, C, oh, ow) gradient of the output -> (N, C, H, W) gradient of the input, in grad's dtype, contiguous
    or channels-last (as the input was). Summed in float32 (float64 for float64 grad)."""
    num_rois, num_pixels = rois.shape[0], num_images * height * width
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if num_rois == 0 or num_pixels * channels == 0:
        return torch.zeros((num_images, channels, height, width), dtype=grad.dtype, device=grad.device).to(
            memory_format=layout)
    sampling = Sampling(height, width, out_h, out_w, spatial_scale, sampling_ratio, aligned)
    rois = rois.to(compute_dtype(grad.dtype))
    grad_rows = grad.permute(0, 2, 3, 1)  # (K, oh, ow, C)
    order, chunks = plan_chunks(rois, sampling)
    if order is not None:
        rois, grad_rows = rois[order], grad_rows[order]
    # one chunk of RoIs is written straight into the result; several are summed in float32 first
    sum_dtype = grad.dtype if len(chunks) == 1 else compute_dtype(grad.dtype)
    grad_input = torch.empty((num_images, channels, height, width), dtype=sum_dtype, device=grad.device,
                             memory_format=layout)
    for i, (rows, g_h, g_w) in enumerate(chunks):
        _chunk_backward(grad_input, grad_rows[rows], rois[rows], sampling, g_h, g_w, accumulate=i > 0)
    return grad_input.to(grad.dtype)


def _chunk_backward(grad_input: Tensor, grad_rows: Tensor, rois: Tensor, sampling: Sampling, g_h: int, g_w: int,
                    accumulate: bool) -> None:
    """Write (or add) into the (N, C, H, W) grad_input the gradient from the (k, oh, ow, C) output gradient of k
    RoIs: for each pixel, the sum of weight * gradient over the taps (bin, pixel, weight) that read it.

    The transpose of the forward's embedding_bag, as an embedding_bag whose bags are the pixels (the taps sorted
    by pixel), summed in float32 (float64 for float64), CHANNELS_PER_PASS channels at a time: the (N*H*W, c)
    sums then stay small, and are faster (the rows they read fit in cache).
    """
    index, weight = bin_taps(rois, sampling, g_h, g_w)  # (k*oh*ow, T) each
    num_images, channels, height, width = grad_input.shape
    num_pixels, taps_per_bin = num_images * height * width, index.shape[1]
    keys = index.view(-1).int() if num_pixels < 2**31 else index.view(-1)  # int32 keys sort twice as fast
    del index
    pixel, tap = keys.sort(stable=True)  # stable: a fixed summation order, deterministic results
    del keys
    starts = torch.searchsorted(pixel, torch.arange(num_pixels, device=pixel.device, dtype=pixel.dtype))  # (P,)
    sum_dtype = compute_dtype(grad_rows.dtype)
    bins, weight = tap // taps_per_bin, weight.view(-1)[tap].to(sum_dtype)  # per tap, sorted by pixel
    for first in range(0, channels, CHANNELS_PER_PASS):
        grad_bins = grad_rows[..., first:first + CHANNELS_PER_PASS]  # (k, oh, ow, c), strided
        table = torch.empty(grad_bins.shape, dtype=sum_dtype, device=grad_bins.device).copy_(grad_bins)
        part = F.embedding_bag(bins, table.view(-1, table.shape[3]), starts, mode="sum", per_sample_weights=weight)
        part = part.to(grad_input.dtype).view(num_images, height * width, -1)  # (N, H*W, c)
        for i in range(num_images):
            target = grad_input[i, first:first + part.shape[2]]  # (c, H, W) view
            if grad_input.is_contiguous():  # a 2-D transpose, which torch copies block by block
                target, source = target.view(-1, height * width), part[i].t()
            else:  # channels-last: rows of c channels
                target, source = target.permute(1, 2, 0).view(height * width, -1), part[i]
            if accumulate:
                target.add_(source)
            else:
                target.copy_(source)


def _pixel_table(input: Tensor) -> Tensor:
    """(N, C, H, W) map -> (N*H*W, C) table of pixels (its channels-last view: no copy if channels-last)."""
    num_images, channels, height, width = input.shape
    if not input.is_contiguous():
        return input.permute(0, 2, 3, 1).contiguous().view(-1, channels)
    table = input.new_empty((num_images, height * width, channels))
    for i in range(num_images):  # a 2-D transpose, which torch copies block by block (~4x faster than in 4-D)
        table[i].copy_(input[i].view(channels, -1).t())
    return table.view(-1, channels)


def plan_chunks(rois: Tensor, sampling: Sampling) -> Tuple[Optional[Tensor], List[Chunk]]:
    """Split the RoIs into ranges of at most TAPS_PER_CHUNK taps, each with the grid its taps are padded to.

    Returns:
        order: None when the ranges index the RoIs as given (fixed sampling_ratio); for adaptive sampling, (K,)
            int64 RoI order by tap count (ranges index rois[order]) so that padding each range is cheap.
        chunks: (range of RoIs, gh, gw) per chunk.
    """
    num_rois, taps_per_sample, ratio = rois.shape[0], sampling.out_h * sampling.out_w * 4, sampling.ratio
    if ratio > 0:  # sizes from Python ints only: no host sync
        per_chunk = max(1, TAPS_PER_CHUNK // (taps_per_sample * ratio**2))
        return None, [(slice(s, s + per_chunk), ratio, ratio) for s in range(0, num_rois, per_chunk)]
    _, size = _roi_frames(rois, sampling)
    grid = _adaptive_grid(size, sampling).clamp(min=1)  # (K, 2) gw, gh
    order = torch.argsort(grid.prod(dim=1), stable=True)
    sorted_grid = grid[order].tolist()  # the one host sync of adaptive sampling
    chunks, start = [], 0
    while start < num_rois:
        (g_w, g_h), end = sorted_grid[start], start + 1
        while end < num_rois:
            wider, taller = max(g_w, sorted_grid[end][0]), max(g_h, sorted_grid[end][1])
            if (end + 1 - start) * wider * taller * taps_per_sample > TAPS_PER_CHUNK:
                break
            g_w, g_h, end = wider, taller, end + 1
        chunks.append((slice(start, end), g_h, g_w))
        start = end
    return order, chunks


def bin_taps(rois: Tensor, sampling: Sampling, g_h: int, g_w: int) -> Tuple[Tensor, Tensor]:
    """(k*oh*ow, T) int64 rows of the (N*H*W, C) pixel table and their weights, for every bin of the k RoIs.

    g_h, g_w: the grid every RoI is padded to (at least its own); padded samples get weight 0.
    """
    s = sampling
    start, size = _roi_frames(rois, s)  # (k, 2) x, y each
    if s.ratio > 0:
        grid = torch.full_like(size, s.ratio, dtype=torch.int64)
    else:
        grid = _adaptive_grid(size, s)
    pixel_y, weight_y = _axis_taps(start[:, 1], size[:, 1], grid[:, 1], s.out_h, s.height, g_h)  # (k, oh, gh, 2)
    pixel_x, weight_x = _axis_taps(start[:, 0], size[:, 0], grid[:, 0], s.out_w, s.width, g_w)  # (k, ow, gw, 2)
    count = grid.clamp(min=0).prod(dim=1).clamp(min=1).to(start.dtype)  # (k,) max(gh * gw, 1) as in torchvision
    pixel_y = rois[:, 0].long()[:, None, None, None] * (s.height * s.width) + pixel_y * s.width
    # (k, oh, 1, gh, 1, 2, 1) + (k, 1, ow, 1, gw, 1, 2) -> (k, oh, ow, gh, gw, 2, 2)
    index = pixel_y[:, :, None, :, None, :, None] + pixel_x[:, None, :, None, :, None, :]
    weight = weight_y[:, :, None, :, None, :, None] * weight_x[:, None, :, None, :, None, :]
    weight.div_(count[:, None, None, None, None, None, None])  # the mean of the samples
    bins = rois.shape[0] * s.out_h * s.out_w
    return index.reshape(bins, -1), weight.reshape(bins, -1)


def _roi_frames(rois: Tensor, sampling: Sampling) -> Tuple[Tensor, Tensor]:
    """(K, 2) start (x, y) and (K, 2) size (w, h) of each RoI in feature pixels."""
    box = rois[:, 1:] * sampling.scale - (0.5 if sampling.aligned else 0.0)  # (K, 4) x1, y1, x2, y2
    size = box[:, 2:] - box[:, :2]
    return box[:, :2], size if sampling.aligned else size.clamp(min=1.0)


def _adaptive_grid(size: Tensor, sampling: Sampling) -> Tensor:
    """(K, 2) int64 samples per bin (gw, gh) = ceil(roi size / output size); <= 0 for an empty aligned RoI."""
    return torch.ceil(size / size.new_tensor([sampling.out_w, sampling.out_h])).long()


def _axis_taps(start: Tensor, size: Tensor, grid: Tensor, bins: int, length: int, g: int) -> Tuple[Tensor, Tensor]:
    """Bilinear taps of the samples along one axis, with torchvision's clamping rules.

    Args:
        start, size: (k,) RoI start and size in feature pixels.
        grid: (k,) int64 samples per bin (<= 0: none).
        bins: output size along this axis.
        length: feature map size along this axis.
        g: samples computed per bin, >= max(grid); those beyond a RoI's grid get weight 0.

    Returns:
        pixel: (k, bins, g, 2) int64 lower and upper pixel of each sample.
        weight: (k, bins, g, 2) their interpolation weights; 0 for samples beyond grid or outside [-1, length].
    """
    bin_size = size / bins  # (k,)
    steps = torch.arange(g, device=start.device, dtype=start.dtype)
    cells = torch.arange(bins, device=start.device, dtype=start.dtype)
    # same operation order as torchvision: start + p * bin + ((i + 0.5) * bin) / grid
    pos = (start[:, None, None] + cells[None, :, None] * bin_size[:, None, None]) + (
        (steps + 0.5)[None, None, :] * bin_size[:, None, None]
    ) / grid.clamp(min=1)[:, None, None].to(start.dtype)  # (k, bins, g)
    used = (pos >= -1.0) & (pos <= length) & (steps[None, None, :] < grid[:, None, None])
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= length - 1  # torchvision then samples the last pixel with weight 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(pos.dtype))
    pixel = torch.stack((low, high), dim=3)
    weight = torch.stack((1 - frac, frac), dim=3) * used[..., None]
    return pixel, weight
