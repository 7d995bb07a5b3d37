"""Configuration of the detector: one nested dataclass, every default from the paper or torchvision.

`FasterRCNNConfig()` is torchvision's `fasterrcnn_resnet50_fpn` (v1): ResNet-50, FPN with 256 channels, anchors
32..512 x (0.5, 1, 2), the RPN and RoI-head settings of Lin et al. (2017) / Ren et al. (2015). As in torchvision,
the backbone's normalisation and frozen stages follow from its weights (see `BackboneConfig`): frozen BN with the
stem and C2 frozen when ImageNet weights are given, trainable BN in every stage when training from scratch.
A model keeps `config.resolved()`, every such "auto" field made explicit; `asdict` of that is stored in every
checkpoint and `FasterRCNNConfig.from_dict` rebuilds it, so a checkpoint rebuilds the architecture it trained.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Optional, Tuple

# The models of the paper's ablations (Lin et al., 2017, Tables 1-3), rows (a)-(f); see fpn/detectors/variants.py.
VARIANTS = ("c4", "c5", "fpn", "no_top_down", "no_lateral", "p2_only")
# Stages of a trunk other than ResNet's and RegNetX's five (trainable_stages of this many trains all of it).
TRUNK_STAGES = {"mobilenet_v3_large": 6}
# Trunks whose torchvision detector puts every anchor size on each level (its two stride-32 maps and their P6).
EVERY_SIZE_ON_EVERY_LEVEL = ("mobilenet_v3_large",)


@dataclass
class BackboneConfig:
    """The trunk (ResNet, RegNetX or MobileNetV3-Large). `norm` and `trainable_stages` left at None are chosen from
    `weights`, as torchvision chooses them from whether any weights are given (`resolved()` applies the rule):

        weights given:  norm "frozen_bn", trainable_stages 3 (fine-tuning: ImageNet statistics, stem and C2 kept)
        no weights:     norm "bn",        trainable_stages 5 (from scratch: every layer learns, BN included)

    MobileNetV3-Large counts six stages, as torchvision's `trainable_backbone_layers` does for it (0..6), so from
    scratch its trainable_stages is 6.

    Without loaded weights frozen BN is the identity and a frozen stage keeps its random initialisation, so
    "frozen_bn" or trainable_stages < 5 is only right when weights are loaded after construction (a detector
    checkpoint); the model warns when it trains such a backbone with nothing loaded.
    """

    name: str = "resnet"  # the trunk: "resnet" (`depth`, `width`), a RegNetX ("regnet_x_400mf"..), "mobilenet_v3_large"
    depth: int = 50  # ResNet depth: 18, 34 (basic blocks), 50, 101 (bottlenecks); unused by RegNetX
    norm: Optional[str] = None  # "frozen_bn", "bn" or "gn" (small batches); none: frozen_bn with weights, else bn
    gn_groups: int = 32  # groups of GroupNorm when norm == "gn"
    width: int = 64  # ResNet: channels of the stem / first stage; 64 is ResNet, smaller gives a narrower variant
    trainable_stages: Optional[int] = None  # stages trained, top down; none: 3 with weights, else all (5, MobileNet 6)
    zero_init_residual: bool = True  # ResNet from scratch: blocks start as the identity (Goyal et al.); false: open
    weights: Optional[str] = None  # local path of an ImageNet checkpoint in torchvision's key layout

    def resolved(self) -> "BackboneConfig":
        """A copy with `norm` and `trainable_stages` explicit: the values given, or the rule above."""
        pretrained = bool(self.weights)
        norm = self.norm if self.norm is not None else ("frozen_bn" if pretrained else "bn")
        every_stage = TRUNK_STAGES.get(self.name, 5)
        stages = self.trainable_stages if self.trainable_stages is not None else (3 if pretrained else every_stage)
        return replace(self, norm=norm, trainable_stages=stages)


@dataclass
class FPNConfig:
    out_channels: int = 256  # channels d of every pyramid level (the paper's d = 256, Sec. 3)
    norm: str = (
        "none"  # after each lateral and output conv: none (the paper, torchvision v1) or bn (BatchNorm, the convs
        # without bias: torchvision's *_v2 models)
    )


@dataclass
class AnchorConfig:
    sizes: Tuple[int, ...] = (32, 64, 128, 256, 512)  # one per level, P2..P6 (Sec. 4.1); c4/c5/p2_only: all on one map
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width ratios at every level
    every_size_on_every_level: Optional[bool] = (
        None  # all `sizes` on each RPN level, not one per level: torchvision's MobileNetV3 FPN (3 levels, 15
        # anchors a location); none: true with a MobileNetV3 trunk, else false
    )


@dataclass
class RPNConfig:
    pre_nms_top_n_train: int = 2000  # proposals kept per level before NMS, training
    pre_nms_top_n_test: int = 1000  # proposals kept per level before NMS, inference
    post_nms_top_n_train: int = 2000  # proposals kept per image after NMS, training
    post_nms_top_n_test: int = 1000  # proposals kept per image after NMS, inference
    nms_thresh: float = 0.7  # IoU threshold of the proposal NMS
    fg_iou_thresh: float = 0.7  # anchors with IoU >= this are positive
    bg_iou_thresh: float = 0.3  # anchors with IoU < this are negative
    batch_size_per_image: int = 256  # anchors sampled per image for the loss
    positive_fraction: float = 0.5  # at most this fraction of them positive
    score_thresh: float = 0.0  # proposals with objectness probability below this are dropped
    min_size: float = 1e-3  # proposals smaller than this (px) are dropped
    conv_depth: int = 1  # 3x3 conv + ReLU layers of the head before its 1x1 predictors (torchvision's *_v2: 2)


@dataclass
class RoIHeadsConfig:
    pooler_resolution: int = 7  # RoIAlign output size (7x7, paper Sec. 4.2)
    sampling_ratio: int = 2  # bilinear samples per bin side (<= 0: adaptive)
    aligned: bool = False  # half-pixel offset of RoIAlign (torchvision's detector uses False)
    canonical_scale: int = 224  # k = floor(k0 + log2(sqrt(wh) / 224)), paper Eq. (1)
    canonical_level: int = 4  # k0, the level of a canonical_scale RoI (paper Eq. (1): k0 = 4)
    representation_size: int = 1024  # width of the two FC layers (fc6, fc7), or of the one after the convs
    box_head: str = (
        "2fc"  # 2fc: the paper's two FC layers (Sec. 4.2); 4conv1fc: four 3x3 conv (256) + BatchNorm + ReLU, then
        # one FC layer (torchvision's *_v2 models)
    )
    fg_iou_thresh: float = 0.5  # RoIs with IoU >= this are foreground
    bg_iou_thresh: float = 0.5  # RoIs with IoU < this are background
    batch_size_per_image: int = 512  # RoIs sampled per image for the loss
    positive_fraction: float = 0.25  # at most this fraction of them foreground
    bbox_reg_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # box delta weights (wx, wy, ww, wh)
    score_thresh: float = 0.05  # detections below this score are dropped
    nms_thresh: float = 0.5  # per-class NMS IoU threshold
    detections_per_img: int = 100  # detections kept per image


@dataclass
class InputConfig:
    min_size: int = 800  # shorter side after resizing at inference
    max_size: int = 1333  # longer side is capped at this
    train_min_sizes: Tuple[int, ...] = (800,)  # shorter side drawn from these in training (multi-scale)
    image_mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet RGB mean, images in [0, 1]
    image_std: Tuple[float, float, float] = (0.229, 0.224, 0.225)  # ImageNet RGB std
    size_divisible: int = 32  # the padded batch is a multiple of this (the stride of C5)


class DetectorConfig:
    """What both detector configs do: `resolved()` (the copy a model keeps), `to_dict()` / `from_dict()` (what a
    checkpoint stores and rebuilds)."""

    def check(self) -> None:
        """Raise ValueError for a value the model cannot be built with (a field may be set after construction)."""

    def resolved(self):
        """A deep copy with every automatic (None) choice made explicit; what a model keeps as `model.config`."""
        self.check()
        config = copy.deepcopy(self)
        config.backbone = self.backbone.resolved()
        return config

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        """Rebuild a config from `to_dict()` output; unknown keys raise a ValueError naming them."""
        return _from_dict(cls, data, "config")


@dataclass
class FasterRCNNConfig(DetectorConfig):
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    input: InputConfig = field(default_factory=InputConfig)
    channels_last: bool = True  # run the convolutions in NHWC memory format (faster with oneDNN and cuDNN)
    variant: str = (
        "fpn"  # which model of the paper's ablations (Tables 1-3): fpn (c) the FPN, P2..P6; c4 (a) one map, C4
        # (stride 16), every anchor size there, the ResNet conv5 stage as box head on 14x14 RoIs; c5 (b) one map,
        # C5 (stride 32), every anchor size, 2-fc head; no_top_down (d) 1x1 laterals + 3x3 convs on C2..C5, no
        # top-down pathway; no_lateral (e) top-down pathway without the 1x1 laterals of C2..C4; p2_only (f) the
        # RPN (every anchor size) and RoI pooling on P2 alone
    )
    rpn_only: bool = (
        False  # the RPN alone, without RoI heads (paper Table 1): training returns only the two RPN losses,
        # inference the proposals in input pixels (scores: objectness probability, labels: all 1)
    )

    def __post_init__(self):
        check_variant(self.variant)

    def check(self) -> None:
        check_variant(self.variant)

    def resolved(self) -> "FasterRCNNConfig":
        """As `DetectorConfig.resolved`, and `anchors.every_size_on_every_level` from the trunk when None."""
        config = super().resolved()
        if config.anchors.every_size_on_every_level is None:
            config.anchors.every_size_on_every_level = config.backbone.name in EVERY_SIZE_ON_EVERY_LEVEL
        return config


@dataclass
class MaskHeadConfig:
    """Mask R-CNN's mask branch (He et al., ICCV 2017, Fig. 4 right), torchvision's `maskrcnn_resnet50_fpn`
    defaults: RoIAlign 14x14 from the RoI's pyramid level, four 3x3 convs, a 2x2 stride-2 transposed conv, a 1x1
    conv to one 28x28 mask logit per class."""

    pooler_resolution: int = 14  # RoIAlign output size of the mask branch
    sampling_ratio: int = 2  # bilinear samples per bin side (<= 0: adaptive)
    num_convs: int = 4  # 3x3 conv + ReLU layers before the upsampling
    conv_channels: int = 256  # their width, and the transposed conv's
    dilation: int = 1  # of the 3x3 convs
    norm: str = "none"  # after each 3x3 conv: none (v1) or bn (BatchNorm, the convs without bias: torchvision's v2)


@dataclass
class MaskRCNNConfig(FasterRCNNConfig):
    """Mask R-CNN on the feature pyramid: Faster R-CNN's sections plus `mask`. `MaskRCNNConfig()` is torchvision's
    `maskrcnn_resnet50_fpn` (v1). Masks need the FPN model with RoI heads (variant "fpn", not rpn_only)."""

    mask: MaskHeadConfig = field(default_factory=MaskHeadConfig)

    def check(self) -> None:
        super().check()
        if self.variant != "fpn" or self.rpn_only:
            raise ValueError(f"Mask R-CNN needs config.variant 'fpn' with RoI heads; got variant {self.variant!r}, "
                             f"rpn_only {self.rpn_only}")


NORMS = ("none", "bn")  # the choices of FPNConfig.norm and MaskHeadConfig.norm
BOX_HEADS = ("2fc", "4conv1fc")  # the choices of RoIHeadsConfig.box_head


def check_variant(variant: Any) -> None:
    """Raise a ValueError naming `variant` and the choices unless it is one of VARIANTS."""
    if variant not in VARIANTS:
        raise ValueError(f"config.variant must be one of {', '.join(VARIANTS)}; got {variant!r}")


def _from_dict(cls: Any, data: dict, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a dict, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple) and value is not None:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


@dataclass
class FCOSHeadConfig:
    """FCOS's head (Tian et al., ICCV 2019), with torchvision's `fcos_resnet50_fpn` defaults."""

    num_convs: int = 4  # conv3x3 + GroupNorm + ReLU layers of each tower (classification, regression)
    gn_groups: int = 32  # GroupNorm groups of the towers (must divide fpn.out_channels)
    prior_probability: float = 0.01  # initial foreground probability of every class logit (focal loss prior)
    focal_alpha: float = 0.25  # focal loss weight of the positives
    focal_gamma: float = 2.0  # focal loss focusing exponent
    center_sampling_radius: float = 1.5  # a location is a positive only within this many strides of a box centre
    score_thresh: float = 0.2  # inference: candidates with sqrt(class prob * centerness) at most this are dropped
    topk_candidates: int = 1000  # inference: best candidates kept per level before NMS
    nms_thresh: float = 0.6  # per-class NMS IoU threshold
    detections_per_img: int = 100  # detections kept per image


@dataclass
class FCOSConfig(DetectorConfig):
    """FCOS on the feature pyramid: `FCOSConfig()` is torchvision's `fcos_resnet50_fpn` (ResNet-50, FPN on
    C3..C5 with P6 and P7 from P5, 256 channels). `backbone`, `fpn` and `input` are the sections of
    FasterRCNNConfig, with the same meaning."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: FCOSHeadConfig = field(default_factory=FCOSHeadConfig)
    input: InputConfig = field(default_factory=InputConfig)
    channels_last: bool = True  # run the convolutions in NHWC memory format (faster with oneDNN and cuDNN)
