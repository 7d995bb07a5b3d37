"""FCOS's head (Tian et al., ICCV 2019) on the pyramid P3..P7: its convs, each location's reference box, the box
decoding, the losses (fpn/heads/fcos_targets.py) and the detections, as the RPN and RoI heads own theirs.

The convs are shared by every level: two towers of `num_convs` x (3x3 conv, GroupNorm, ReLU); the classification
tower ends in one logit per class, the regression tower in the four distances (l, t, r, b) to the box sides (ReLU:
distances are not negative) and the centerness logit (on the regression tower, as torchvision and the FCOS authors'
later version place it). torchvision's initialisation: convs normal(std 0.01), biases 0, class biases
-log((1 - prior) / prior). Each location's reference box ("anchor", torchvision's FCOS) has side = its level's
stride, centred on the location; distances are in units of that side (`DistanceBoxCoder`).

Shape shorthand: N images, C classes, d channels, L = sum over levels of H_l * W_l locations, ordered level by
level, row-major within a level (torchvision's order, which the anchors follow). Boxes are (x1, y1, x2, y2)
pixels of the padded batch (the ImageBatch frame).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from fpn.config import FCOSHeadConfig
from fpn.heads.fcos_targets import fcos_losses
from fpn.ops.anchors import AnchorGenerator
from fpn.ops.box_coder import DistanceBoxCoder
from fpn.ops.group_norm import GroupNorm
from fpn.ops.boxes import clip_boxes_to_image
from fpn.ops.nms_per_image import nms_per_image
from fpn.spec import ImageBatch


def _tower(channels: int, num_convs: int, gn_groups: int) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=1), GroupNorm(gn_groups, channels),
                   nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSClassificationHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, num_convs: int, gn_groups: int, prior_probability: float):
        super().__init__()
        self.num_classes = num_classes
        self.conv = _tower(channels, num_convs, gn_groups)
        self.cls_logits = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)
        for conv in [*self.conv.children(), self.cls_logits]:
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: List[Tensor]) -> Tensor:
        """Per level (N, d, H, W) -> (N, L, C) class logits."""
        return torch.cat([_flatten(self.cls_logits(self.conv(x))) for x in features], dim=1)


class FCOSRegressionHead(nn.Module):
    def __init__(self, channels: int, num_convs: int, gn_groups: int):
        super().__init__()
        self.conv = _tower(channels, num_convs, gn_groups)
        self.bbox_reg = nn.Conv2d(channels, 4, kernel_size=3, padding=1)
        self.bbox_ctrness = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        for conv in [*self.conv.children(), self.bbox_reg, self.bbox_ctrness]:
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)

    def forward(self, features: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Per level (N, d, H, W) -> (N, L, 4) normalised distances (l, t, r, b) >= 0, (N, L) centerness logits."""
        distances, centerness = [], []
        for x in features:
            tower = self.conv(x)
            distances.append(_flatten(torch.relu(self.bbox_reg(tower))))
            centerness.append(_flatten(self.bbox_ctrness(tower))[..., 0])
        return torch.cat(distances, dim=1), torch.cat(centerness, dim=1)


class FCOSHead(nn.Module):
    """FCOS's stage after the pyramid: convs, reference boxes, losses (training) or detections (eval).

    Args:
        in_channels: d, the channels of every pyramid map.
        num_classes: C, background (class 0) included: one logit per class, as torchvision's FCOS.
        strides: the stride of each map it runs on (8, 16, 32, 64, 128 for P3..P7): its reference boxes' sides.
        cfg: the head section of the config (towers, losses, inference thresholds).

    Attributes (the state-dict names of torchvision's FCOS head): `classification_head`, `regression_head`.
    """

    def __init__(self, in_channels: int, num_classes: int, strides: Sequence[int], cfg: FCOSHeadConfig):
        super().__init__()
        if in_channels % cfg.gn_groups:
            raise ValueError(
                f"FCOS head: GroupNorm groups {cfg.gn_groups} must divide the {in_channels} pyramid channels")
        self.cfg = cfg
        self.classification_head = FCOSClassificationHead(in_channels, num_classes, cfg.num_convs, cfg.gn_groups,
                                                          cfg.prior_probability)
        self.regression_head = FCOSRegressionHead(in_channels, cfg.num_convs, cfg.gn_groups)
        # one reference box per location: side = the level's stride, aspect ratio 1 (no parameters, no buffers)
        self.anchor_generator = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        self.box_coder = DistanceBoxCoder()

    def forward(
        self, images: ImageBatch, features: Dict[str, Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
    ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        """Run the head on every map of `features` (in order, P3..P7).

        Args:
            images: the padded batch (its size places the reference boxes; `image_sizes` clip the detections).
            features: {"p3": (N, d, H3, W3), ..., "p7": (N, d, H7, W7)}.
            targets: training: per image `boxes` (M, 4) xyxy in the ImageBatch frame, `labels` (M,) int64.
        Returns:
            training: ([], {"classification", "bbox_regression", "bbox_ctrness"} scalar losses);
            eval: (per image {"boxes": (D, 4) xyxy ImageBatch frame, "scores": (D,), "labels": (D,) int64}, {}).
        """
        maps = list(features.values())
        class_logits, distances, centerness = self.predict(maps)  # (N, L, C), (N, L, 4), (N, L)
        # locations, decoding, losses and NMS in float32, also when the convs run in bf16/fp16 under autocast
        class_logits, distances, centerness = class_logits.float(), distances.float(), centerness.float()
        anchors = self.anchor_generator.anchors_for(
            tuple(images.tensor.shape[-2:]), [tuple(m.shape[-2:]) for m in maps], maps[0].device, torch.float32
        )  # (L, 4) xyxy, ImageBatch frame: the same for every image
        num_per_level = [m.shape[-2] * m.shape[-1] for m in maps]
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return [], self.losses(class_logits, distances, centerness, anchors, targets, num_per_level)
        return self.detect(class_logits, distances, centerness, anchors, num_per_level, images.image_sizes), {}

    def predict(self, maps: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """The raw predictions: per level (N, d, H, W) -> class logits (N, L, C), normalised distances (l, t, r, b)
        (N, L, 4) >= 0, centerness logits (N, L)."""
        return (self.classification_head(maps), *self.regression_head(maps))

    def losses(self, class_logits: Tensor, distances: Tensor, centerness: Tensor, anchors: Tensor,
               targets: List[Dict[str, Tensor]], num_per_level: List[int]) -> Dict[str, Tensor]:
        """The three FCOS losses of `fcos_losses` (fpn/heads/fcos_targets.py) with this head's settings."""
        cfg = self.cfg
        return fcos_losses(class_logits, distances, centerness, anchors, targets, num_per_level,
                           cfg.center_sampling_radius, cfg.focal_alpha, cfg.focal_gamma)

    def detect(self, class_logits: Tensor, distances: Tensor, centerness: Tensor, anchors: Tensor,
               num_per_level: List[int], image_sizes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        """Per level the best `topk_candidates` (class, location) pairs of a real class (label >= 1) scoring above
        `score_thresh`, decoded and clipped; then NMS within each class of each image and the best
        `detections_per_img`. The background (label 0) is never a candidate. All images at once: the host syncs
        are `nms_per_image`'s.

        Args:
            class_logits: (N, L, C); distances: (N, L, 4) normalised (l, t, r, b); centerness: (N, L) logits.
            anchors: (L, 4) the locations' reference boxes, xyxy in the ImageBatch frame.
            num_per_level: locations per level, summing to L; image_sizes: per image (h, w) to clip to.
        Returns:
            per image {"boxes": (D, 4) xyxy, "scores": (D,) sqrt(class probability x centerness), "labels": (D,)
            int64 in 1..C-1}, by decreasing score.
        """
        cfg = self.cfg
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
            decoded = self.box_coder.decode(distances[rows, location], anchors[location])  # (N, k, 4) xyxy
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


def _flatten(x: Tensor) -> Tensor:
    """(N, K, H, W) -> (N, H * W, K), row-major locations."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
