"""Mask R-CNN + FPN (He, Gkioxari, Dollar, Girshick, ICCV 2017): Faster R-CNN + FPN with a mask branch on the
same pyramid levels as the box branch.

    features = neck(backbone(images))                      P2..P6
    proposals = rpn(features)                              as Faster R-CNN
    boxes = roi_heads(features[P2..P5], proposals)         as Faster R-CNN
    masks = mask_branch(features[P2..P5], RoIs)            training: the box branch's positive RoIs;
                                                           inference: the detections' boxes

The box path is FasterRCNNFPN's code (this class adds the branch and runs the two in order); the mask branch is
fpn/heads/mask_head.py, the mask targets and pasting fpn/ops/masks.py.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import torch
from torch import Tensor, nn

from fpn.config import MaskRCNNConfig
from fpn.detectors.base import common_channels
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.detectors.transform import ImageBatch
from fpn.detectors.validation import check_target_masks
from fpn.heads.mask_head import MaskBranch


class MaskRCNNFPN(FasterRCNNFPN):
    """Mask R-CNN + FPN with torchvision's detection I/O contract (`maskrcnn_resnet50_fpn`).

    Args:
        num_classes: number of classes INCLUDING the background (label 0); 91 for torchvision's COCO models.
        config: a `MaskRCNNConfig` (FasterRCNNConfig's sections plus `mask`); the default is torchvision's
            `maskrcnn_resnet50_fpn` (v1).
        backbone, neck, rpn_head, box_head: modules you wrote, in place of the configured ones, as for
            `FasterRCNNFPN` (the mask branch pools from the same levels as the box head).

    Training: targets also hold `masks` (N, H, W) uint8 or bool, one per box, at the image's own size (not
    resized: the model crops each positive RoI's target from them). The losses are Faster R-CNN's four plus
    `loss_mask`, the per-pixel binary cross-entropy of each positive RoI's own-class 28x28 mask.

    Inference: each image's dict also holds `masks` (D, 1, H, W) float in [0, 1], the mask probability of each
    detection's class pasted into the image at its box (threshold at 0.5 for a binary mask), as torchvision's.
    """

    config_class = MaskRCNNConfig

    def __init__(
        self, num_classes: int = 91, config: Optional[MaskRCNNConfig] = None, *,
        backbone: Optional[nn.Module] = None, neck: Optional[nn.Module] = None,
        rpn_head: Optional[nn.Module] = None, box_head: Optional[nn.Module] = None,
    ):
        config = config if config is not None else MaskRCNNConfig()
        if not isinstance(config, MaskRCNNConfig):
            raise ValueError(f"MaskRCNNFPN needs a MaskRCNNConfig (with its `mask` section), got "
                             f"{type(config).__name__}")
        super().__init__(num_classes, config, backbone=backbone, neck=neck, rpn_head=rpn_head, box_head=box_head)
        cfg, specs = self.config, self.neck.out_specs
        self.mask_branch = MaskBranch(
            cfg.mask, featmap_names=self.pooled_levels, strides=[specs[name].stride for name in self.pooled_levels],
            in_channels=common_channels(specs, self.pooled_levels, "the mask head"), num_classes=num_classes,
            canonical_scale=cfg.roi_heads.canonical_scale, canonical_level=cfg.roi_heads.canonical_level,
        )
        if cfg.channels_last:
            self.mask_branch.to(memory_format=torch.channels_last)

    @classmethod
    def from_torchvision(cls, path_or_state_dict: Union[str, Dict[str, Tensor]],
                         num_classes: Optional[int] = None) -> "MaskRCNNFPN":
        """Build the model from a torchvision `maskrcnn_resnet50_fpn` (v1) or `maskrcnn_resnet50_fpn_v2` checkpoint
        file or state dict (which one, its keys say), laid out as torchvision builds it with weights (its box part
        as `FasterRCNNFPN.from_torchvision` builds the Faster R-CNN of that version; v2's mask head with
        BatchNorm). With `num_classes` different from the file's, the class-specific layers (class scores, box
        deltas, mask logits) are freshly initialised (fine-tuning). The file is read with
        `torch.load(weights_only=True)`; a Faster R-CNN file is a ValueError saying so."""
        from fpn.io.convert import load_torchvision_detector

        return load_torchvision_detector(cls, path_or_state_dict, num_classes)

    def check_targets(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]]) -> None:
        """Faster R-CNN's checks, and one `masks` (N, H, W) uint8 or bool per box at the image's size."""
        super().check_targets(images, targets)
        check_target_masks(images, targets)

    def forward_batch(self, batch: ImageBatch, targets: Optional[List[Dict[str, Tensor]]] = None):
        """Losses (training) or per-image detections with their 28x28 `masks` (D, 1, 28, 28) probabilities, in
        the ImageBatch frame (eval; `Detector.forward` pastes them into each image)."""
        features = self.features(batch)  # {"p2": (N, 256, Hp/4, Wp/4), ..., "p6"}
        return self.forward_heads(batch, features, targets)

    def forward_heads(self, batch: ImageBatch, features: Dict[str, Tensor],
                      targets: Optional[List[Dict[str, Tensor]]] = None):
        """`forward_batch` after the pyramid: the RPN, box and mask heads on `features`."""
        proposals, rpn_losses = self.rpn(batch, {name: features[name] for name in self.rpn_maps}, targets)
        pooled = {name: features[name] for name in self.pooled_levels}
        if self.training:
            rois, labels, regression_targets, matched = self.roi_heads.sample_rois(proposals, targets)
            class_logits, box_deltas = self.roi_heads.classify(pooled, rois)
            box_losses = self.roi_heads.losses(class_logits, box_deltas, labels, regression_targets)
            loss_mask = self.mask_branch.loss(pooled, rois, labels, matched, targets, batch.image_sizes)
            return {**rpn_losses, **box_losses, "loss_mask": loss_mask}
        detections, _ = self.roi_heads(pooled, proposals, batch.image_sizes)
        for detection, masks in zip(detections, self.mask_branch.probabilities(pooled, detections)):
            detection["masks"] = masks  # (Di, 1, 28, 28)
        return detections
