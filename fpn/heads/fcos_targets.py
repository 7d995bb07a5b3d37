"""FCOS's training targets and losses (Tian et al., ICCV 2019), as torchvision's `fcos_resnet50_fpn` computes
them (tests/test_fcos_parity.py checks the losses against it).

Each location of each level has a reference box ("anchor") of side = the level's size (8 on P3 ... 128 on P7)
centred on it. A location is a positive of a ground-truth box when
  * it lies within `radius` reference sides of the box centre (centre sampling), and inside the box;
  * the longest of its four distances to the box sides is in the level's range: (0, 4s) on the first level,
    (4s, 8s) in between, (4s, inf) on the last (s the level's reference side);
and among several such boxes it takes the one of smallest area. The others are background.

Shape shorthand: N images, L locations of all levels, M ground-truth boxes of an image, C classes.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor

from fpn.ops.box_coder import DistanceBoxCoder
from fpn.ops.losses import generalized_box_iou_loss, sigmoid_focal_loss


def match_locations(anchors: Tensor, gt_boxes: Tensor, num_per_level: List[int], radius: float) -> Tensor:
    """The ground-truth box each location learns, or -1.

    Args:
        anchors: (L, 4) the locations' reference boxes xyxy, level by level.
        gt_boxes: (M, 4) xyxy of one image (M may be 0).
        num_per_level: locations per level, summing to L.
        radius: centre sampling radius, in reference sides.
    Returns:
        (L,) int64 index into gt_boxes, -1 for background.
    """
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (M, 2)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2  # (L, 2)
    sides = anchors[:, 2] - anchors[:, 0]  # (L,)
    match = (centers[:, None, :] - gt_centers[None, :, :]).abs().amax(dim=2) < radius * sides[:, None]  # (L, M)
    x, y = centers[:, 0:1], centers[:, 1:2]  # (L, 1)
    x0, y0, x1, y1 = gt_boxes.unbind(dim=1)  # (M,) each
    distances = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # (L, M, 4)
    match &= distances.amin(dim=2) > 0  # inside the box
    lower, upper = sides * 4, sides * 8  # (L,)
    lower[: num_per_level[0]] = 0
    upper[-num_per_level[-1]:] = float("inf")
    longest = distances.amax(dim=2)  # (L, M)
    match &= (longest > lower[:, None]) & (longest < upper[:, None])
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # (M,)
    # the smallest box wins: every match scores 1e8 - its area (torchvision's rule, ties to the lower index)
    value, index = (match.to(torch.float32) * (1e8 - areas[None, :])).max(dim=1)  # (L,)
    return torch.where(value < 1e-5, torch.full_like(index, -1), index)


def fcos_losses(
    class_logits: Tensor,
    distances: Tensor,
    centerness: Tensor,
    anchors: Tensor,
    targets: List[Dict[str, Tensor]],
    num_per_level: List[int],
    radius: float = 1.5,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Dict[str, Tensor]:
    """The three FCOS losses, each summed over the batch and divided by max(1, positives).

    Args:
        class_logits: (N, L, C); distances: (N, L, 4) normalised (l, t, r, b); centerness: (N, L) logits.
        anchors: (L, 4) the locations' reference boxes (the same for every image of the padded batch).
        targets: per image `boxes` (M, 4) xyxy in the padded batch's frame and `labels` (M,) int64 in [0, C).
        num_per_level, radius: see `match_locations`; alpha, gamma: the focal loss's.
    Returns:
        {"classification": focal loss, "bbox_regression": GIoU loss of the positives' boxes,
         "bbox_ctrness": BCE of the positives' centerness}, torchvision's names. No host synchronisation: the
        positives are weights, not an index.
    """
    num_classes = class_logits.shape[-1]
    matched = torch.stack([match_locations(anchors, t["boxes"], num_per_level, radius) for t in targets])  # (N, L)
    foreground = matched >= 0  # (N, L)
    safe = matched.clamp(min=0)
    gt_labels = torch.stack([t["labels"][i] if t["labels"].numel() else torch.zeros_like(i)
                             for t, i in zip(targets, safe)])  # (N, L)
    gt_boxes = torch.stack([t["boxes"][i] if t["boxes"].numel() else anchors.new_zeros(i.shape[0], 4)
                            for t, i in zip(targets, safe)])  # (N, L, 4)
    weight = foreground.to(class_logits.dtype)  # (N, L)
    num_foreground = weight.sum().clamp(min=1)

    one_hot = F.one_hot(gt_labels, num_classes).to(class_logits.dtype) * weight[..., None]  # (N, L, C)
    loss_cls = sigmoid_focal_loss(class_logits, one_hot, alpha, gamma).sum()

    coder = DistanceBoxCoder()
    batch_anchors = anchors.expand(distances.shape[0], -1, -1)  # (N, L, 4)
    predicted = coder.decode(distances, batch_anchors)  # (N, L, 4)
    # background rows compare a box with itself (loss 0, finite) and are weighted out
    paired_gt = torch.where(foreground[..., None], gt_boxes, predicted.detach())
    loss_box = (generalized_box_iou_loss(predicted.reshape(-1, 4), paired_gt.reshape(-1, 4)) * weight.reshape(-1)).sum()

    encoded = coder.encode(batch_anchors, gt_boxes)  # (N, L, 4) true (l, t, r, b) of the matched box
    left_right, top_bottom = encoded[..., [0, 2]], encoded[..., [1, 3]]
    ratio = (left_right.amin(dim=-1) / left_right.amax(dim=-1)) * (top_bottom.amin(dim=-1) / top_bottom.amax(dim=-1))
    target_ctr = torch.where(foreground, ratio, torch.ones_like(ratio)).sqrt()  # background: any finite value
    loss_ctr = (F.binary_cross_entropy_with_logits(centerness, target_ctr, reduction="none") * weight).sum()
    return {"classification": loss_cls / num_foreground, "bbox_regression": loss_box / num_foreground,
            "bbox_ctrness": loss_ctr / num_foreground}
