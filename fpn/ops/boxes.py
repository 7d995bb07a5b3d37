"""Elementary operations on axis-aligned boxes.

Every box here is (x1, y1, x2, y2) in absolute pixels of the image it belongs to, with x2 >= x1 and y2 >= y1 for
a valid box. Widths are x2 - x1 (no "+1" pixel convention), as in torchvision.
"""
from typing import Tuple

import torch
from torch import Tensor


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


def _check_box_list(boxes: Tensor, name: str) -> None:
    check_boxes(boxes, name)
    if boxes.dim() != 2:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box.

    Args:
        boxes: (N, 4) float, (x1, y1, x2, y2).

    Returns:
        (N,) areas (x2 - x1) * (y2 - y1) in the boxes' dtype.
    """
    _check_box_list(boxes, "boxes")
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1: (N, 4) float, (x1, y1, x2, y2).
        boxes2: (M, 4) float, (x1, y1, x2, y2).

    Returns:
        (N, M) IoU of every pair, in the boxes' dtype. Two empty boxes give NaN (0 / 0), like torchvision.
    """
    _check_box_list(boxes1, "boxes1")
    _check_box_list(boxes2, "boxes2")
    area1 = box_area(boxes1)  # (N,)
    area2 = box_area(boxes2)  # (M,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    return inter / (area1[:, None] + area2[None, :] - inter)


def clip_boxes_to_image(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Clip boxes so that they lie inside an image.

    Args:
        boxes: (..., 4) float, (x1, y1, x2, y2).
        size: (height, width) of the image.

    Returns:
        (..., 4) boxes with x in [0, width] and y in [0, height], same dtype.
    """
    check_boxes(boxes)
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)  # (..., 2): x1, x2
    y = boxes[..., 1::2].clamp(min=0, max=height)  # (..., 2): y1, y2
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose both sides are at least `min_size`.

    Args:
        boxes: (N, 4) float, (x1, y1, x2, y2).
        min_size: minimum width and height in pixels.

    Returns:
        (K,) int64 indices into `boxes`, increasing.
    """
    _check_box_list(boxes, "boxes")
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    keep = (widths >= min_size) & (heights >= min_size)
    return torch.where(keep)[0]
