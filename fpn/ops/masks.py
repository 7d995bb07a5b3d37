"""Instance masks of Mask R-CNN (He et al., 2017): pasting predicted masks into the image, and the training targets.

`paste_masks` gives the values of torchvision's `paste_masks_in_image` (roi_heads.py) without its Python loop over
the detections and its host syncs; `mask_targets` gives those of torchvision's `project_masks_on_boxes` applied to
the masks its GeneralizedRCNNTransform resized, without building the resized masks.

Shape shorthand: D detections, P proposals, G ground-truth instances, M mask resolution (28), S = M + 2 * padding,
(H, W) image, (H0, W0) original image, (H1, W1) resized image.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fpn.ops.boxes import check_boxes
from fpn.ops.roi_align_kernel import Sampling, _adaptive_grid, _axis_taps, _roi_frames

TARGET_CHUNK_PIXELS = 2**22  # original-size mask pixels converted to float at a time by mask_targets (16 MB)


def paste_masks(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], padding: int = 1) -> Tensor:
    """Paste each detection's M x M mask into an image-size canvas at its box, as torchvision does.

    torchvision's steps, kept: the mask gets `padding` zero pixels on each side and the box grows about its centre
    by S / M (in the boxes' dtype), then is truncated to int64 (x0, y0, x1, y1). The padded mask is resized by
    `F.interpolate(mode="bilinear", align_corners=False)` to (y1 - y0 + 1, x1 - x0 + 1) pixels (at least 1 x 1)
    and written at (y0, x0); what falls outside the image is cut off, every other pixel is 0. Each axis of that
    resize is two taps per pixel, worked out per detection from the integer box with the kernel's rule:
    scale = S / n in the mask's dtype (float32 or float64), source = (i + 0.5) * scale - 0.5 as one fused
    multiply-add (PyTorch's CPU kernel on x86-64, and CUDA's), clamped at 0; taps floor(source) and the next one,
    both at most S - 1. The blends then gather those taps (columns first, then rows, as the kernel does): O(D*H*W)
    work, no matrix product (and so no TF32 rounding on CUDA). Pixels outside a box read an extra zero row or
    column with weight 0, so a non-finite mask value stays inside its box.

    Differences from torchvision: the blends are rounded in another order (measured: float32 within 1.8e-7 of it,
    float64 within 4e-15); a box wholly outside the image gets an empty mask, where torchvision mostly raises (its
    slice ends, negative or past the mask, count from the far side or are cut to the mask, and the two sides of
    its assignment then differ in size).

    No loop, no host sync and no data-dependent shape: one code path for CPU, CUDA and MPS (float32 only, and the
    sampling points within an ulp: no float64 there), and `torch.export` traces it (D may be dynamic).

    Args:
        masks: (D, 1, M, M) float32 or float64 mask probabilities.
        boxes: (D, 4) float boxes (x1, y1, x2, y2) in image pixels, on masks' device.
        image_size: (H, W) of the canvas.
        padding: zero pixels added on each side of the mask before resizing (torchvision: 1).

    Returns:
        (D, 1, H, W) pasted masks in masks' dtype.
    """
    _check_paste_args(masks, boxes, image_size, padding)
    height, width = image_size
    num, size = masks.shape[0], masks.shape[-1]
    source = size + 2 * padding  # S
    # the padded mask, plus one zero row and column (index S) that the pixels outside the box read
    padded = F.pad(masks[:, 0], (padding, padding + 1, padding, padding + 1))  # (D, S+1, S+1)
    box = _expand_boxes(boxes, float(source) / size).to(torch.int64)  # (D, 4) x0, y0, x1, y1 int pixels
    rows0, rows1, row_w0, row_w1 = _paste_taps(box[:, 1], box[:, 3], height, source, masks.dtype)  # (D, H) each
    cols0, cols1, col_w0, col_w1 = _paste_taps(box[:, 0], box[:, 2], width, source, masks.dtype)  # (D, W) each
    by_col = (num, source + 1, width)
    across = torch.gather(padded, 2, cols0[:, None].expand(by_col)).mul_(col_w0[:, None])  # (D, S+1, W)
    across.addcmul_(torch.gather(padded, 2, cols1[:, None].expand(by_col)), col_w1[:, None])
    by_row = (num, height, width)
    out = torch.gather(across, 1, rows0[:, :, None].expand(by_row)).mul_(row_w0[:, :, None])  # (D, H, W)
    out.addcmul_(torch.gather(across, 1, rows1[:, :, None].expand(by_row)), row_w1[:, :, None])
    return out[:, None]


def _check_paste_args(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], padding: int) -> None:
    if not isinstance(masks, Tensor) or masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[2] != masks.shape[3]:
        raise ValueError(f"masks must be a (D, 1, M, M) tensor, got shape {getattr(masks, 'shape', type(masks))}")
    if masks.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"masks must be float32 or float64, got {masks.dtype}")
    check_boxes(boxes)
    if boxes.dim() != 2 or boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"boxes must have shape ({masks.shape[0]}, 4), one per mask, got {tuple(boxes.shape)}")
    if boxes.device != masks.device:
        raise ValueError(f"boxes are on {boxes.device} but masks are on {masks.device}")
    _check_size(image_size, "image_size", minimum=0)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")


def _check_size(size: Sequence[int], name: str, minimum: int) -> None:
    """Raise a ValueError unless `size` is a pair of ints >= minimum (symbolic ints pass as ints)."""
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, (int, torch.SymInt)) for s in size)
            or any(isinstance(s, int) and s < minimum for s in size)):
        raise ValueError(f"{name} must be a pair of ints >= {minimum} (height, width), got {size!r}")


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """(D, 4) boxes grown about their centres by `scale`, with torchvision's expand_boxes arithmetic (its ops in
    its order, in the boxes' dtype)."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    centre_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    centre_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=1)


def _paste_taps(first: Tensor, last: Tensor, length: int, source: int,
                dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Along one image axis, for each detection: the two mask pixels each image pixel blends and their weights.

    Args:
        first, last: (D,) int64 first and last image pixel of the box (inclusive).
        length: image pixels along the axis.
        source: S, the padded mask's size; index S is the zero pixel the pixels outside the box read.
        dtype: the mask's dtype (float32 or float64), in which the kernel computes.

    Returns:
        (D, length) int64 first and second tap, and (D, length) their weights in `dtype`.
    """
    resized = (last - first + 1).clamp(min=1)[:, None]  # (D, 1) the resized mask's size n
    pixel = torch.arange(length, device=first.device)  # (L,)
    offset = pixel - first[:, None]  # (D, L) index into the resized mask
    inside = (pixel >= first[:, None]) & (pixel <= last[:, None])
    scale = torch.full_like(resized, source, dtype=dtype) / resized.to(dtype)  # S / n, rounded to dtype
    # (i + 0.5) * scale - 0.5 rounded once, as a fused multiply-add: for float32 the float64 product (a 24-bit
    # scale times a half-integer below 2^24) and the subtraction are exact, float64 -> float32 is the one rounding.
    # MPS has no float64: there it is rounded twice (the sampling point within an ulp).
    wide = torch.float32 if first.device.type == "mps" else torch.float64
    position = ((offset.to(wide) + 0.5) * scale.to(wide) - 0.5).to(dtype).clamp(min=0)  # (D, L)
    low = position.floor().to(torch.int64).clamp(max=source - 1)
    frac = (position - low.to(dtype)).clamp(0, 1)
    high = low + (low < source - 1).to(torch.int64)
    zero = torch.full_like(low, source)
    nothing = torch.zeros_like(frac)
    return (torch.where(inside, low, zero), torch.where(inside, high, zero),
            torch.where(inside, 1 - frac, nothing), torch.where(inside, frac, nothing))


def mask_targets(gt_masks: Tensor, resized_size: Tuple[int, int], proposals: Tensor, matched_gt: Tensor,
                 resolution: int = 28) -> Tensor:
    """Mask R-CNN's training target of each positive proposal of one image, from the masks at their original size.

    The values of torchvision's two steps: GeneralizedRCNNTransform's nearest resize of the masks to the model's
    image size, `resized = F.interpolate(gt_masks[:, None].float(), size=resized_size)[:, 0].byte()`, then
    `project_masks_on_boxes`, `roi_align(resized[:, None].float()[matched_gt], proposals, resolution, 1.0)`
    (adaptive sampling, aligned=False, in the proposals' dtype), without building the (G, H1, W1) float masks.
    RoIAlign of one channel is separable: out = Ay @ resized @ Ax^T, Ay (M, H1) holding each bin's mean of its
    samples' bilinear row weights (with roi_align's rules, as in fpn.ops.roi_align: samples beyond [-1, H1] count
    0, clamping at the edges), Ax (M, W1) the same for columns. The nearest resize selects rows and columns
    (`nearest_source_pixels`), so adding Ay's columns onto the original rows they select gives By (M, H0) with
    out = By @ gt_mask @ Bx^T. Only a window of the original mask can have weight (the RoI's rows and columns,
    one pixel of margin, mapped back): the products run on those windows, cut from the uint8 masks and converted
    to float TARGET_CHUNK_PIXELS at a time, for proposals sorted by window size.

    Cost: P * M * (window pixels) multiply-adds; extra memory: one chunk of windows and their weights (e.g. under
    30 MB for 128 proposals of 50 masks at 480 x 640 resized to 800 x 1333, where torchvision holds 2 x 213 MB of
    float masks). One host sync (the windows' and grids' sizes), none when P = 0. Equal to torchvision up to
    summation order (measured: float32 within 3e-7, float64 within 5e-16), and exactly 0 where all the pixels a
    bin's samples read are 0. On CUDA with TF32 matrix products allowed, the weights would be rounded to 10 bits:
    keep float32 products in full precision there.

    Args:
        gt_masks: (G, H0, W0) uint8 (or bool) instance masks at the original image size.
        resized_size: (H1, W1) the image's size after the model's resize, the frame of the proposals.
        proposals: (P, 4) float32 or float64 (x1, y1, x2, y2) positive proposals in resized-image pixels.
        matched_gt: (P,) int64 index of each proposal's instance in gt_masks.
        resolution: M, the target's side.

    Returns:
        (P, M, M) targets in the proposals' dtype.
    """
    _check_target_args(gt_masks, resized_size, proposals, matched_gt, resolution)
    num, dtype = proposals.shape[0], proposals.dtype
    out = proposals.new_zeros((num, resolution, resolution))
    if num == 0:
        return out
    sampling = Sampling(resized_size[0], resized_size[1], resolution, resolution, 1.0, -1, False)
    rois = torch.cat((matched_gt[:, None].to(dtype), proposals), dim=1)  # (P, 5) as torchvision's
    start, size = _roi_frames(rois, sampling)  # (P, 2) x, y each, resized pixels
    grid = _adaptive_grid(size, sampling)  # (P, 2) samples per bin, x and y
    rows = _AxisWindow(start[:, 1], size[:, 1], grid[:, 1], resized_size[0], gt_masks.shape[1], resolution)
    cols = _AxisWindow(start[:, 0], size[:, 0], grid[:, 0], resized_size[1], gt_masks.shape[2], resolution)
    plan = torch.stack((grid[:, 1], grid[:, 0], rows.extent, cols.extent), dim=1)  # (P, 4)
    order = torch.argsort(rows.extent * cols.extent, stable=True)
    for chunk, (grid_h, grid_w, height, width) in _plan_chunks(plan[order].tolist()):  # the one host sync
        index = order[chunk]  # (k,)
        by, top = rows.weights(index, grid_h, height)  # (k, M, h), (k,)
        bx, left = cols.weights(index, grid_w, width)  # (k, M, w), (k,)
        y = top[:, None, None] + torch.arange(height, device=top.device)[None, :, None]  # (k, h, 1)
        x = left[:, None, None] + torch.arange(width, device=top.device)[None, None, :]  # (k, 1, w)
        windows = gt_masks[matched_gt[index][:, None, None], y, x].to(dtype)  # (k, h, w) 0/1
        out.index_copy_(0, index, torch.bmm(torch.bmm(by, windows), bx.transpose(1, 2)))  # (k, M, M)
    return out


def _check_target_args(gt_masks: Tensor, resized_size: Tuple[int, int], proposals: Tensor, matched_gt: Tensor,
                       resolution: int) -> None:
    if (not isinstance(gt_masks, Tensor) or gt_masks.dim() != 3 or gt_masks.dtype not in (torch.uint8, torch.bool)
            or gt_masks.shape[1] == 0 or gt_masks.shape[2] == 0):
        raise ValueError(f"gt_masks must be a (G, H0, W0) uint8 or bool tensor with H0, W0 >= 1, got "
                         f"{getattr(gt_masks, 'dtype', type(gt_masks))} of shape {getattr(gt_masks, 'shape', '?')}")
    _check_size(resized_size, "resized_size", minimum=1)
    check_boxes(proposals, "proposals")
    if proposals.dim() != 2 or proposals.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"proposals must be a float32 or float64 (P, 4) tensor, got {proposals.dtype} of shape "
                         f"{tuple(proposals.shape)}")
    if (not isinstance(matched_gt, Tensor) or matched_gt.shape != proposals.shape[:1]
            or matched_gt.dtype != torch.int64):
        raise ValueError(f"matched_gt must be an int64 tensor of shape ({proposals.shape[0]},), one per proposal, "
                         f"got {getattr(matched_gt, 'dtype', type(matched_gt))} of shape "
                         f"{tuple(getattr(matched_gt, 'shape', ()))}")
    if not (gt_masks.device == proposals.device == matched_gt.device):
        raise ValueError(f"gt_masks, proposals and matched_gt must share a device, got {gt_masks.device}, "
                         f"{proposals.device} and {matched_gt.device}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")


class _AxisWindow:
    """One axis of the proposals' RoIs: which original pixels (a window) their samples can read, and the weights.

    Every sample of a RoI from `start` to `end` = start + size lies in (start, end); one that counts is clamped to
    [0, H1] and reads floor(position) and the pixel after, so every pixel with weight lies in
    [floor(start) - 1, floor(end) + 2] (one pixel of margin each side) clipped to [0, H1 - 1]. The nearest resize
    maps resized pixel i to original pixel source[i], nondecreasing in i: the window is source[first] to
    source[last].
    """

    def __init__(self, start: Tensor, size: Tensor, grid: Tensor, resized: int, original: int, resolution: int):
        self.start, self.size, self.grid, self.resized, self.resolution = start, size, grid, resized, resolution
        self.source = nearest_source_pixels(original, resized, start.device)  # (H1,)
        first = (start.floor().to(torch.int64) - 1).clamp(0, resized - 1)
        last = ((start + size).floor().to(torch.int64) + 2).clamp(0, resized - 1)
        self.first = self.source[first]  # (P,) first original pixel of the window
        self.extent = self.source[last] - self.first + 1  # (P,) its length
        self.original = original

    def weights(self, index: Tensor, grid_max: int, extent: int) -> Tuple[Tensor, Tensor]:
        """(k, M, extent) weights of the window's pixels for the proposals `index`, and (k,) the windows' first
        pixels: each bin's mean of its samples' bilinear weights, moved onto the original pixels they copy.

        grid_max: at least the proposals' samples per bin; extent: at least their windows' lengths. A window is
        moved back from the image's end to hold `extent` pixels.
        """
        grid = self.grid[index]
        pixel, weight = _axis_taps(self.start[index], self.size[index], grid, self.resolution, self.resized,
                                   grid_max)  # (k, M, g, 2) each
        weight = weight / grid[:, None, None, None].to(weight.dtype)
        first = self.first[index].clamp(max=self.original - extent)
        # taps with weight lie in the window; padded samples (weight 0) may not, and are clamped into it
        slot = (self.source[pixel] - first[:, None, None, None]).clamp(0, extent - 1)
        num = index.shape[0]
        out = weight.new_zeros((num, self.resolution, extent))
        return out.scatter_add_(2, slot.view(num, self.resolution, -1), weight.view(num, self.resolution, -1)), first


def _plan_chunks(sizes: List[List[int]]) -> List[Tuple[slice, Tuple[int, int, int, int]]]:
    """Split proposals sorted by window size into runs of at most TARGET_CHUNK_PIXELS window pixels, each with
    the (gh, gw, h, w) its proposals are padded to (the run's largest)."""
    chunks, begin = [], 0
    while begin < len(sizes):
        padded, end = sizes[begin], begin + 1
        while end < len(sizes):
            wider = [max(a, b) for a, b in zip(padded, sizes[end])]
            if (end + 1 - begin) * wider[2] * wider[3] > TARGET_CHUNK_PIXELS:
                break
            padded, end = wider, end + 1
        chunks.append((slice(begin, end), tuple(padded)))
        begin = end
    return chunks


def nearest_source_pixels(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """(out_size,) int64 input pixel each output pixel copies in `F.interpolate(mode="nearest")` along one axis:
    min(floor(i * scale), in_size - 1) with scale = in_size / out_size and the product rounded to float32, as
    PyTorch's kernels compute it (aten UpSample.h, nearest_neighbor_compute_source_index)."""
    scale = torch.full((), in_size, dtype=torch.float32, device=device) / out_size  # float32 division
    index = torch.arange(out_size, dtype=torch.float32, device=device) * scale
    return index.floor().to(torch.int64).clamp(max=in_size - 1)
