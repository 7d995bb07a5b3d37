"""Detection ops in plain PyTorch: box maths, box coding, anchors, matching, sampling, NMS, RoIAlign and the
one-stage losses (focal, generalized IoU).

Boxes are (x1, y1, x2, y2) in absolute pixels everywhere. Each op matches torchvision's semantics; the tests in
tests/test_ops_*.py check parity with it.
"""
from fpn.ops.anchors import AnchorGenerator
from fpn.ops.box_coder import BoxCoder, DistanceBoxCoder
from fpn.ops.boxes import box_area, box_iou, check_boxes, clip_boxes_to_image, remove_small_boxes
from fpn.ops.losses import generalized_box_iou_loss, sigmoid_focal_loss
from fpn.ops.matcher import Matcher
from fpn.ops.nms import batched_nms, nms
from fpn.ops.poolers import MultiScaleRoIAlign, assign_fpn_levels
from fpn.ops.roi_align import RoIAlign, roi_align
from fpn.ops.sampler import BalancedPositiveNegativeSampler

__all__ = [
    "AnchorGenerator",
    "BalancedPositiveNegativeSampler",
    "BoxCoder",
    "DistanceBoxCoder",
    "Matcher",
    "MultiScaleRoIAlign",
    "RoIAlign",
    "assign_fpn_levels",
    "box_area",
    "box_iou",
    "check_boxes",
    "batched_nms",
    "clip_boxes_to_image",
    "generalized_box_iou_loss",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "sigmoid_focal_loss",
]
