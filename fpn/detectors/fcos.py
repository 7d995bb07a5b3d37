"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019) on the feature pyramid:
one stage, no anchor boxes; every location of P3..P7 predicts class scores, the distances to the four sides of
its object and a centerness that down-weights locations far from the object's centre.

    normalise/resize/pad -> backbone (C3..C5) -> FPN (P3..P5, P6 and P7 by stride-2 convs from P5)
        -> shared head (classes, distances, centerness) -> per level top-k -> per-class NMS -> input pixels

The arithmetic follows torchvision's `fcos_resnet50_fpn` (its "anchors" are each location's reference box of
side = the level's stride), so the same weights give the same detections and losses (tests/test_fcos_parity.py),
with one difference: class 0, the background, is never a detection here, while torchvision's FCOS returns it
when its logit is high enough (as an untrained model's can be).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import torch
from torch import Tensor

from fpn.backbones import build_backbone
from fpn.config import FCOSConfig
from fpn.detectors.base import Detector
from fpn.heads.fcos_head import FCOSHead
from fpn.heads.fcos_targets import fcos_losses
from fpn.necks import FPN, LastLevelP6P7
from fpn.ops.anchors import AnchorGenerator
from fpn.ops.box_coder import DistanceBoxCoder
from fpn.ops.boxes import clip_boxes_to_image
from fpn.ops.nms_per_image import nms_per_image
from fpn.transform import ImageBatch

PYRAMID_INPUTS = ("c3", "c4", "c5")  # FCOS's pyramid starts at stride 8


class FCOSFPN(Detector):
    """FCOS + FPN with torchvision's detection I/O contract (the same as `FasterRCNNFPN`'s).

    Args:
        num_classes: number of classes INCLUDING the background: one logit per class, as torchvision's FCOS
            has (91 for its COCO model). Label 0 is the background and is never returned, whatever the weights
            (torchvision's FCOS can return it; an untrained model's class-0 logit may be the largest).
        config: an `FCOSConfig`; the default is torchvision's `fcos_resnet50_fpn`. The model keeps
            `config.resolved()` as `model.config`.

    Training: `model(images, targets)` returns {"classification", "bbox_regression", "bbox_ctrness"}, each
    divided by the number of positive locations (fpn/heads/fcos_targets.py). Inference: per image `boxes`
    (D, 4) xyxy in the image's pixels, `scores` (D,) = sqrt(class probability x centerness), `labels` (D,).

    Example:
        >>> import torch
        >>> from fpn import FCOSFPN
        >>> model = FCOSFPN(num_classes=3).eval()
        >>> sorted(model([torch.rand(3, 300, 400)])[0])
        ['boxes', 'labels', 'scores']
    """

    def __init__(self, num_classes: int = 91, config: Optional[FCOSConfig] = None):
        super().__init__(num_classes, config if config is not None else FCOSConfig())
        cfg = self.config
        self.backbone = build_backbone(cfg.backbone)
        in_specs = {name: self.backbone.out_specs[name] for name in PYRAMID_INPUTS}
        self.neck = FPN(in_specs, cfg.fpn.out_channels, extra_levels=LastLevelP6P7(cfg.fpn.out_channels))
        strides = [spec.stride for spec in self.neck.out_specs.values()]  # 8, 16, 32, 64, 128
        head = cfg.head
        self.head = FCOSHead(cfg.fpn.out_channels, num_classes, head.num_convs, head.gn_groups,
                             head.prior_probability)
        # each location's reference box: side = its level's stride, centred on the location (torchvision's FCOS)
        self.anchor_generator = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        self.box_coder = DistanceBoxCoder()
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_batch(self, batch: ImageBatch, targets: Optional[List[Dict[str, Tensor]]] = None):
        """Losses (training) or per-image detections in the ImageBatch frame (eval); see `Detector`."""
        maps = list(self.features(batch).values())  # P3..P7, (N, d, H_l, W_l)
        class_logits, distances, centerness = self.head(maps)  # (N, L, C), (N, L, 4), (N, L)
        # locations, decoding, losses and NMS in float32, also when the convs run in bf16/fp16 under autocast
        class_logits, distances, centerness = class_logits.float(), distances.float(), centerness.float()
        anchors = self.anchor_generator.anchors_for(
            tuple(batch.tensor.shape[-2:]), [tuple(m.shape[-2:]) for m in maps], maps[0].device, torch.float32
        )  # (L, 4)
        num_per_level = [m.shape[-2] * m.shape[-1] for m in maps]
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            head = self.config.head
            return fcos_losses(class_logits, distances, centerness, anchors, targets, num_per_level,
                               head.center_sampling_radius, head.focal_alpha, head.focal_gamma)
        return self.detect(class_logits, distances, centerness, anchors, num_per_level, batch.image_sizes)

    def detect(self, class_logits: Tensor, distances: Tensor, centerness: Tensor, anchors: Tensor,
               num_per_level: List[int], image_sizes: List[tuple]) -> List[Dict[str, Tensor]]:
        """Per level the best `topk_candidates` (class, location) pairs of a real class (label >= 1) scoring above
        `score_thresh`, decoded and clipped; then NMS within each class of each image and the best
        `detections_per_img`. The background (label 0) is never a candidate. All images at once: the host syncs
        are `nms_per_image`'s."""
        cfg = self.config.head
        n, num_classes = class_logits.shape[0], class_logits.shape[-1]
        scores = torch.sqrt(torch.sigmoid(class_logits) * torch.sigmoid(centerness)[..., None])  # (N, L, C)
        # torchvision keeps scores > threshold, then the top k of those: the top k of all, with the others pushed
        # below every kept score (-1), is the same set without a data-dependent size. The background goes lower
        # still (-2), so that the top k never spends a slot on it, even when fewer than k scores pass.
        scores = torch.where(scores > cfg.score_thresh, scores, torch.full_like(scores, -1.0))
        background = torch.arange(num_classes, device=scores.device) == 0  # (C,)
        scores = torch.where(background, torch.full_like(scores, -2.0), scores)  # (N, L, C)
        boxes, top_scores, labels, offset = [], [], [], 0
        for count in num_per_level:
            level = scores[:, offset:offset + count].reshape(n, -1)  # (N, count * C), location-major
            k = torch.sym_min(cfg.topk_candidates, level.shape[1])  # sym_min: the size may be symbolic (export)
            value, index = level.topk(k, dim=1)  # (N, k)
            location = torch.div(index, num_classes, rounding_mode="floor") + offset
            rows = torch.arange(n, device=index.device)[:, None]
            decoded = self.box_coder.decode(distances[rows, location], anchors[location])  # (N, k, 4)
            boxes.append(torch.stack([clip_boxes_to_image(b, size) for b, size in zip(decoded, image_sizes)]))
            top_scores.append(value)
            labels.append(index % num_classes)
            offset += count
        boxes, top_scores, labels = torch.cat(boxes, 1), torch.cat(top_scores, 1), torch.cat(labels, 1)  # (N, T..)
        images = torch.arange(n, device=boxes.device)[:, None].expand_as(labels)
        valid = (top_scores > cfg.score_thresh) & (labels > 0)  # (N, T): label > 0 also if score_thresh < -2
        keep = nms_per_image(
            boxes.reshape(-1, 4), top_scores.reshape(-1), labels.reshape(-1), images.reshape(-1),
            valid.reshape(-1), num_images=n, num_classes=num_classes,
            iou_threshold=cfg.nms_thresh, top_k=cfg.detections_per_img,
        )
        flat_boxes, flat_scores, flat_labels = boxes.reshape(-1, 4), top_scores.reshape(-1), labels.reshape(-1)
        return [{"boxes": flat_boxes[k], "scores": flat_scores[k], "labels": flat_labels[k]} for k in keep]

    @classmethod
    def from_torchvision(
        cls, path_or_state_dict: Union[str, Dict[str, Tensor]], num_classes: Optional[int] = None
    ) -> "FCOSFPN":
        """Build the model from a torchvision `fcos_resnet50_fpn` checkpoint file or state dict (frozen BN, stem and
        C2 frozen, as torchvision builds it with weights). With `num_classes` different from the file's, the
        class logits layer is freshly initialised (fine-tuning); everything else is loaded."""
        from fpn.convert import load_torchvision_fcos

        return load_torchvision_fcos(cls, path_or_state_dict, num_classes)
