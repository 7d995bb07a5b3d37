"""Greedy NMS as its definition: slow, short, and the oracle the tests hold every fast form of fpn.ops.nms to.

Visit the boxes by decreasing score (ties: lower index first); keep a box unless a box kept before it overlaps it
with IoU > iou_threshold. The IoU arithmetic is torchvision's: inter / (area_a + area_b - inter) in the boxes'
dtype (float32 for half-precision and integer boxes), compared with the threshold in float64. Zero-area boxes
give 0 / 0 = NaN, which never exceeds the threshold: they suppress nothing and nothing suppresses them.

Cost: one pass over the N boxes per kept box, (K, N) work; use it in tests, not in a detector.
"""
from typing import List

import torch
from torch import Tensor


def nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """(K,) int64 indices of the boxes (N, 4) (x1, y1, x2, y2) kept by greedy NMS, in visiting order."""
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    x1, y1, x2, y2 = boxes.unbind(dim=1)  # (N,) each
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, descending=True, stable=True).indices  # visiting order: score, then index
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        width = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        height = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = width * height
        iou = inter / (areas[i] + areas - inter)  # (N,) IoU of box i with every box
        suppressed |= iou.double() > iou_threshold  # boxes visited before i are decided already
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms_reference(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """(K,) int64 indices kept by greedy NMS run within each category idxs (N,), in visiting order."""
    kept = [torch.zeros(0, dtype=torch.int64, device=boxes.device)]
    for category in torch.unique(idxs).tolist():
        members = torch.nonzero(idxs == category).squeeze(1)  # (M,) indices, ascending
        kept.append(members[nms_reference(boxes[members], scores[members], iou_threshold)])
    kept = torch.sort(torch.cat(kept)).values  # ascending index, then a stable sort by score: visiting order
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def nms_per_image_reference(boxes: Tensor, scores: Tensor, classes: Tensor, images: Tensor, valid: Tensor,
                            num_images: int, iou_threshold: float, top_k: int) -> List[Tensor]:
    """Per image, the valid candidates (P,) kept by NMS within each class, the first top_k, as indices into P."""
    result = []
    for image in range(num_images):
        candidates = torch.nonzero((images == image) & valid).squeeze(1)  # (C,)
        keep = batched_nms_reference(boxes[candidates], scores[candidates], classes[candidates], iou_threshold)
        result.append(candidates[keep[:top_k]])
    return result
