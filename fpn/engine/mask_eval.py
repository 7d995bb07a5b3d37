"""The mask side of COCO evaluation (Mask R-CNN): the detections' masks as results, the ground truth they are
scored against, and what COCOeval's iouType "segm" needs of each. `fpn.engine.evaluation` runs both scorings.

Shape shorthand: D detections of one image; h x w the pixels of the image the model saw, H x W the original's.

- A detection's mask is written as its `segmentation`: the probabilities thresholded at 0.5 and run-length encoded
  (fpn/deploy/mask_rle.py), per image as the detections arrive, so an evaluation holds compressed masks only.
- The ground-truth masks are the annotation file's `segmentation`s (not the samples': a data set built with
  masks=False scores masks too). Each must be one that `CocoDetection(masks=True)` accepts
  (`fpn.data.masks.segmentation_problem`); a file without them has no mask AP, and `segmentation_problem_in`
  says why in one line instead of a pycocotools traceback.
- As detectron2's evaluation does, the segm results leave out `bbox`, so that COCOeval sizes each detection
  (small / medium / large) by its mask's area, not its box's.
- COCOeval's segm scoring writes each ground-truth annotation's RLE over its `segmentation` in place: it scores a
  copy of the annotations (`segm_ground_truth`), so the data set's own COCO object stays as it was read.
"""
from __future__ import annotations

import contextlib
import io
from typing import List, Optional, Sequence

import torch.nn.functional as F
from pycocotools.coco import COCO
from torch import Tensor

from fpn.data.masks import segmentation_problem
from fpn.deploy.mask_rle import binary_masks, mask_rles

SEGM_FIELDS = ("image_id", "category_id", "segmentation", "score")  # what a segm result keeps of a record


def detection_rles(masks: Tensor, scale_xy: Sequence[float] = (1.0, 1.0)) -> List[dict]:
    """The `segmentation` of each detection of one image, in the original image's pixels.

    Args:
        masks: (D, 1, h, w) float mask probabilities, pasted in the pixels of the image the model saw (any device).
        scale_xy: (sx, sy) from those pixels to the original image's: other than 1, the probabilities are resized
            (bilinear) to (H, W) = (round(h * sy), round(w * sx)) before the threshold.
    Returns:
        D COCO compressed RLEs {"size": [H, W], "counts": str}.
    """
    if masks.shape[0] and tuple(scale_xy) != (1.0, 1.0):
        height, width = masks.shape[-2:]
        size = (round(height * scale_xy[1]), round(width * scale_xy[0]))
        masks = F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False)  # (D, 1, H, W)
    return mask_rles(binary_masks(masks))


def segmentation_problem_in(coco_gt: COCO, image_ids: Sequence[int]) -> Optional[str]:
    """Why the ground truth of `image_ids` cannot be scored as masks, or None when every annotation of those images
    has a usable `segmentation` (polygons, uncompressed or compressed RLE of the image's size).

    Returns:
        e.g. "annotation id 7 has no segmentation (12 of the 40 annotations of the 5 images evaluated lack a
        usable one)".
    """
    annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=list(image_ids)))
    first, bad = None, 0
    for annotation in annotations:
        image = coco_gt.imgs[annotation["image_id"]]
        problem = segmentation_problem(annotation.get("segmentation"), int(image["height"]), int(image["width"]))
        if problem is not None:
            bad += 1
            first = first or f"annotation id {annotation.get('id')} {problem}"
    if not bad:
        return None
    return (f"{first} ({bad} of the {len(annotations)} annotations of the {len(image_ids)} images evaluated lack "
            "a usable one)")


def segm_ground_truth(coco_gt: COCO, image_ids: Sequence[int]) -> COCO:
    """A COCO object with `coco_gt`'s images and categories and copies of the annotations of `image_ids`, for
    COCOeval's segm scoring to overwrite (see the module docstring)."""
    copy = COCO()
    annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=list(image_ids)))
    copy.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                    "annotations": [dict(annotation) for annotation in annotations]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        copy.createIndex()
    return copy


def segm_results(results: List[dict]) -> List[dict]:
    """The records as segm results: `SEGM_FIELDS` only (no `bbox`: the mask's area sizes the detection)."""
    return [{name: record[name] for name in SEGM_FIELDS} for record in results]
