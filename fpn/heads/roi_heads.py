"""RoI heads: sample RoIs, pool them from the pyramid level their size calls for, classify and refine boxes.

Shape shorthand: N images, Pi proposals of image i, R = sum of RoIs, K classes (background = 0).
Boxes are (x1, y1, x2, y2) pixels of the resized image (the ImageBatch frame).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import RoIHeadsConfig
from fpn.heads.box_head import BoxPredictor, TwoMLPHead
from fpn.ops import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    MultiScaleRoIAlign,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)


class RoIHeads(nn.Module):
    """Pool (RoIAlign over P2..P5, paper Eq. 1 level assignment) -> TwoMLPHead -> BoxPredictor."""

    def __init__(
        self,
        in_channels: int,
        featmap_names: Sequence[str],
        strides: Sequence[int],
        num_classes: int,
        cfg: RoIHeadsConfig,
    ):
        super().__init__()
        self.cfg = cfg
        self.pooler = MultiScaleRoIAlign(
            featmap_names=tuple(featmap_names),
            strides=tuple(strides),
            output_size=cfg.pooler_resolution,
            sampling_ratio=cfg.sampling_ratio,
            aligned=cfg.aligned,
            canonical_scale=cfg.canonical_scale,
            canonical_level=cfg.canonical_level,
        )
        pooled = in_channels * cfg.pooler_resolution**2
        self.box_head = TwoMLPHead(pooled, cfg.representation_size)
        self.predictor = BoxPredictor(cfg.representation_size, num_classes)
        self.box_coder = BoxCoder(tuple(cfg.bbox_reg_weights))
        self.matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(cfg.batch_size_per_image, cfg.positive_fraction)

    def forward(
        self,
        features: Dict[str, Tensor],
        proposals: List[Tensor],
        image_sizes: List[Tuple[int, int]],
        targets: List[Dict[str, Tensor]] = None,
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        """Training: losses over sampled RoIs (no detections). Inference: per-image detections, no losses."""
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            proposals, labels, regression_targets = self.sample_rois(proposals, targets)
        pooled = self.pooler(features, proposals)  # (R, C, S, S)
        class_logits, box_deltas = self.predictor(self.box_head(pooled))  # (R, K), (R, K*4)
        class_logits, box_deltas = class_logits.float(), box_deltas.float()
        if self.training:
            return [], self.losses(class_logits, box_deltas, labels, regression_targets)
        return self.detect(class_logits, box_deltas, proposals, image_sizes), {}

    @torch.no_grad()
    def sample_rois(
        self, proposals: List[Tensor], targets: List[Dict[str, Tensor]]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Add the gt boxes to the proposals, match (IoU >= 0.5 foreground), sample 512 RoIs per image (25%
        foreground). Returns per image the sampled RoIs (Ri, 4), their labels (Ri,) int64 and regression targets."""
        rois, labels, regression_targets = [], [], []
        for props, target in zip(proposals, targets):
            gt_boxes, gt_labels = target["boxes"].to(props.dtype), target["labels"]
            props = torch.cat([props, gt_boxes])
            if gt_boxes.numel() == 0:  # no objects: every RoI is background
                label = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                matched = props
            else:
                idx = self.matcher(box_iou(gt_boxes, props))  # (Pi,)
                label = gt_labels[idx.clamp(min=0)].to(torch.int64)
                label[idx == Matcher.BELOW_LOW_THRESHOLD] = 0
                label[idx == Matcher.BETWEEN_THRESHOLDS] = -1
                matched = gt_boxes[idx.clamp(min=0)]
            pos, neg = self.sampler([label])
            keep = torch.where(pos[0] | neg[0])[0]
            rois.append(props[keep])
            labels.append(label[keep])
            regression_targets.append(self.box_coder.encode_single(matched[keep], props[keep]))
        return rois, labels, regression_targets

    def losses(
        self, class_logits: Tensor, box_deltas: Tensor, labels: List[Tensor], regression_targets: List[Tensor]
    ) -> Dict[str, Tensor]:
        """Cross-entropy over all sampled RoIs; smooth-L1 (beta 1/9) on the deltas of each foreground RoI's own
        class, normalised by the number of sampled RoIs."""
        labels_all = torch.cat(labels)
        targets_all = torch.cat(regression_targets)
        loss_cls = F.cross_entropy(class_logits, labels_all)
        pos = torch.where(labels_all > 0)[0]
        deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)  # (R, K*4) -> (R, K, 4)
        loss_box = F.smooth_l1_loss(
            deltas[pos, labels_all[pos]], targets_all[pos], beta=1 / 9, reduction="sum"
        ) / labels_all.numel()
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

    def detect(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        proposals: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        """Softmax, decode per class, clip, drop background and scores <= score_thresh, per-class NMS, top-k."""
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_deltas, proposals)  # (R, K, 4)
        pred_scores = F.softmax(class_logits, dim=-1)  # (R, K)
        results = []
        for boxes, scores, size in zip(pred_boxes.split(counts), pred_scores.split(counts), image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
            # Every (RoI, foreground class) pair is a candidate detection.
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.cfg.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.cfg.nms_thresh)[: self.cfg.detections_per_img]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
