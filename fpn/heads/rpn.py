"""Region Proposal Network over the pyramid (Ren et al. 2015; FPN paper Sec. 4.1).

One head shared by all levels: a 3x3 conv + ReLU (two in torchvision's *_v2 models), then per anchor an objectness
logit and 4 box deltas. Each level has anchors of one size (32..512 on P2..P6) and 3 aspect ratios; anchors crossing
the image border are kept (the FPN paper does not drop them, unlike the original Faster R-CNN training). The paper's
single-map models (C4, C5 or P2 alone, Sec. 5.1.1) run it on one map carrying every size (`sizes_per_level`).

Shape shorthand: N images, L levels, A anchors per location, Hl/Wl level size, M = sum_l Hl*Wl*A anchors per image.
Boxes are (x1, y1, x2, y2) pixels of the resized image (the ImageBatch frame).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import AnchorConfig, RPNConfig
from fpn.ops import (
    AnchorGenerator,
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    box_iou,
    clip_boxes_to_image,
)
from fpn.ops.boxes import large_enough
from fpn.ops.nms_per_image import nms_per_image
from fpn.spec import ImageBatch


class RPNHead(nn.Module):
    """3x3 conv + ReLU shared over levels (`conv_depth` of them, torchvision's *_v2 models have 2), then 1x1 convs
    for A objectness logits and A*4 deltas.

    Module names: `conv` is the 3x3 conv (key `conv.weight`) when conv_depth is 1, else an nn.ModuleList of them
    (`conv.{j}.weight`); no norm (as torchvision's RPNHead, whose convs are built with norm_layer=None).
    """

    def __init__(self, in_channels: int, num_anchors: int, *, conv_depth: int = 1):
        super().__init__()
        if conv_depth < 1:
            raise ValueError(f"RPNHead: conv_depth (config.rpn.conv_depth) must be >= 1, got {conv_depth}")
        self.num_anchors = num_anchors  # A, what a detector checks against its anchors per location
        convs = [nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1) for _ in range(conv_depth)]
        self.conv = convs[0] if conv_depth == 1 else nn.ModuleList(convs)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (*convs, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        convs = self.conv if isinstance(self.conv, nn.ModuleList) else [self.conv]
        logits, deltas = [], []
        for x in features:
            t = x
            for conv in convs:
                t = F.relu(conv(t))  # (N, C, Hl, Wl)
            logits.append(self.cls_logits(t))  # (N, A, Hl, Wl)
            deltas.append(self.bbox_pred(t))  # (N, A*4, Hl, Wl)
        return logits, deltas


def flatten_predictions(logits: List[Tensor], deltas: List[Tensor]) -> Tuple[Tensor, Tensor]:
    """Per-level maps -> (N, M) logits and (N, M, 4) deltas, ordered level, y, x, anchor (as the anchors are)."""
    flat_logits, flat_deltas = [], []
    for logit, delta in zip(logits, deltas):
        n, a, h, w = logit.shape
        flat_logits.append(logit.permute(0, 2, 3, 1).reshape(n, -1))  # (N, A, Hl, Wl) -> (N, Hl*Wl*A)
        delta = delta.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2)  # (N, A*4, Hl, Wl) -> (N, Hl, Wl, A, 4)
        flat_deltas.append(delta.reshape(n, -1, 4))
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    """Anchors, head, proposal selection and (in training) the RPN losses.

    Args:
        in_channels: channels of every feature map it runs on.
        cfg: the RPN section of the config.
        anchor_cfg: anchor sizes (one per map) and aspect ratios (at every map).
        sizes_per_level: keyword-only; one tuple of sizes per map instead of anchor_cfg.sizes, e.g.
            ((32, 64, 128, 256, 512),) for a single map carrying every size (the original single-scale RPN, the
            FPN paper's baselines, Sec. 5.1.1).
    """

    def __init__(
        self,
        in_channels: int,
        cfg: RPNConfig,
        anchor_cfg: AnchorConfig,
        *,
        sizes_per_level: Optional[Tuple[Tuple[int, ...], ...]] = None,
    ):
        super().__init__()
        self.cfg = cfg
        sizes = anchor_cfg.sizes if sizes_per_level is None else sizes_per_level
        self.anchor_generator = AnchorGenerator(sizes, anchor_cfg.aspect_ratios)
        anchors_per_level = self.anchor_generator.num_anchors_per_location()  # A_l; one head serves every level
        if len(set(anchors_per_level)) != 1:
            raise ValueError(f"the shared RPN head needs as many anchors at every level, got {anchors_per_level}")
        self.head = RPNHead(in_channels, anchors_per_level[0], conv_depth=cfg.conv_depth)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(cfg.batch_size_per_image, cfg.positive_fraction)

    def forward(
        self,
        images: ImageBatch,
        features: Dict[str, Tensor],
        targets: Optional[List[Dict[str, Tensor]]] = None,
        *,
        with_scores: bool = False,
    ) -> Tuple[Union[List[Tensor], List[Dict[str, Tensor]]], Dict[str, Tensor]]:
        """Propose regions on the feature maps (every map of `features`, in order).

        Returns:
            per image the proposals (Pi, 4) float xyxy in the ImageBatch frame, sorted by decreasing objectness
            (torchvision's RPN contract), or with `with_scores` per image {"boxes": (Pi, 4), "scores": (Pi,)
            objectness probability}; and the losses (training; {} otherwise).
        """
        maps = list(features.values())
        logits, deltas = self.head(maps)
        # Anchors, decoding and losses stay in float32 even when the convs run in bf16/fp16 under autocast.
        anchors = self.anchor_generator.anchors_for(
            tuple(images.tensor.shape[-2:]), [tuple(m.shape[-2:]) for m in maps], maps[0].device, torch.float32
        )  # (M, 4)
        num_anchors_per_level = [logit[0].numel() for logit in logits]
        pred_logits, pred_deltas = flatten_predictions(logits, deltas)  # (N, M), (N, M, 4)
        pred_logits, pred_deltas = pred_logits.float(), pred_deltas.float()

        n = pred_logits.shape[0]
        # Proposals are not differentiated through (Faster R-CNN's approximate joint training).
        proposals = self.box_coder.decode_single(pred_deltas.detach().reshape(-1, 4), anchors.repeat(n, 1))
        proposals = proposals.view(n, -1, 4)  # (N, M, 4)
        boxes, scores = self.select_proposals(
            proposals, pred_logits.detach(), images.image_sizes, num_anchors_per_level
        )

        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            gt_labels, gt_boxes = self.assign_targets(anchors, targets)
            regression_targets = [self.box_coder.encode_single(g, anchors) for g in gt_boxes]
            losses = self.losses(pred_logits, pred_deltas, gt_labels, regression_targets)
        if with_scores:
            return [{"boxes": b, "scores": p} for b, p in zip(boxes, scores)], losses
        return boxes, losses

    def _top_n_per_level(self, logits: Tensor, num_anchors_per_level: List[int]) -> Tensor:
        top_n = self.cfg.pre_nms_top_n_train if self.training else self.cfg.pre_nms_top_n_test
        indices, offset = [], 0
        for level_logits in logits.split(num_anchors_per_level, dim=1):
            k = torch.sym_min(top_n, level_logits.shape[1])  # sym_min: the level's size may be symbolic (export)
            indices.append(level_logits.topk(k, dim=1).indices + offset)
            offset += level_logits.shape[1]
        return torch.cat(indices, dim=1)  # (N, sum_l k_l)

    def select_proposals(
        self,
        proposals: Tensor,
        logits: Tensor,
        image_sizes: List[Tuple[int, int]],
        num_anchors_per_level: List[int],
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Top-k per level, clip, drop tiny and low-scoring boxes, NMS per level, keep the post-NMS top-k.

        Returns per image the kept boxes (Pi, 4) and their objectness probabilities (Pi,), best first.

        All images at once: host syncs are those of `nms_per_image` (two and one NMS call), not per image.
        """
        n, device = proposals.shape[0], proposals.device
        levels = torch.cat(
            [torch.full((k,), i, dtype=torch.int64, device=device) for i, k in enumerate(num_anchors_per_level)]
        )
        top_idx = self._top_n_per_level(logits, num_anchors_per_level)  # (N, T)
        rows = torch.arange(n, device=device)[:, None]
        scores = torch.sigmoid(logits[rows, top_idx]).reshape(-1)  # (N*T,)
        boxes = torch.stack([clip_boxes_to_image(b, size) for b, size in zip(proposals[rows, top_idx], image_sizes)])
        boxes = boxes.reshape(-1, 4)  # (N*T, 4) image by image
        valid = large_enough(boxes, self.cfg.min_size) & (scores >= self.cfg.score_thresh)
        post_n = self.cfg.post_nms_top_n_train if self.training else self.cfg.post_nms_top_n_test
        keep = nms_per_image(
            boxes, scores, levels[top_idx].reshape(-1), rows.expand_as(top_idx).reshape(-1), valid,
            num_images=n, num_classes=len(num_anchors_per_level), iou_threshold=self.cfg.nms_thresh, top_k=post_n,
        )
        return [boxes.index_select(0, k) for k in keep], [scores.index_select(0, k) for k in keep]

    @torch.no_grad()
    def assign_targets(self, anchors: Tensor, targets: List[Dict[str, Tensor]]) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image: anchor labels (M,) float (1 object, 0 background, -1 ignored) and matched gt boxes (M, 4)."""
        labels, matched = [], []
        for target in targets:
            gt_boxes = target["boxes"]
            if gt_boxes.numel() == 0:  # an image without objects: every anchor is background
                labels.append(torch.zeros(anchors.shape[0], dtype=torch.float32, device=anchors.device))
                matched.append(torch.zeros_like(anchors, dtype=torch.float32))
                continue
            idx = self.matcher(box_iou(gt_boxes, anchors))  # (M,)
            # 1 matched, 0 below the low threshold, -1 between the thresholds (ignored)
            label = torch.where(idx == Matcher.BETWEEN_THRESHOLDS, -1.0, (idx >= 0).to(torch.float32))
            labels.append(label)
            matched.append(gt_boxes[idx.clamp(min=0)])
        return labels, matched

    def losses(
        self, logits: Tensor, deltas: Tensor, labels: List[Tensor], regression_targets: List[Tensor]
    ) -> Dict[str, Tensor]:
        """Binary cross-entropy over the sampled anchors; smooth-L1 (beta 1/9) over the positive ones, both
        normalised by the number of sampled anchors.

        The losses are sums over every anchor masked to the sampled ones (same value as gathering the sampled
        anchors, up to float rounding of the sum), so that no host sync sizes a gather.
        """
        pos_masks, neg_masks = self.sampler(labels)
        positive = torch.cat(pos_masks)  # (N*M,)
        sampled = positive | torch.cat(neg_masks)
        num_sampled = sampled.sum()
        labels_all = torch.cat(labels).clamp(min=0)  # the ignored (-1) anchors are never sampled
        objectness = F.binary_cross_entropy_with_logits(logits.reshape(-1), labels_all, reduction="none")
        objectness = torch.where(sampled, objectness, 0.0).sum() / num_sampled
        # targets of non-positive anchors may be infinite (an image without boxes): zeroed before the loss
        targets = torch.where(positive[:, None], torch.cat(regression_targets), 0.0)
        box_loss = F.smooth_l1_loss(deltas.reshape(-1, 4), targets, beta=1 / 9, reduction="none")
        box_loss = torch.where(positive[:, None], box_loss, 0.0).sum() / num_sampled
        return {"loss_objectness": objectness, "loss_rpn_box_reg": box_loss}
