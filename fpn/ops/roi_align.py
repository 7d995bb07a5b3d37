"""RoIAlign (He et al., Mask R-CNN, 2017) in plain PyTorch, with torchvision's exact semantics.

Each RoI is split into oh x ow bins; each bin averages a grid of gh x gw bilinear samples (gh = sampling_ratio,
or ceil(roi_height / oh) when sampling_ratio <= 0). torchvision's conventions, kept here:
  * aligned=False: no half-pixel shift and the RoI is at least 1 x 1 feature pixel; aligned=True: coordinates
    shifted by -0.5 and no minimum size;
  * a sample with y < -1 or y > H (or the same in x) contributes 0, others are clamped to [0, H - 1];
  * the bin value is the sum of its samples divided by gh * gw.

How it is computed. The channels-last view of the map is a table of pixels, one contiguous C-vector per row.
Every output bin is a weighted sum of 4 * gh * gw rows of that table (the four bilinear corners of each sample,
weight wy * wx, zero for samples outside the map), which `F.embedding_bag(mode="sum")` evaluates without
materialising the gathered rows; its backward scatters the gradient to the same rows. The axis computations are
separable (a sample's y weights depend on its row of the grid only), so positions and weights are worked out per
axis and combined by broadcasting. No gradient flows to the boxes (as in torchvision).
Shape shorthand: K RoIs, C channels, (H, W) feature map, (oh, ow) output size, (gh, gw) samples per bin.
"""
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from fpn.ops.boxes import check_boxes

_TAPS_PER_CHUNK = 2**22  # (pixel, weight) pairs per chunk of RoIs: bounds the index memory


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pool a fixed-size feature for each box by bilinear sampling.

    Args:
        input: (N, C, H, W) float feature maps (float32/64, float16 or bfloat16).
        boxes: (K, 5) float rows (batch_index, x1, y1, x2, y2), or a list of N (Ki, 4) float tensors
            (x1, y1, x2, y2), one per image; in input-image pixels (multiplied by spatial_scale).
        output_size: oh = ow, or (oh, ow).
        spatial_scale: feature pixels per box unit, e.g. 1/4 for a stride-4 map.
        sampling_ratio: samples per bin side; <= 0 means ceil(roi_size / output_size) per RoI.
        aligned: shift the box by -0.5 pixel (pixel centres at half-integers).

    Returns:
        (K, C, oh, ow) pooled features in input's dtype (possibly in channels-last memory layout).
    """
    out_h, out_w = _check_output_size(output_size)
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(f"input must be a (N, C, H, W) tensor, got {getattr(input, 'shape', type(input))}")
    rois = _as_rois(boxes, input)
    # coordinates and weights in float32 (float64 for a float64 input), whatever the boxes' dtype
    compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    rois = rois.to(device=input.device, dtype=compute_dtype)
    num_rois, channels, height, width = rois.shape[0], input.shape[1], input.shape[2], input.shape[3]
    if num_rois == 0 or input.numel() == 0:
        # zeros that still belong to the graph, so that the input's gradient is zeros rather than None
        return input.new_zeros((num_rois, channels, out_h, out_w)) + input[:0].sum()
    # (N, C, H, W) -> (N*H*W, C): one contiguous C-vector per pixel; no copy for a channels-last float32 input
    pixels = input.permute(0, 2, 3, 1).to(compute_dtype).contiguous().view(-1, channels)
    with torch.no_grad():
        grid, taps_y, taps_x = _sampling_taps(rois, height, width, out_h, out_w, spatial_scale, sampling_ratio,
                                              aligned)
        row_start = rois[:, 0].long() * (height * width)  # (K,) first pixel of the RoI's image
        count = grid.clamp(min=0).prod(dim=1).clamp(min=1).to(compute_dtype)  # (K,) max(gh * gw, 1) as in tv
    pooled, placed = [], []
    for chunk in _chunks(grid.clamp(min=1).prod(dim=1) * (out_h * out_w * 4)):
        with torch.no_grad():
            index, weight = _bin_taps(chunk, row_start, width, taps_y, taps_x, grid)
            weight.view(chunk.numel(), -1).div_(count.index_select(0, chunk)[:, None])  # mean of the samples
        bins = F.embedding_bag(index, pixels, per_sample_weights=weight, mode="sum")  # (k*oh*ow, C)
        pooled.append(bins.view(chunk.numel(), out_h, out_w, channels))
        placed.append(chunk)
    out, placed = torch.cat(pooled) if len(pooled) > 1 else pooled[0], torch.cat(placed)
    if not torch.equal(placed, torch.arange(num_rois, device=placed.device)):
        out = out[torch.argsort(placed)]  # back to the boxes' order
    return out.permute(0, 3, 1, 2).to(input.dtype)  # (K, oh, ow, C) -> (K, C, oh, ow)


def _check_output_size(output_size) -> Tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    elif isinstance(output_size, (tuple, list)):
        size = tuple(output_size)
    else:
        size = ()
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return size


def _as_rois(boxes: Union[Tensor, Sequence[Tensor]], input: Tensor) -> Tensor:
    """(K, 5) rois (batch_index, x1, y1, x2, y2) from either accepted box format."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as a tensor must have shape (K, 5), got {tuple(boxes.shape)}")
        return boxes
    if len(boxes) != input.shape[0]:
        raise ValueError(f"got boxes for {len(boxes)} images but input holds {input.shape[0]} images")
    for i, b in enumerate(boxes):
        check_boxes(b, f"boxes[{i}]")
        if b.dim() != 2:
            raise ValueError(f"boxes[{i}] must have shape (Ki, 4), got {tuple(b.shape)}")
    return torch.cat([torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)])


def _sampling_taps(rois: Tensor, height: int, width: int, out_h: int, out_w: int, scale: float, ratio: int,
                   aligned: bool) -> Tuple[Tensor, Tuple[Tensor, Tensor], Tuple[Tensor, Tensor]]:
    """(K, 2) samples per bin (x, y) and the per-axis taps of every RoI (see _axis_taps)."""
    offset = 0.5 if aligned else 0.0
    start = rois[:, 1:] * scale - offset  # (K, 4) x1, y1, x2, y2 in feature pixels
    size = start[:, 2:] - start[:, :2]  # (K, 2) width, height
    if not aligned:
        size = size.clamp(min=1.0)
    if ratio > 0:
        grid = torch.full(size.shape, ratio, dtype=torch.int64, device=size.device)
    else:
        grid = torch.ceil(size / size.new_tensor([out_w, out_h])).long()
    taps_y = _axis_taps(start[:, 1], size[:, 1], grid[:, 1], out_h, height)  # (K, oh, gh, 2) each
    taps_x = _axis_taps(start[:, 0], size[:, 0], grid[:, 0], out_w, width)  # (K, ow, gw, 2) each
    return grid, taps_y, taps_x


def _axis_taps(start: Tensor, size: Tensor, grid: Tensor, bins: int, length: int) -> Tuple[Tensor, Tensor]:
    """Bilinear taps of the samples along one axis, with torchvision's clamping rules.

    Args:
        start, size: (K,) RoI start and size in feature pixels.
        grid: (K,) int64 samples per bin (<= 0: none).
        bins: output size along this axis.
        length: feature map size along this axis.

    Returns:
        pixel: (K, bins, g, 2) int64 lower and upper pixel of each sample, g = max(grid).
        weight: (K, bins, g, 2) their interpolation weights; 0 for samples beyond grid or outside [-1, length].
    """
    bin_size = size / bins  # (K,)
    steps = torch.arange(max(int(grid.max()), 1), device=start.device, dtype=start.dtype)
    cells = torch.arange(bins, device=start.device, dtype=start.dtype)
    # same operation order as torchvision: start + p * bin + ((i + 0.5) * bin) / grid
    pos = (start[:, None, None] + cells[None, :, None] * bin_size[:, None, None]) + (
        (steps + 0.5)[None, None, :] * bin_size[:, None, None]
    ) / grid.clamp(min=1)[:, None, None].to(start.dtype)  # (K, bins, g)
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


def _chunks(taps_per_roi: Tensor):
    """Yield index tensors of RoIs, grouped by similar tap count so that padding to the largest is cheap."""
    order = torch.argsort(taps_per_roi, stable=True)
    sorted_taps = taps_per_roi[order].tolist()
    start = 0
    while start < len(sorted_taps):
        end = start + 1  # sorted: the last RoI of a chunk has the most taps
        while end < len(sorted_taps) and (end + 1 - start) * sorted_taps[end] <= _TAPS_PER_CHUNK:
            end += 1
        yield order[start:end]
        start = end


def _bin_taps(rois: Tensor, row_start: Tensor, width: int, taps_y, taps_x, grid: Tensor):
    """(k*oh*ow, 4*gh*gw) pixel indices and weights of every output bin of the RoIs `rois`."""
    g_y, g_x = max(int(grid[rois, 1].max()), 1), max(int(grid[rois, 0].max()), 1)
    pixel_y, weight_y = taps_y[0][rois, :, :g_y], taps_y[1][rois, :, :g_y]  # (k, oh, gh, 2)
    pixel_x, weight_x = taps_x[0][rois, :, :g_x], taps_x[1][rois, :, :g_x]  # (k, ow, gw, 2)
    pixel_y = row_start[rois, None, None, None] + pixel_y * width
    # (k, oh, 1, gh, 1, 2, 1) + (k, 1, ow, 1, gw, 1, 2) -> (k, oh, ow, gh, gw, 2, 2)
    index = pixel_y[:, :, None, :, None, :, None] + pixel_x[:, None, :, None, :, None, :]
    weight = weight_y[:, :, None, :, None, :, None] * weight_x[:, None, :, None, :, None, :]
    bins = rois.numel() * pixel_y.shape[1] * pixel_x.shape[1]
    return index.reshape(bins, -1), weight.reshape(bins, -1)
