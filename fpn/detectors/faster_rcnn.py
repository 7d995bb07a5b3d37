"""Faster R-CNN with a Feature Pyramid Network (Lin et al., CVPR 2017), assembled from fpn's own modules.

The forward pass reads like the paper's figure:
    normalise/resize/pad -> ResNet (C2..C5) -> FPN (P2..P6) -> RPN (proposals) -> RoI heads -> boxes in input pixels
The paper's ablation models (Tables 1-3) are the same builder with `config.variant` (see fpn/detectors/variants.py), and
`config.rpn_only` drops the RoI heads (the RPN experiments of Table 1).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from fpn.backbones import build_backbone
from fpn.config import BOX_HEADS, FasterRCNNConfig, RPNConfig
from fpn.heads.box_head import ConvFCHead, TwoMLPHead
from fpn.heads.res5_head import Res5Head
from fpn.heads.roi_heads import RoIHeads
from fpn.heads.rpn import RegionProposalNetwork
from fpn.spec import FeatureSpec
from fpn.detectors.transform import ImageBatch
from fpn.detectors.base import Detector, check_backbone, check_neck, common_channels
from fpn.detectors.variants import VariantLayout, build_neck, variant_layout
from fpn.necks import FPN, LastLevelMaxPool

# The extra level made by subsampling P5 feeds the RPN only; RoIs are pooled from P2..P5 (paper, Sec. 4.1-4.2).
RPN_ONLY_LEVELS = ("p6",)


class FasterRCNNFPN(Detector):
    """Faster R-CNN + FPN with torchvision's detection I/O contract.

    Args:
        num_classes: number of classes INCLUDING the background (label 0); 91 for torchvision's COCO models.
        config: a `FasterRCNNConfig`; the default is torchvision's `fasterrcnn_resnet50_fpn` (v1). It is not
            modified: the model keeps `config.resolved()` as `model.config` (what checkpoints store).

    Keyword-only, each a module you wrote used in place of the one the config builds (None: built as configured;
    checked at construction, a ValueError naming what does not fit):
        backbone: (N, 3, H, W) -> {"c2": ..., "c5": ...} with `out_specs` {name: FeatureSpec(channels, stride)}
            (see ResNet); the FPN reads consecutive "c<level>" maps whose strides double. Its weights are yours
            to load (config.backbone is then unused and its `weights` must be None).
        neck: {name: map} -> {name: map} with `out_specs`, e.g. an FPN subclass; the RPN runs on every map it
            declares, RoIs are pooled from all but "p6" (one map per stride). Only with `config.variant` "fpn".
        rpn_head: list of maps -> (objectness logits per map (N, A, H, W), box deltas (N, A*4, H, W)), declaring
            `num_anchors` = A, the anchors per location of config.anchors (3 by default); see RPNHead.
        box_head: pooled RoIs (R, C, S, S) (C the pooled maps' channels, S = config.roi_heads.pooler_resolution)
            -> (R, F), declaring `out_features` = F; the class and box predictors are built for that width.
    A checkpoint's config cannot rebuild a module it did not build: build the model with the same modules and
    `model.load_state_dict(checkpoint["model"])` (README, "Extending fpn"). `model.given_modules` names them.

    Backbone without weights: as in torchvision, `config.backbone.norm` and `trainable_stages` left at None follow
    `config.backbone.weights`. With ImageNet weights the backbone gets frozen BatchNorm and a frozen stem and C2
    (norm "frozen_bn", trainable_stages 3), the fine-tuning set-up; without them, trainable BatchNorm in all five
    stages ("bn", 5), since frozen BN is then the identity and a frozen stem stays random. Explicit values are
    kept; a model that trains frozen parts without any loaded weights warns once, at its first training step.
    `from_torchvision` and checkpoints rebuild the layout their weights were trained in.

    Training (`model.train()`): `model(images, targets)` with `images` a list of float (3, H, W) tensors in
    [0, 1] RGB of any sizes and `targets` a list of dicts with `boxes` (N, 4) float xyxy absolute pixels and
    `labels` (N,) int64 in 1..num_classes-1 returns a dict of four scalar losses: `loss_objectness`,
    `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg` (the first two alone with `config.rpn_only`). An image
    with no boxes is legal.

    Image range: an image with values above 1.5 (e.g. 0..255 given as floats) gets a warning naming it, in
    training and inference. CPU images are checked at every call; images on an accelerator at the model's first
    call only, since reading a value there makes the host wait for the device.

    Inference (`model.eval()`): `model(images)` returns one dict per image with `boxes` (D, 4) xyxy in that
    image's own pixels, `scores` (D,) and `labels` (D,) int64, sorted by decreasing score. With
    `config.rpn_only` these are the RPN's proposals: D <= config.rpn.post_nms_top_n_test, `scores` the objectness
    probability in [0, 1], `labels` all 1.

    torchvision's `fasterrcnn_resnet50_fpn_v2` (Li et al., 2021) is this model with `config.fpn.norm` "bn",
    `config.rpn.conv_depth` 2 and `config.roi_heads.box_head` "4conv1fc" (`fpn.io.convert.torchvision_v2_config()`
    gives its whole config; `from_torchvision` reads its files).

    Variants (`config.variant`, paper Tables 1-3 rows (a)-(f)): "fpn" (the default) is the model above; "c4" and
    "c5" are the single-scale baselines on C4 (conv5 as box head) and C5, "no_top_down", "no_lateral" and
    "p2_only" the pyramid ablations. fpn/detectors/variants.py lists what each builds.

    Example:
        >>> import torch
        >>> from fpn import FasterRCNNFPN
        >>> model = FasterRCNNFPN(num_classes=3).eval()
        >>> detections = model([torch.rand(3, 300, 400)])
        >>> sorted(detections[0])
        ['boxes', 'labels', 'scores']
    """

    config_class = FasterRCNNConfig  # what `config` is (MaskRCNNFPN: MaskRCNNConfig), for the torchvision loader

    def __init__(
        self, num_classes: int = 91, config: Optional[FasterRCNNConfig] = None, *,
        backbone: Optional[nn.Module] = None, neck: Optional[nn.Module] = None,
        rpn_head: Optional[nn.Module] = None, box_head: Optional[nn.Module] = None,
    ):
        super().__init__(num_classes, config if config is not None else FasterRCNNConfig())
        cfg = self.config
        layout = variant_layout(cfg.variant)  # which of the paper's ablation models (Tables 1-3)
        given = {"backbone": backbone, "neck": neck, "rpn_head": rpn_head, "box_head": box_head}
        self.given_modules = tuple(name for name, module in given.items() if module is not None)
        _check_variant_takes(cfg, layout, self.given_modules)
        _check_v2_parts(cfg, layout)
        if backbone is not None:
            check_backbone(backbone, cfg)
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone)
        res5, res5_channels = _split_off_res5(self.backbone) if layout.trunk_to_c4 else (None, 0)
        # the FPN with P6 (paper Sec. 4.1), its ablations, or the backbone's maps (single-scale baselines)
        if neck is not None:
            check_neck(neck, self.backbone.out_specs)
        self.neck = neck if neck is not None else _build_neck(cfg, self.backbone.out_specs)
        specs = self.neck.out_specs
        self.rpn_maps = list(layout.rpn_maps or specs)
        self.rpn = RegionProposalNetwork(
            common_channels(specs, self.rpn_maps, "the RPN head"), _rpn_config(cfg, self.rpn_maps), cfg.anchors,
            sizes_per_level=_anchor_sizes(cfg, self.rpn_maps),
        )
        if rpn_head is not None:
            _check_rpn_head(rpn_head, self.rpn.anchor_generator.num_anchors_per_location()[0])
            self.rpn.head = rpn_head  # in place of the RPNHead the RPN built (anchors, matching, losses stay)
        self.pooled_levels = list(layout.pooled_maps or _pooled_levels(specs))
        self.roi_heads = None  # the RPN alone (config.rpn_only, paper Table 1)
        if not cfg.rpn_only:
            pooled_channels = common_channels(specs, self.pooled_levels, "the box head")
            box_head, box_features, resolution = _box_head(cfg, pooled_channels, res5, res5_channels, box_head)
            self.roi_heads = RoIHeads(
                cfg.roi_heads,
                featmap_names=self.pooled_levels,
                strides=[specs[name].stride for name in self.pooled_levels],
                box_head=box_head,
                box_features=box_features,
                num_classes=num_classes,
                pooler_resolution=resolution,
            )
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_batch(self, batch: ImageBatch, targets: Optional[List[Dict[str, Tensor]]] = None):
        """Losses (training) or per-image detections in the ImageBatch frame (eval); see `Detector`."""
        features = self.features(batch)  # {"p2": (N, 256, Hp/4, Wp/4), ..., "p6"}; c4, c5: C2..C4 / C2..C5
        return self.forward_heads(batch, features, targets)

    def forward_heads(self, batch: ImageBatch, features: Dict[str, Tensor],
                      targets: Optional[List[Dict[str, Tensor]]] = None):
        """`forward_batch` after the pyramid: the RPN and the RoI heads on `features` (what `self.features(batch)`
        returns), losses or detections as the heads' mode says (an evaluation with the validation loss runs them
        twice on one pyramid: fpn/engine/validation_loss.py)."""
        rpn_features = {name: features[name] for name in self.rpn_maps}
        if self.roi_heads is None:  # the RPN alone (paper Table 1): its proposals are the detections
            proposals, rpn_losses = self.rpn(batch, rpn_features, targets, with_scores=True)
            return rpn_losses if self.training else _as_detections(proposals)
        proposals, rpn_losses = self.rpn(batch, rpn_features, targets)  # per image (Pi, 4) xyxy, ImageBatch frame
        pooled = {name: features[name] for name in self.pooled_levels}
        detections, roi_losses = self.roi_heads(pooled, proposals, batch.image_sizes, targets)
        return {**rpn_losses, **roi_losses} if self.training else detections

    @classmethod
    def from_torchvision(
        cls, path_or_state_dict: Union[str, Dict[str, Tensor]], num_classes: Optional[int] = None, *,
        low_resolution: Optional[bool] = None,
    ) -> "FasterRCNNFPN":
        """Build the model from a torchvision `fasterrcnn_resnet50_fpn` (v1), `fasterrcnn_resnet50_fpn_v2`,
        `fasterrcnn_mobilenet_v3_large_fpn` or `fasterrcnn_mobilenet_v3_large_320_fpn` checkpoint file or state dict
        (which one, its keys say).

        With `num_classes` different from the checkpoint's, the class-specific predictor is freshly initialised
        (fine-tuning); everything else is loaded. The file is read with `torch.load(weights_only=True)`. The
        backbone is laid out as torchvision builds this detector with weights: frozen BN, stem and C2 frozen
        (MobileNetV3: its last 3 stages trained; v2: stem and C2 frozen, but BatchNorm, not frozen BN, as
        torchvision's v2 builder keeps it). The two MobileNetV3 files have the same tensors: the 320 model's settings
        (320 / 640 px inputs, 150 proposals) apply when `low_resolution` is True, or when it is None and the file
        name holds "_320_" as torchvision's does (`fpn.io.convert.torchvision_mobilenet_config`).
        """
        from fpn.io.convert import load_torchvision_detector

        return load_torchvision_detector(cls, path_or_state_dict, num_classes, low_resolution)


def _rpn_config(cfg: FasterRCNNConfig, rpn_maps: List[str]) -> RPNConfig:
    """The RPN settings for its maps. `pre_nms_top_n_*` counts candidates per level: a single-map RPN (variants
    c4, c5, p2_only) with all anchor sizes on its one map keeps that many times the number of sizes, so it has
    as many candidates before NMS as the FPN's RPN with one size on each level (a fair comparison, Table 1)."""
    if len(rpn_maps) > 1:
        return cfg.rpn
    scale = len(cfg.anchors.sizes)
    return replace(cfg.rpn, pre_nms_top_n_train=cfg.rpn.pre_nms_top_n_train * scale,
                   pre_nms_top_n_test=cfg.rpn.pre_nms_top_n_test * scale)


def _build_neck(cfg: FasterRCNNConfig, backbone_specs: Dict[str, FeatureSpec]) -> nn.Module:
    """The neck of the variant; with `config.fpn.norm` "bn", the FPN with BatchNorm after each conv and P6."""
    if cfg.fpn.norm == "none":
        return build_neck(cfg.variant, backbone_specs, cfg.fpn.out_channels)
    return FPN(backbone_specs, cfg.fpn.out_channels, norm=cfg.fpn.norm, extra_levels=LastLevelMaxPool())


def _pooled_levels(specs: Dict[str, FeatureSpec]) -> List[str]:
    """The pyramid levels RoIs are pooled from: all but P6 (the RPN's alone, paper Sec. 4.1-4.2), one per stride.
    Where two levels share a stride (MobileNetV3's P4 and P5, both 32), torchvision's pooler sends every RoI to
    the first, so the second feeds the RPN alone."""
    levels, strides = [], set()
    for name, spec in specs.items():
        if name not in RPN_ONLY_LEVELS and spec.stride not in strides:
            levels.append(name)
            strides.add(spec.stride)
    return levels


def _anchor_sizes(cfg: FasterRCNNConfig, rpn_maps: List[str]):
    """One tuple of anchor sizes per RPN map: one size per pyramid level (paper Sec. 4.1), or every size on a
    single map (the single-scale baselines and P2 alone, Sec. 5.1.1) or on each map
    (`anchors.every_size_on_every_level`, torchvision's MobileNetV3 FPN)."""
    sizes = tuple(cfg.anchors.sizes)
    if len(rpn_maps) == 1 or cfg.anchors.every_size_on_every_level:
        return (sizes,) * len(rpn_maps)
    if len(sizes) != len(rpn_maps):
        raise ValueError(
            f"config.anchors.sizes has {len(sizes)} sizes but the pyramid has {len(rpn_maps)} levels {rpn_maps}: "
            f"give one anchor size per level"
        )
    return tuple((size,) for size in sizes)


def _check_variant_takes(cfg: FasterRCNNConfig, layout: VariantLayout, given: Tuple[str, ...]) -> None:
    """A ValueError when a given module has no place in the configured model: the variant chooses the neck, and
    the C4 baseline's box head (the trunk's conv5 stage) or an RPN alone leave no place for a box head."""
    if "neck" in given and cfg.variant != "fpn":
        raise ValueError(f"config.variant {cfg.variant!r} chooses the neck, and a neck module was given too: "
                         "leave config.variant at 'fpn' to use your neck")
    if "box_head" in given and (cfg.rpn_only or layout.trunk_to_c4):
        why = "config.rpn_only has no RoI heads" if cfg.rpn_only else "variant 'c4' uses the trunk's conv5 stage"
        raise ValueError(f"a box_head module was given, but {why}: it would never run")


def _check_v2_parts(cfg: FasterRCNNConfig, layout: VariantLayout) -> None:
    """A ValueError for an unknown `roi_heads.box_head`, and for torchvision's v2 parts where the variant has no
    place for them: the FPN's norm needs the FPN itself, the 4conv1fc head RoI heads not made of conv5."""
    if cfg.roi_heads.box_head not in BOX_HEADS:
        raise ValueError(f"config.roi_heads.box_head must be one of {', '.join(BOX_HEADS)}; "
                         f"got {cfg.roi_heads.box_head!r}")
    if cfg.fpn.norm != "none" and cfg.variant != "fpn":
        raise ValueError(f"config.fpn.norm {cfg.fpn.norm!r} needs config.variant 'fpn'; got {cfg.variant!r}")
    if cfg.roi_heads.box_head != "2fc" and layout.trunk_to_c4 and not cfg.rpn_only:
        raise ValueError(f"config.roi_heads.box_head {cfg.roi_heads.box_head!r}: variant 'c4' uses the trunk's "
                         "conv5 stage as box head; leave box_head at '2fc'")


def _split_off_res5(backbone: nn.Module) -> Tuple[nn.Module, int]:
    """The trunk's conv5 stage and its channels, split off for the C4 baseline's box head (the trunk then
    stops at C4)."""
    if not callable(getattr(backbone, "split_off_last_stage", None)) or "c5" not in backbone.out_specs:
        raise ValueError(f"config.variant 'c4' needs a backbone with a 'c5' map and split_off_last_stage() "
                         f"(as ResNet has); {type(backbone).__name__} has not")
    channels = backbone.out_specs["c5"].channels
    return backbone.split_off_last_stage(), channels


def _check_rpn_head(head: nn.Module, num_anchors: int) -> None:
    """A given RPN head must predict for as many anchors per location as the config's anchors make."""
    if not isinstance(head, nn.Module):
        raise ValueError(f"rpn_head must be an nn.Module, got {type(head).__name__}")
    declared = getattr(head, "num_anchors", None)
    if declared != num_anchors:
        raise ValueError(
            f"rpn_head {type(head).__name__} must declare `num_anchors`, the anchors per location it predicts for: "
            f"the config's anchors make {num_anchors} (aspect ratios x sizes per map); got {declared!r}"
        )


def _declared_width(box_head: nn.Module) -> int:
    """The width F of a given box head's output (R, F): its declared `out_features`."""
    if not isinstance(box_head, nn.Module):
        raise ValueError(f"box_head must be an nn.Module, got {type(box_head).__name__}")
    width = getattr(box_head, "out_features", None)
    if not isinstance(width, int) or width <= 0:
        raise ValueError(
            f"box_head {type(box_head).__name__} must declare `out_features`, the width F of its output (R, F), "
            f"for the class and box predictors; got {width!r}"
        )
    return width


def _box_head(
    cfg: FasterRCNNConfig, channels: int, res5: Optional[nn.Module], res5_channels: int,
    given: Optional[nn.Module] = None,
) -> Tuple[nn.Module, int, int]:
    """The box head, its output width and the RoIAlign size it takes: the conv5 stage on 2S x 2S RoIs (the C4
    baseline, He et al.; its strided first block halves them to the S x S the 2-fc head sees), a given head on
    S x S RoIs, or on `channels` x S x S RoIs the FPN paper's two 1024-d fc layers (Sec. 4.2, box_head "2fc") or
    torchvision's v2 head of four conv + BN + ReLU and one fc layer ("4conv1fc")."""
    resolution = cfg.roi_heads.pooler_resolution
    if res5 is not None:
        return Res5Head(res5, res5_channels), res5_channels, 2 * resolution
    if given is not None:
        return given, _declared_width(given), resolution
    size = cfg.roi_heads.representation_size
    if cfg.roi_heads.box_head == "4conv1fc":
        return ConvFCHead(channels, resolution, size), size, resolution
    return TwoMLPHead(channels * resolution**2, size), size, resolution


def _as_detections(proposals: List[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
    """RPN proposals as detections of one class: label 1 for every box (the RPN-only output contract)."""
    return [
        {"boxes": p["boxes"], "scores": p["scores"],
         "labels": torch.ones(p["scores"].shape, dtype=torch.int64, device=p["scores"].device)}
        for p in proposals
    ]
