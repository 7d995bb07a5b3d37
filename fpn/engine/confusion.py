"""The confusion matrix of a detector at IoU 0.5: what each ground-truth object was detected as, and what was
detected where there was no object.

Shape shorthand: G ground-truth boxes and D detections of one image; K classes (indices 0..K-1), background K.

`matrix[gt, pred]` (K+1, K+1), rows the ground truth, columns the prediction, counts over the images:
- a detection matched to a ground-truth box: (the box's class, the detection's class), the diagonal when right;
- a ground-truth box that no detection matched: (its class, K), "missed" (the background column);
- a detection matched to no box: (K, its class), "false positive" (the background row); (K, K) stays 0.

Matching, per image, of the detections scoring >= `score_threshold` (default 0.5, the threshold at which
`python -m fpn.predict` and detections.png draw boxes; Ultralytics uses 0.25, which counts more low-score boxes as
false positives):
1. same class first, greedy by score as COCOeval matches at IoU 0.5: each detection, highest score first, takes the
   unmatched non-crowd box of its own class with the highest IoU >= `iou_threshold`, so the diagonal counts the
   true positives of COCOeval's AP50 among the detections above the threshold;
2. the detections left, highest score first, take the unmatched non-crowd box of any class with the highest
   IoU >= `iou_threshold`: a confusion. Matching one pass over any class instead would let a higher-scoring
   wrong-class detection take a box that a right one covers, and count the right one as a false positive;
3. a detection still left whose box lies on a crowd region of any class (intersection >= `iou_threshold` of the
   detection's own area, COCOeval's crowd overlap) is not counted: the region's instances are unlabelled, so it
   is neither a false positive nor a confusion (COCOeval ignores those of the crowd's class). Crowd boxes are
   never "missed".
Ties in score keep the detections' given order (a stable sort, as COCOeval's); ties in IoU take the first box.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from fpn.ops.boxes import box_iou

SCORE_THRESHOLD = 0.5  # detections below it are left out of the matrix
IOU_THRESHOLD = 0.5


def confusion_per_image(
    gt_boxes: Tensor,
    gt_classes: Tensor,
    pred_boxes: Tensor,
    pred_classes: Tensor,
    pred_scores: Tensor,
    num_classes: int,
    *,
    gt_crowd: Optional[Tensor] = None,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    box_format: str = "xyxy",
) -> np.ndarray:
    """The confusion matrix of one image (see the module docstring for the matching).

    Args:
        gt_boxes: (G, 4) float ground-truth boxes in `box_format`, absolute pixels.
        gt_classes: (G,) int class indices in [0, K).
        pred_boxes: (D, 4) float detections in `box_format`, the same pixels.
        pred_classes: (D,) int class indices in [0, K).
        pred_scores: (D,) float scores.
        num_classes: K, the classes without the background.
        gt_crowd: (G,) bool, True for a crowd region; None: no crowd.
        score_threshold: detections scoring below it are left out.
        iou_threshold: the IoU a match needs (and the crowd overlap that excuses a detection).
        box_format: "xyxy" or "xywh" (COCO's).
    Returns:
        (K+1, K+1) int64 counts, rows ground truth, columns prediction, index K the background.
    Raises:
        ValueError: a class index outside [0, K), or boxes and classes of different lengths.
    """
    gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float64).reshape(-1, 4)  # (G, 4) box_format
    pred_boxes = torch.as_tensor(pred_boxes, dtype=torch.float64).reshape(-1, 4)  # (D, 4) box_format
    gt_classes = _classes(gt_classes, len(gt_boxes), num_classes, "gt")  # (G,)
    pred_classes = _classes(pred_classes, len(pred_boxes), num_classes, "pred")  # (D,)
    crowd = np.zeros(len(gt_boxes), bool) if gt_crowd is None else np.asarray(gt_crowd, dtype=bool).reshape(-1)
    if len(crowd) != len(gt_boxes):
        raise ValueError(f"gt_crowd has {len(crowd)} entries for {len(gt_boxes)} gt boxes")
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    kept = np.flatnonzero(scores >= score_threshold)
    order = kept[np.argsort(-scores[kept], kind="stable")]  # (D',) detection indices, highest score first
    iou = box_iou(pred_boxes, gt_boxes, box_format).nan_to_num(0.0).numpy()  # (D, G)
    iou[:, crowd] = -1.0  # crowd regions are never matched
    same_class = pred_classes[:, None] == gt_classes[None, :]  # (D, G)
    gt_free = np.ones(len(gt_boxes), bool)  # (G,) not matched yet
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    left = _match(order, same_class, iou, gt_free, iou_threshold, gt_classes, pred_classes, matrix)  # 1. own class
    left = _match(left, np.ones_like(same_class), iou, gt_free, iou_threshold, gt_classes, pred_classes, matrix)
    crowd_boxes = gt_boxes[torch.from_numpy(crowd)]  # (C, 4) box_format
    on_crowd = _on_crowd(pred_boxes[torch.tensor(left, dtype=torch.long)], crowd_boxes, box_format, iou_threshold)
    for d, excused in zip(left, on_crowd):  # 3.
        if not excused:
            matrix[num_classes, pred_classes[d]] += 1
    for g in np.flatnonzero(gt_free & ~crowd):
        matrix[gt_classes[g], num_classes] += 1
    return matrix


def _match(order: Sequence[int], allowed: np.ndarray, iou: np.ndarray, gt_free: np.ndarray, threshold: float,
           gt_classes: np.ndarray, pred_classes: np.ndarray, matrix: np.ndarray) -> list:
    """One greedy pass: each detection of `order`, in that order, takes the free box it is `allowed` (D, G) with
    the highest `iou` (D, G) >= `threshold` (the first of equal ones), counted in `matrix`; `gt_free` (G,) is
    updated. Returns the detections left unmatched, in `order`'s order."""
    left = []
    for d in order:
        candidates = np.where(allowed[d] & gt_free, iou[d], -1.0)  # (G,)
        g = int(candidates.argmax()) if len(candidates) else -1
        if g >= 0 and candidates[g] >= threshold:
            gt_free[g] = False
            matrix[gt_classes[g], pred_classes[d]] += 1
        else:
            left.append(int(d))
    return left


def _classes(classes, count: int, num_classes: int, name: str) -> np.ndarray:
    """`classes` as an int64 array, checked: one per box, each in [0, num_classes)."""
    array = np.asarray(classes, dtype=np.int64).reshape(-1)
    if len(array) != count:
        raise ValueError(f"{name}_classes has {len(array)} entries for {count} {name} boxes")
    bad = array[(array < 0) | (array >= num_classes)]
    if len(bad):
        raise ValueError(f"{name}_classes holds {int(bad[0])}, outside the {num_classes} classes [0, {num_classes})")
    return array


def _on_crowd(boxes: Tensor, crowd_boxes: Tensor, box_format: str, threshold: float) -> Sequence[bool]:
    """Per box of `boxes` (D, 4): whether its intersection with some crowd box reaches `threshold` of its area."""
    if not len(boxes) or not len(crowd_boxes):
        return [False] * len(boxes)
    if box_format == "xywh":  # -> xyxy
        boxes, crowd_boxes = (torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1) for b in (boxes, crowd_boxes))
    top_left = torch.max(boxes[:, None, :2], crowd_boxes[None, :, :2])  # (D, C, 2)
    bottom_right = torch.min(boxes[:, None, 2:], crowd_boxes[None, :, 2:])  # (D, C, 2)
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)  # (D, C)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)  # (D,)
    return (inter >= threshold * area[:, None]).any(1).tolist()


def coco_confusion(
    coco_gt,
    per_image: Mapping[int, Iterable[dict]],
    category_ids: Sequence[int],
    *,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
) -> np.ndarray:
    """The confusion matrix of COCO results against a COCO ground truth, summed over the images of `per_image`.

    Args:
        coco_gt: a pycocotools COCO object (its `imgToAnns`: `bbox` xywh, `category_id`, `iscrowd`).
        per_image: {image_id: COCO result dicts (`bbox` xywh, `category_id`, `score`)} of the images evaluated.
        category_ids: the K category ids, in the matrix's order.
        score_threshold, iou_threshold: see `confusion_per_image`.
    Returns:
        (K+1, K+1) int64 counts, rows ground truth, columns prediction, index K the background. Annotations and
        results of categories outside `category_ids` are left out.
    """
    index = {int(c): k for k, c in enumerate(category_ids)}
    matrix = np.zeros((len(index) + 1, len(index) + 1), np.int64)
    for image_id, records in per_image.items():
        gts = [a for a in coco_gt.imgToAnns.get(image_id, []) if int(a["category_id"]) in index]
        preds = [r for r in records if int(r["category_id"]) in index]
        gt_boxes, gt_classes = _boxes_and_classes(gts, index)
        pred_boxes, pred_classes = _boxes_and_classes(preds, index)
        matrix += confusion_per_image(
            gt_boxes, gt_classes, pred_boxes, pred_classes, [r["score"] for r in preds], len(index),
            gt_crowd=[bool(a.get("iscrowd", 0)) for a in gts], score_threshold=score_threshold,
            iou_threshold=iou_threshold, box_format="xywh")
    return matrix


def _boxes_and_classes(items: Sequence[dict], index: Mapping[int, int]) -> Tuple[Tensor, list]:
    """(N, 4) float64 xywh boxes and the N class indices of COCO annotations or results."""
    boxes = torch.tensor([item["bbox"] for item in items], dtype=torch.float64).reshape(-1, 4)
    return boxes, [index[int(item["category_id"])] for item in items]
