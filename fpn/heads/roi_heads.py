"""RoI heads: sample RoIs, pool them from the pyramid level their size calls for, classify and refine boxes.

The box head is given (the FPN's 2-fc head, or the conv5 stage of the single-scale C4 baseline); so are the maps
pooled from, P2..P5 or one map (the paper's single-scale rows of Tables 2-3).

Shape shorthand: N images, Pi proposals of image i, R = sum of RoIs, K classes (background = 0).
Boxes are (x1, y1, x2, y2) pixels of the resized image (the ImageBatch frame).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import RoIHeadsConfig
from fpn.heads.box_head import BoxPredictor
from fpn.ops import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    MultiScaleRoIAlign,
    box_iou,
    clip_boxes_to_image,
)
from fpn.ops.boxes import large_enough
from fpn.ops.nms_per_image import nms_per_image


class RoIHeads(nn.Module):
    """Pool (RoIAlign; over P2..P5 each RoI from the level of paper Eq. 1) -> box head -> BoxPredictor.

    Args (keyword-only but `cfg`):
        cfg: the RoI-head section of the config (pooling, sampling, box coding, post-processing).
        featmap_names: the maps RoIs are pooled from, finest first: "p2".."p5", or a single map.
        strides: the stride of each of those maps in input pixels.
        box_head: (R, C, S, S) pooled features -> (R, box_features): TwoMLPHead (the FPN paper's 2-fc head,
            Sec. 4.2) or Res5Head (the conv5 stage of the C4 baseline).
        box_features: the width of box_head's output.
        num_classes: K, background included.
        pooler_resolution: S, the RoIAlign output size; cfg.pooler_resolution when None.
    """

    def __init__(
        self,
        cfg: RoIHeadsConfig,
        *,
        featmap_names: Sequence[str],
        strides: Sequence[int],
        box_head: nn.Module,
        box_features: int,
        num_classes: int,
        pooler_resolution: Optional[int] = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.pooler = MultiScaleRoIAlign(
            featmap_names=tuple(featmap_names),
            strides=tuple(strides),
            output_size=cfg.pooler_resolution if pooler_resolution is None else pooler_resolution,
            sampling_ratio=cfg.sampling_ratio,
            aligned=cfg.aligned,
            canonical_scale=cfg.canonical_scale,
            canonical_level=cfg.canonical_level,
        )
        self.box_head = box_head
        self.predictor = BoxPredictor(box_features, num_classes)
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
            proposals, labels, regression_targets, _ = self.sample_rois(proposals, targets)
        class_logits, box_deltas = self.classify(features, proposals)
        if self.training:
            return [], self.losses(class_logits, box_deltas, labels, regression_targets)
        return self.detect(class_logits, box_deltas, proposals, image_sizes), {}

    def classify(self, features: Dict[str, Tensor], rois: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Class logits (R, K) and box deltas (R, K*4), float32, of the RoIs (per image (Ri, 4))."""
        pooled = self.pooler(features, rois)  # (R, C, S, S)
        class_logits, box_deltas = self.predictor(self.box_head(pooled))  # (R, K), (R, K*4)
        return class_logits.float(), box_deltas.float()

    @torch.no_grad()
    def sample_rois(
        self, proposals: List[Tensor], targets: List[Dict[str, Tensor]]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor]]:
        """Add the gt boxes to the proposals, match (IoU >= 0.5 foreground), sample 512 RoIs per image (25%
        foreground). Returns per image the sampled RoIs (Ri, 4), their labels (Ri,) int64, regression targets
        (Ri, 4) and the index (Ri,) int64 of the gt box each matched (0 where none: read it for the foreground only).

        One host sync for the batch: the number of sampled RoIs of every image, read together."""
        proposals = [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]
        labels, matched, indices = zip(*[self._match(p, t["boxes"].to(p.dtype), t["labels"])
                                         for p, t in zip(proposals, targets)])
        pos_masks, neg_masks = self.sampler(list(labels))
        sampled = [pos | neg for pos, neg in zip(pos_masks, neg_masks)]
        counts = torch.stack([mask.sum() for mask in sampled]).tolist()  # the host sync
        rois, roi_labels, regression_targets, roi_matches = [], [], [], []
        for props, label, gt, index, mask, count in zip(proposals, labels, matched, indices, sampled, counts):
            keep = torch.nonzero_static(mask, size=count).squeeze(1)  # (Ri,) increasing, as torch.where(mask)
            rois.append(props.index_select(0, keep))
            roi_labels.append(label.index_select(0, keep))
            regression_targets.append(self.box_coder.encode_single(gt.index_select(0, keep), rois[-1]))
            roi_matches.append(index.index_select(0, keep))
        return rois, roi_labels, regression_targets, roi_matches

    def _match(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Per proposal (Pi, 4): its label (Pi,) int64 (the matched gt's class, 0 background, -1 ignored), the
        matched gt box (Pi, 4) (any box where there is no match) and that box's index (Pi,) (0 where none)."""
        if gt_boxes.numel() == 0:  # no objects: every RoI is background
            zeros = torch.zeros(proposals.shape[0], dtype=torch.int64, device=proposals.device)
            return zeros, proposals, zeros
        idx = self.matcher(box_iou(gt_boxes, proposals))  # (Pi,)
        index = idx.clamp(min=0)
        label = gt_labels[index].to(torch.int64)
        label = torch.where(idx == Matcher.BELOW_LOW_THRESHOLD, 0, label)
        label = torch.where(idx == Matcher.BETWEEN_THRESHOLDS, -1, label)
        return label, gt_boxes[index], index

    def losses(
        self, class_logits: Tensor, box_deltas: Tensor, labels: List[Tensor], regression_targets: List[Tensor]
    ) -> Dict[str, Tensor]:
        """Cross-entropy over all sampled RoIs; smooth-L1 (beta 1/9) on the deltas of each foreground RoI's own
        class, normalised by the number of sampled RoIs."""
        labels_all = torch.cat(labels)
        targets_all = torch.cat(regression_targets)
        loss_cls = F.cross_entropy(class_logits, labels_all)
        # every RoI's deltas of its own class, masked to the foreground ones (no host sync to gather them)
        foreground = (labels_all > 0)[:, None]  # (R, 1)
        deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)  # (R, K*4) -> (R, K, 4)
        deltas = deltas.gather(1, labels_all[:, None, None].expand(-1, 1, 4)).squeeze(1)  # (R, 4)
        loss_box = F.smooth_l1_loss(deltas, torch.where(foreground, targets_all, 0.0), beta=1 / 9, reduction="none")
        loss_box = torch.where(foreground, loss_box, 0.0).sum() / labels_all.numel()
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

    def detect(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        proposals: List[Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        """Softmax, decode per class, clip, drop background and scores <= score_thresh, per-class NMS, top-k."""
        num_images, num_classes = len(proposals), class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_deltas, proposals)  # (R, K, 4)
        pred_boxes = torch.cat([clip_boxes_to_image(b, size) for b, size in zip(pred_boxes.split(counts), image_sizes)])
        pred_scores = F.softmax(class_logits, dim=-1)  # (R, K)
        # Every (RoI, foreground class) pair is a candidate detection: (R*(K-1),) image by image.
        device = class_logits.device
        labels = torch.arange(num_classes, device=device).expand_as(pred_scores)[:, 1:].reshape(-1)
        images = torch.cat([torch.full((c,), i, dtype=torch.int64, device=device) for i, c in enumerate(counts)])
        images = images[:, None].expand(-1, num_classes - 1).reshape(-1)
        boxes, scores = pred_boxes[:, 1:].reshape(-1, 4), pred_scores[:, 1:].reshape(-1)
        valid = (scores > self.cfg.score_thresh) & large_enough(boxes, min_size=1e-2)
        keep = nms_per_image(boxes, scores, labels, images, valid, num_images, num_classes, self.cfg.nms_thresh,
                             top_k=self.cfg.detections_per_img)
        return [{"boxes": boxes[k], "scores": scores[k], "labels": labels[k]} for k in keep]
