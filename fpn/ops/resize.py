"""Bilinear resizing written out in gathers and float arithmetic, for the ONNX export.

`F.interpolate(x, size, mode="bilinear", align_corners=False)` exports to ONNX `Resize`, whose runtimes compute
the source coordinate as (i + 0.5) / (out / in) - 0.5 where PyTorch computes (i + 0.5) * (in / out) - 0.5: the
two differ in the last bit, and on an image with sharp edges (noise, text) a last-bit move of the sampling point
changes the resized pixels by up to 1e-4 and the detections by up to 2e-3 px. Written out here, the ONNX
graph does PyTorch's own arithmetic. On the CPU, PyTorch's multi-threaded kernel computes the coordinate and both
blends as fused multiply-adds (x86-64 with FMA); here a fused multiply-add of float32 numbers is computed in
float64, where the product of two float32 is exact, and rounded once to float32: that kernel's values bit for bit
(but for the rare sum that float64 rounds onto a float32 tie). Its single-threaded path blends in another order,
1-2 ulps away; the sampling points, which are what matter, are the same (tests/test_ops_resize.py).
The ONNX export asks for it: `fpn.detectors.transform.preprocess(..., written_out_resize=True)`.
"""
from typing import Tuple

import torch
from torch import SymInt, Tensor

def bilinear_resize(image: Tensor, size: Tuple[int, int]) -> Tensor:
    """(C, H, W) float32 -> (C, h, w), the values of `F.interpolate(image[None], size, mode="bilinear",
    align_corners=False)[0]` (PyTorch's CPU kernel). H, W, h and w may be symbolic (torch.export)."""
    rows0, rows1, row_w0, row_w1 = _source_pixels(image.shape[-2], size[0], image.device)  # (h,) each
    cols0, cols1, col_w0, col_w1 = _source_pixels(image.shape[-1], size[1], image.device)  # (w,) each
    top, bottom = image[:, rows0], image[:, rows1]  # (C, h, W)
    upper = _fma(top[:, :, cols0], col_w0, top[:, :, cols1] * col_w1)  # (C, h, w)
    lower = _fma(bottom[:, :, cols0], col_w0, bottom[:, :, cols1] * col_w1)
    return _fma(upper, row_w0[:, None], lower * row_w1[:, None])


def _source_pixels(in_size: SymInt, out_size: SymInt, device) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """For each of `out_size` output pixels along an axis: the two input pixels it blends (int64) and their weights
    (float32), as PyTorch's kernel derives them (align_corners=False, no antialiasing)."""
    scale = torch.full((), in_size, dtype=torch.float32, device=device) / torch.full(
        (), out_size, dtype=torch.float32, device=device)  # float32 in / out
    centres = torch.arange(out_size, dtype=torch.float64, device=device) + 0.5
    source = (centres * scale.double() - 0.5).float().clamp(min=0)  # fma(i + 0.5, scale, -0.5), rounded once
    first = source.floor().long().clamp(max=in_size - 1)
    weight = (source - first).clamp(0, 1)  # (out,) the second pixel's weight
    return first, (first + 1).clamp(max=in_size - 1), 1 - weight, weight


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """a * b + c for float32 a, b, c, as a fused multiply-add rounds it (exact product, one rounding), computed in
    float64."""
    return (a.double() * b.double() + c.double()).to(a.dtype)
