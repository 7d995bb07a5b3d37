"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019) on the feature pyramid:
one stage, no anchor boxes; every location of P3..P7 predicts class scores, the distances to the four sides of
its object and a centerness that down-weights locations far from the object's centre.

    normalise/resize/pad -> backbone (C3..C5) -> FPN (P3..P5, P6 and P7 by stride-2 convs from P5)
        -> head (classes, distances, centerness; losses, or per level top-k and per-class NMS) -> input pixels

The head (fpn/heads/fcos_head.py) owns the locations' reference boxes, the box decoding, the losses
(fpn/heads/fcos_targets.py) and the detections, as the RPN and RoI heads of `FasterRCNNFPN` own theirs.

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
from fpn.necks import FPN, LastLevelP6P7
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
        d = cfg.fpn.out_channels
        self.neck = FPN(in_specs, d, extra_levels=LastLevelP6P7(d))  # P3..P5, then P6 and P7 from P5
        strides = [spec.stride for spec in self.neck.out_specs.values()]  # 8, 16, 32, 64, 128
        self.head = FCOSHead(d, num_classes, strides, cfg.head)
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_batch(self, batch: ImageBatch, targets: Optional[List[Dict[str, Tensor]]] = None):
        """Losses (training) or per-image detections in the ImageBatch frame (eval); see `Detector`."""
        features = self.features(batch)  # {"p3": (N, d, Hp/8, Wp/8), ..., "p7": (N, d, Hp/128, Wp/128)}
        detections, losses = self.head(batch, features, targets)
        return losses if self.training else detections

    @classmethod
    def from_torchvision(
        cls, path_or_state_dict: Union[str, Dict[str, Tensor]], num_classes: Optional[int] = None
    ) -> "FCOSFPN":
        """Build the model from a torchvision `fcos_resnet50_fpn` checkpoint file or state dict (frozen BN, stem and
        C2 frozen, as torchvision builds it with weights). With `num_classes` different from the file's, the
        class logits layer is freshly initialised (fine-tuning); everything else is loaded."""
        from fpn.convert import load_torchvision_fcos

        return load_torchvision_fcos(cls, path_or_state_dict, num_classes)
