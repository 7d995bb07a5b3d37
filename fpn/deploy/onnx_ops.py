"""The fpn:: operators, and what the exporter translates wrongly or not at all, in standard ONNX ops (opset 18).

`translation_table()` maps each to an onnxscript function, for the `custom_translation_table` of
`torch.onnx.export(..., dynamo=True)`; the exported model holds only standard ONNX ops, which any runtime executes:

* `fpn::roi_align` -> `RoiAlign` (mode "avg"). Its `coordinate_transformation_mode` "output_half_pixel" is
  torchvision's `aligned=False` (no half-pixel shift of the box, and a box side clamped to at least one feature
  pixel), "half_pixel" is `aligned=True`; `sampling_ratio` <= 0 is ONNX's 0 (adaptive: ceil(box side / bins)).
  The (K, 5) rois (batch index, x1, y1, x2, y2) become RoiAlign's (K, 4) boxes and (K,) int64 batch indices.
* `fpn::nms` / `fpn::batched_nms` -> `NonMaxSuppression`, exact rather than by the usual coordinate-offset trick
  (adding category * (largest coordinate + 1) to the boxes, which rounds the coordinates of the far categories
  and can flip an IoU that lies at the threshold). Instead every category is a class of NonMaxSuppression: a
  (1, G, N) score matrix holds each box's score in its own category's row and -inf elsewhere, and a score
  threshold of -inf drops the -inf entries (the runtime keeps a box when score > threshold). Same greedy, the
  same IoU arithmetic (inter / (area1 + area2 - inter) in float32, suppressing when IoU > threshold) and the same
  visiting order (decreasing score, ties: lower index first, onnxruntime's priority queue); the threshold is
  passed as the largest float32 <= it, as fpn's NMS compares. NonMaxSuppression returns the kept boxes class by
  class; two TopK sorts (by index, then by score, TopK keeping the lower position first on ties) give fpn's order:
  decreasing score, ties by lower index. Limit: a box whose score is -inf (or NaN) is dropped here, kept by fpn.
* Python arithmetic on sizes (`torch.sym_float`, `/`), e.g. the resize's scale min(800 / short, 1333 / long) and
  new size floor(H * scale): in float64, as Python computes it. The exporter's default, float32, gives another
  size for 23 % of the image shapes from 16 to 2000 px with min = max = 256, 6 % with 800 / 1333 (e.g. 41 * (256 / 41)
  is 256 in float64, 255.99998 in float32).
* `aten::sort.stable` (the pooler's argsort of RoI levels), which the exporter does not translate: TopK.
"""
import operator

import torch
from onnxscript import DOUBLE, INT64
from onnxscript import opset18 as op

from fpn.ops.nms_window import threshold_below  # importing fpn.ops registers the fpn:: operators

OPSET = 18  # NonMaxSuppression 11, RoiAlign 16, TopK 11: opset 18 holds them all (and is >= 17)


def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
              aligned: bool):
    """fpn::roi_align as ONNX RoiAlign: (N, C, H, W) input, (K, 5) rois -> (K, C, oh, ow)."""
    batch_indices = op.Cast(op.Reshape(op.Slice(rois, [0], [1], [1]), [-1]), to=INT64.dtype)  # (K,)
    boxes = op.Slice(rois, [1], [5], [1])  # (K, 4) x1, y1, x2, y2
    return op.RoiAlign(
        input, boxes, batch_indices,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg", output_height=pooled_height, output_width=pooled_width,
        sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale),
    )


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """fpn::batched_nms as ONNX NonMaxSuppression: (N, 4) boxes, (N,) scores and int categories -> (K,) int64
    kept indices, by decreasing score (ties: lower index first)."""
    groups = op.Cast(idxs, to=INT64.dtype)  # (N,)
    num_groups = op.Add(op.ReduceMax(op.Concat(groups, op.Constant(value_ints=[0]), axis=0), keepdims=1),
                        op.Constant(value_ints=[1]))  # (1,) max category + 1 (1 for no boxes)
    return _nms_by_class(boxes, scores, groups, num_groups, iou_threshold)


def nms(boxes, scores, iou_threshold: float):
    """fpn::nms as ONNX NonMaxSuppression: one category."""
    groups = op.Mul(op.Cast(scores, to=INT64.dtype), op.Constant(value_int=0))  # (N,) zeros
    return _nms_by_class(boxes, scores, groups, op.Constant(value_ints=[1]), iou_threshold)


def _nms_by_class(boxes, scores, groups, num_groups, iou_threshold: float):
    num_boxes = op.Shape(scores)  # (1,) N
    classes = op.Range(op.Constant(value_int=0), op.Squeeze(num_groups), op.Constant(value_int=1))  # (G,)
    member = op.Equal(op.Unsqueeze(classes, [1]), op.Unsqueeze(groups, [0]))  # (G, N)
    minus_inf = op.Constant(value_float=float("-inf"))
    score_matrix = op.Where(member, op.Unsqueeze(scores, [0]), minus_inf)  # (G, N)
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]),  # (1, N, 4)
        op.Unsqueeze(score_matrix, [0]),  # (1, G, N)
        num_boxes,  # at most N per class (0 for no boxes, then nothing is selected)
        op.Constant(value_floats=[threshold_below(iou_threshold, torch.float32)]),
        op.Constant(value_floats=[float("-inf")]),
        center_point_box=0,
    )  # (K, 3) rows (batch, class, box)
    kept = op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])  # (K,) class by class
    count = op.Shape(kept)  # (1,) K
    by_index, _ = op.TopK(kept, count, largest=0, sorted=1)  # (K,) increasing
    _, order = op.TopK(op.Gather(scores, by_index), count, largest=1, sorted=1)  # ties: lower position first
    return op.Gather(by_index, order)


def stable_sort(self, stable=None, dim: int = -1, descending: bool = False):
    """aten::sort.stable (the pooler's argsort of RoI levels), which the exporter does not translate: TopK over the
    whole axis, which keeps the lower position first on ties, i.e. a stable sort either way."""
    count = op.Reshape(op.Gather(op.Shape(self), dim), [1])
    return op.TopK(self, count, axis=dim, largest=1 if descending else 0, sorted=1)


def sym_float(self):
    """torch.sym_float (int -> Python float) as float64."""
    return op.Cast(self, to=DOUBLE.dtype)


def truediv(self, other):
    """Python's `/` on sizes as float64."""
    return op.Div(op.Cast(self, to=DOUBLE.dtype), op.Cast(other, to=DOUBLE.dtype))


def translation_table():
    """{torch op overload: onnxscript function} for `torch.onnx.export`'s `custom_translation_table`."""

    return {
        torch.ops.fpn.roi_align.default: roi_align,
        torch.ops.fpn.batched_nms.default: batched_nms,
        torch.ops.fpn.nms.default: nms,
        torch.ops.aten.sort.stable: stable_sort,
        torch.sym_float: sym_float,
        operator.truediv: truediv,
    }
