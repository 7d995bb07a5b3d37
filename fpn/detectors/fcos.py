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
from torch import Tensor, nn

from fpn.backbones import build_backbone
from fpn.config import FCOSConfig
from fpn.detectors.base import Detector, check_backbone, check_neck, common_channels
from fpn.heads.fcos_head import FCOSHead
from fpn.necks import FPN, LastLevelP6P7
from fpn.spec import FeatureSpec
from fpn.detectors.transform import ImageBatch

PYRAMID_INPUTS = {"c3": 8, "c4": 16, "c5": 32}  # the maps and strides FCOS's pyramid P3..P7 is built on


class FCOSFPN(Detector):
    """FCOS + FPN with torchvision's detection I/O contract (the same as `FasterRCNNFPN`'s).

    Args:
        num_classes: number of classes INCLUDING the background: one logit per class, as torchvision's FCOS
            has (91 for its COCO model). Label 0 is the background and is never returned, whatever the weights
            (torchvision's FCOS can return it; an untrained model's class-0 logit may be the largest).
        config: an `FCOSConfig`; the default is torchvision's `fcos_resnet50_fpn`. The model keeps
            `config.resolved()` as `model.config`.

    Keyword-only, each a module you wrote used in place of the one the config builds (None: built as configured;
    checked at construction, a ValueError naming what does not fit):
        backbone: (N, 3, H, W) -> {name: map} with `out_specs` {name: FeatureSpec(channels, stride)} (see
            ResNet); the configured neck reads "c3", "c4", "c5" at strides 8, 16, 32. Its weights are yours to
            load (config.backbone is then unused and its `weights` must be None).
        neck: {name: map} -> {name: map} with `out_specs`; the configured head runs on every map it declares
            (one channel count, the head's convs being shared), with reference boxes of each map's stride.
        head: (batch, features, targets) -> (per-image detections, losses), as `FCOSHead`.
    A checkpoint's config cannot rebuild a module it did not build: build the model with the same modules and
    `model.load_state_dict(checkpoint["model"])` (README, "Extending fpn"). `model.given_modules` names them.

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

    def __init__(
        self, num_classes: int = 91, config: Optional[FCOSConfig] = None, *,
        backbone: Optional[nn.Module] = None, neck: Optional[nn.Module] = None, head: Optional[nn.Module] = None,
    ):
        super().__init__(num_classes, config if config is not None else FCOSConfig())
        cfg = self.config
        given = {"backbone": backbone, "neck": neck, "head": head}
        self.given_modules = tuple(name for name, module in given.items() if module is not None)
        if backbone is not None:
            check_backbone(backbone, cfg)
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone)
        if neck is not None:
            check_neck(neck, self.backbone.out_specs)
        else:
            d = cfg.fpn.out_channels
            trunk = type(backbone).__name__ if backbone is not None else f"config.backbone.name {cfg.backbone.name!r}"
            in_specs = _pyramid_inputs(self.backbone.out_specs, trunk)
            neck = FPN(in_specs, d, extra_levels=LastLevelP6P7(d), norm=cfg.fpn.norm)  # P3..P5, then P6, P7 from P5
        self.neck = neck
        if head is None:
            specs = self.neck.out_specs
            strides = [spec.stride for spec in specs.values()]  # 8, 16, 32, 64, 128
            head = FCOSHead(common_channels(specs, list(specs), "FCOS's head"), num_classes, strides, cfg.head)
        elif not isinstance(head, nn.Module):
            raise ValueError(f"head must be an nn.Module, got {type(head).__name__}")
        self.head = head
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_batch(self, batch: ImageBatch, targets: Optional[List[Dict[str, Tensor]]] = None):
        """Losses (training) or per-image detections in the ImageBatch frame (eval); see `Detector`."""
        features = self.features(batch)  # {"p3": (N, d, Hp/8, Wp/8), ..., "p7": (N, d, Hp/128, Wp/128)}
        return self.forward_heads(batch, features, targets)

    def forward_heads(self, batch: ImageBatch, features: Dict[str, Tensor],
                      targets: Optional[List[Dict[str, Tensor]]] = None):
        """`forward_batch` after the pyramid: the head on `features`, losses or detections as its mode says."""
        detections, losses = self.head(batch, features, targets)
        return losses if self.training else detections

    @classmethod
    def from_torchvision(
        cls, path_or_state_dict: Union[str, Dict[str, Tensor]], num_classes: Optional[int] = None
    ) -> "FCOSFPN":
        """Build the model from a torchvision `fcos_resnet50_fpn` checkpoint file or state dict (frozen BN, stem and
        C2 frozen, as torchvision builds it with weights). With `num_classes` different from the file's, the
        class logits layer is freshly initialised (fine-tuning); everything else is loaded."""
        from fpn.io.convert import load_torchvision_fcos

        return load_torchvision_fcos(cls, path_or_state_dict, num_classes)


def _pyramid_inputs(specs: Dict[str, FeatureSpec], trunk: str) -> Dict[str, FeatureSpec]:
    """The backbone maps FCOS's FPN reads: C3, C4, C5 at strides 8, 16, 32 (P3..P5, paper Sec. 3.2); a
    ValueError naming those the backbone (`trunk`, for the message) lacks (MobileNetV3 has stride-32 maps only)."""
    wrong = [f"{name} (stride {stride})" for name, stride in PYRAMID_INPUTS.items()
             if name not in specs or specs[name].stride != stride]
    if wrong:
        given = ", ".join(f"{name} (stride {spec.stride})" for name, spec in specs.items())
        raise ValueError(
            f"FCOS builds its pyramid on the maps c3, c4, c5 at strides 8, 16, 32; the backbone ({trunk}) declares "
            f"{given}: missing {', '.join(wrong)}. Use a trunk with stride-8 and stride-16 maps (ResNet, RegNetX), "
            "or pass a neck module"
        )
    return {name: specs[name] for name in PYRAMID_INPUTS}
