"""Elementary operations on axis-aligned boxes, drop-in replacements for torchvision.ops' box functions.

Every box here is (x1, y1, x2, y2) in absolute pixels of the image it belongs to, with x2 >= x1 and y2 >= y1 for
a valid box. Widths are x2 - x1 (no "+1" pixel convention), as in torchvision.

Dtypes follow torchvision's observable results: areas are computed in a widened dtype (8/16-bit integers ->
int32, float16/bfloat16 -> float32; int32, int64, float32 and float64 stay) and IoUs are the true division of
those, so integer boxes give float IoUs in torch's default float dtype. Unlike torchvision, the coordinates are
widened *before* any difference is taken, so uint8 boxes that do not overlap give IoU 0 (torchvision's uint8
difference wraps around and gives a negative IoU) and int8 boxes wider than 127 do not overflow.
"""
from typing import Tuple

import torch
from torch import Tensor

# Box formats of box_area / box_iou's `fmt`, as in torchvision (the rotated ones need torchvision's C++ kernel).
AXIS_ALIGNED_FORMATS = ("xyxy", "xywh", "cxcywh")
_ROTATED_FORMATS = ("cxcywhr", "xywhr", "xyxyxyxy")


def check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    """Raise a ValueError unless `boxes` is a tensor whose last dimension is 4.

    Args:
        boxes: the tensor to check, expected shape (..., 4).
        name: how the argument is called in the error message.
    """
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a Tensor of shape (..., 4), got {type(boxes).__name__}")
    if boxes.dim() == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) (x1, y1, x2, y2), got {tuple(boxes.shape)}")


def _check_box_list(boxes: Tensor, name: str, batched: bool = False) -> None:
    """Boxes must be (N, 4), or (..., N, 4) when `batched`."""
    check_boxes(boxes, name)
    if boxes.dim() < 2 or (boxes.dim() > 2 and not batched):
        expected = "(..., N, 4)" if batched else "(N, 4)"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(boxes.shape)}")


def _check_format(fmt: str) -> None:
    if fmt in _ROTATED_FORMATS:
        raise ValueError(f"rotated box format {fmt!r} is not supported (torchvision needs its C++ kernel for it)")
    if fmt not in AXIS_ALIGNED_FORMATS:
        raise ValueError(f"unsupported box format {fmt!r}, expected one of {AXIS_ALIGNED_FORMATS}")


def _widen(boxes: Tensor) -> Tensor:
    """The boxes in a dtype wide enough for differences and products: int32 for 8/16-bit integers (and bool),
    float32 for float16/bfloat16 (whose 11- or 8-bit mantissa cannot hold the area of a 300-pixel box exactly,
    and whose range ends at 65504 for float16); int32, int64, float32 and float64 are kept."""
    if boxes.dtype in (torch.float32, torch.float64, torch.int32, torch.int64):
        return boxes
    return boxes.to(torch.float32 if boxes.is_floating_point() else torch.int32)


def _corners(boxes: Tensor, fmt: str) -> Tuple[Tensor, Tensor]:
    """(..., 4) boxes in `fmt` -> top-left and bottom-right corners, (..., 2) each."""
    if fmt == "xyxy":
        return boxes[..., :2], boxes[..., 2:]
    if fmt == "xywh":
        return boxes[..., :2], boxes[..., :2] + boxes[..., 2:]
    half_size = boxes[..., 2:] / 2  # cxcywh
    return boxes[..., :2] - half_size, boxes[..., :2] + half_size


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area of each box.

    Args:
        boxes: (..., 4) boxes in `fmt`, any real dtype.
        fmt: "xyxy" (x1, y1, x2, y2), "xywh" (x1, y1, w, h) or "cxcywh" (cx, cy, w, h).

    Returns:
        (...,) areas, int32 for 8/16-bit integer boxes, float32 for float16/bfloat16 boxes, else the boxes'
        dtype (as torchvision.ops.box_area).
    """
    _check_format(fmt)
    check_boxes(boxes)
    boxes = _widen(boxes)
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1: (..., N, 4) boxes in `fmt`, any real dtype.
        boxes2: (..., M, 4) boxes in `fmt`; the leading dimensions broadcast with boxes1's.
        fmt: "xyxy", "xywh" or "cxcywh", as in box_area.

    Returns:
        (..., N, M) IoU of every pair, float: float32 for integer (with torch's default float dtype) and
        float16/bfloat16 boxes, else the boxes' dtype. Two empty boxes give NaN (0 / 0), like torchvision.
    """
    _check_format(fmt)
    _check_box_list(boxes1, "boxes1", batched=True)
    _check_box_list(boxes2, "boxes2", batched=True)
    boxes1, boxes2 = _widen(boxes1), _widen(boxes2)
    area1 = box_area(boxes1, fmt)  # (..., N)
    area2 = box_area(boxes2, fmt)  # (..., M)
    top_left1, bottom_right1 = _corners(boxes1, fmt)  # (..., N, 2) each
    top_left2, bottom_right2 = _corners(boxes2, fmt)  # (..., M, 2) each
    top_left = torch.max(top_left1[..., :, None, :], top_left2[..., None, :, :])  # (..., N, M, 2)
    bottom_right = torch.min(bottom_right1[..., :, None, :], bottom_right2[..., None, :, :])  # (..., N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (..., N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (..., N, M)
    return inter / (area1[..., :, None] + area2[..., None, :] - inter)


def clip_boxes_to_image(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Clip boxes so that they lie inside an image.

    Args:
        boxes: (..., 4) boxes (x1, y1, x2, y2), any real dtype.
        size: (height, width) of the image.

    Returns:
        (..., 4) boxes with x in [0, width] and y in [0, height], same dtype. (For integer boxes a bound beyond
        the dtype's range clips nothing; torchvision raises a RuntimeError there.)
    """
    check_boxes(boxes)
    height, width = size
    if not boxes.is_floating_point():
        top = torch.iinfo(boxes.dtype).max
        height, width = min(height, top), min(width, top)
    x = boxes[..., 0::2].clamp(min=0, max=width)  # (..., 2): x1, x2
    y = boxes[..., 1::2].clamp(min=0, max=height)  # (..., 2): y1, y2
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """(N,) bool: the boxes (N, 4) whose width and height are both >= min_size (measured in the widened dtype).

    The mask form of remove_small_boxes: no host sync, for filters that combine it with others.
    """
    boxes = _widen(boxes)
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose both sides are at least `min_size`.

    The output size depends on the data (as torchvision's), so this op synchronises with the device.

    Args:
        boxes: (N, 4) boxes (x1, y1, x2, y2), any real dtype (sides are measured in the widened dtype).
        min_size: minimum width and height in pixels.

    Returns:
        (K,) int64 indices into `boxes`, increasing.
    """
    _check_box_list(boxes, "boxes")
    return torch.where(large_enough(boxes, min_size))[0]
