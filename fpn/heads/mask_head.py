"""Mask R-CNN's mask branch (He, Gkioxari, Dollar, Girshick, ICCV 2017; Fig. 4, right): RoIAlign 14x14 from the
RoI's pyramid level, four 3x3 convs, a 2x2 stride-2 transposed conv, one 28x28 mask logit per class.

Training: the positive RoIs of the box branch's sample, each scored against the ground-truth mask of the instance
it matched, cropped to the RoI and resized to 28x28 (`fpn.ops.masks.mask_targets`), by per-pixel binary
cross-entropy on the logit of that instance's class only. Inference: the logit of the detected class, through a
sigmoid; the detector pastes it into the image (`fpn.ops.masks.paste_masks`).

Shape shorthand: R RoIs, C channels of the pooled maps, S pooled size (14), M = 2 S (28), K classes with
background at index 0.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import MaskHeadConfig, NORMS
from fpn.ops import MultiScaleRoIAlign
from fpn.ops.masks import mask_targets


class MaskHead(nn.Module):
    """The four 3x3 convs (256) + ReLU on the pooled RoIs, with BatchNorm between conv and ReLU when cfg.norm is
    "bn" (torchvision's v2 head). Layer i is `self[i]` = (conv, [bn,] relu), torchvision's module names."""

    def __init__(self, in_channels: int, cfg: MaskHeadConfig):
        super().__init__()
        if cfg.norm not in NORMS:
            raise ValueError(f"config.mask.norm must be one of {', '.join(NORMS)}; got {cfg.norm!r}")
        if cfg.num_convs < 1:
            raise ValueError(f"config.mask.num_convs must be >= 1; got {cfg.num_convs}")
        self.out_channels = cfg.conv_channels
        bn = cfg.norm == "bn"
        layers, channels = [], in_channels
        for _ in range(cfg.num_convs):
            conv = nn.Conv2d(channels, cfg.conv_channels, kernel_size=3, padding=cfg.dilation, dilation=cfg.dilation,
                             bias=not bn)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            block = [conv, nn.BatchNorm2d(cfg.conv_channels)] if bn else [conv]
            layers.append(nn.Sequential(*block, nn.ReLU(inplace=True)))
            channels = cfg.conv_channels
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (R, C, S, S) -> (R, conv_channels, S, S)

    def conv_norm_pairs(self) -> Iterator[Tuple[nn.Module, str, str]]:
        """Each conv -> BatchNorm as (block, "0", "1"), for folding at inference (fpn.backbones.norm.ConvNormPair)."""
        for block in self.layers:
            if isinstance(block[1], nn.BatchNorm2d):
                yield block, "0", "1"


class MaskPredictor(nn.Module):
    """2x2 stride-2 transposed conv + ReLU (S -> 2S), then a 1x1 conv to one mask logit per class."""

    def __init__(self, in_channels: int, hidden_channels: int, num_classes: int):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, hidden_channels, kernel_size=2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(hidden_channels, num_classes, kernel_size=1)
        for layer in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))  # (R, C, S, S) -> (R, K, 2S, 2S)


class MaskBranch(nn.Module):
    """Pool (RoIAlign S x S on the level of paper Eq. 1, as the box branch) -> MaskHead -> MaskPredictor.

    Args:
        cfg: the mask section of the config.
        featmap_names, strides: the pyramid levels RoIs are pooled from, finest first, as the box branch's.
        in_channels: C, their channels.
        num_classes: K, background included.
        canonical_scale, canonical_level: of the level assignment (the box branch's values).
    """

    def __init__(self, cfg: MaskHeadConfig, *, featmap_names: Sequence[str], strides: Sequence[int], in_channels: int,
                 num_classes: int, canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        self.pooler = MultiScaleRoIAlign(
            featmap_names=tuple(featmap_names), strides=tuple(strides), output_size=cfg.pooler_resolution,
            sampling_ratio=cfg.sampling_ratio, canonical_scale=canonical_scale, canonical_level=canonical_level,
        )
        self.head = MaskHead(in_channels, cfg)
        self.predictor = MaskPredictor(self.head.out_channels, cfg.conv_channels, num_classes)

    def forward(self, features: Dict[str, Tensor], boxes: List[Tensor]) -> Tensor:
        """Mask logits (R, K, M, M) of the boxes (per image (Ri, 4) xyxy, ImageBatch frame), float32."""
        return self.predictor(self.head(self.pooler(features, boxes))).float()

    def loss(self, features: Dict[str, Tensor], rois: List[Tensor], labels: List[Tensor], matched: List[Tensor],
             targets: List[Dict[str, Tensor]], image_sizes: List[Tuple[int, int]]) -> Tensor:
        """The mask loss over the positive RoIs of the box branch's sample.

        Args:
            rois: per image the sampled RoIs (Ri, 4); labels (Ri,) their classes (0 background, the negatives);
                matched (Ri,) the index of the instance each RoI matched in that image's targets.
            targets: per image, `masks` (Gi, H0, W0) uint8 at the image's original size.
            image_sizes: per image, the resized size (the frame of the RoIs).

        Returns:
            BCE with logits of each positive's own-class logit against its 28x28 target, averaged over every
            pixel of every positive; 0 (attached to the graph) without positives.
        """
        positive = [torch.where(label > 0)[0] for label in labels]  # one host sync per image (training only)
        boxes = [roi[keep] for roi, keep in zip(rois, positive)]
        logits = self(features, boxes)  # (P, K, M, M)
        resolution = logits.shape[-1]
        with torch.autocast(logits.device.type, enabled=False):  # the targets in float32 under bf16 / fp16 training
            mask_target = torch.cat([
                mask_targets(target["masks"], size, box.detach().float(), match[keep], resolution)
                for target, size, box, match, keep in zip(targets, image_sizes, boxes, matched, positive)
            ])  # (P, M, M)
        if mask_target.numel() == 0:
            return logits.sum() * 0
        label = torch.cat([label[keep] for label, keep in zip(labels, positive)])  # (P,)
        own = logits[torch.arange(label.shape[0], device=label.device), label]  # (P, M, M)
        return F.binary_cross_entropy_with_logits(own, mask_target.to(own.dtype))

    def probabilities(self, features: Dict[str, Tensor], detections: List[Dict[str, Tensor]]) -> List[Tensor]:
        """Per image the (Di, 1, M, M) mask probability of each detection's class, for its `boxes` and
        `labels` (ImageBatch frame). No host sync."""
        logits = self(features, [d["boxes"] for d in detections])  # (D, K, M, M)
        labels = torch.cat([d["labels"] for d in detections])  # (D,)
        own = logits[torch.arange(labels.shape[0], device=labels.device), labels][:, None].sigmoid()  # (D, 1, M, M)
        return list(own.split([d["labels"].shape[0] for d in detections]))
