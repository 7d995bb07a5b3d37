"""Post-processing of a whole batch at once: filter candidates, NMS within (image, class), keep the top k per image.

The RPN (classes = pyramid levels) and the box head (classes = object classes) both end with, per image: drop
some candidates, run NMS within each class, keep the k best. Done image by image this costs every image its own
filter (a host sync: the survivors' count sizes the result) and its own NMS call; here the batch is one filter
and one NMS call, with the image folded into the NMS category (images never suppress each other), and one more
host read to split the kept boxes by image.

Shape shorthand: P candidates of all images, concatenated image by image; K kept candidates.
"""
from typing import List

import torch
from torch import Tensor

from fpn.ops.nms import batched_nms


def nms_per_image(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    images: Tensor,
    valid: Tensor,
    num_images: int,
    num_classes: int,
    iou_threshold: float,
    top_k: int,
) -> List[Tensor]:
    """Per image, the candidates kept by NMS within each class, at most `top_k`, best first.

    The result is that of running, for each image alone, `keep = where(valid)`, NMS within each class on those
    candidates, and `keep[:top_k]` (torchvision's RPN and detection post-processing): boxes of different
    images or classes never suppress each other, and each image's kept boxes come in decreasing score, ties
    broken by the lower index, exactly as an image's own NMS orders them.

    Args:
        boxes: (P, 4) float boxes (x1, y1, x2, y2).
        scores: (P,) float scores.
        classes: (P,) int64 class of each candidate, in [0, num_classes).
        images: (P,) int64 image of each candidate, in [0, num_images), non-decreasing.
        valid: (P,) bool, the candidates NMS considers; the others are dropped.
        num_images, num_classes: the number of images and classes.
        iou_threshold: NMS threshold within a class of an image.
        top_k: the most candidates kept per image.

    Returns:
        per image, (Ki,) int64 indices into the P candidates. Host syncs: two, plus those of one NMS call.
    """
    candidates = torch.nonzero(valid).squeeze(1)  # (C,): the first host sync, sizing C
    groups = images.index_select(0, candidates) * num_classes + classes.index_select(0, candidates)
    kept = candidates.index_select(0, batched_nms(
        boxes.index_select(0, candidates), scores.index_select(0, candidates), groups, iou_threshold))  # (K,)
    if num_images == 1 and torch.compiler.is_exporting():
        # one image, traced with its kept count unknown: no host read to split by image (export has none)
        return [kept[:top_k]]
    # Stable sort by image: within an image the NMS order (score, then index) is kept.
    kept_images, order = torch.sort(images.index_select(0, kept), stable=True)
    kept = kept.index_select(0, order)
    ends = torch.searchsorted(kept_images, torch.arange(num_images, device=kept.device), right=True)
    ends = ends.tolist()  # the second host sync: where each image's kept candidates end
    starts = [0] + ends[:-1]
    return [kept[start:min(end, start + top_k)] for start, end in zip(starts, ends)]

