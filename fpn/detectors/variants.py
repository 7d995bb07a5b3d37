"""The models of the FPN paper's ablations (Lin et al., 2017, Tables 1-3, rows (a)-(f)) as wirings of one detector.

`FasterRCNNConfig.variant` names one. `build_neck` builds its neck: the paper's FPN with P6 for the RPN, one of the
small FPN subclasses below (the pyramid ablations), or none at all (`BackboneMaps`, the single-scale baselines);
`variant_layout` says the rest of the wiring: whether the trunk stops at C4 (conv5 becoming the box head) and which
maps the RPN and the RoI heads read.

    variant       paper row   RPN on (anchors)             RoIs pooled from         box head
    c4            (a)         C4, stride 16 (all sizes)    C4, 14x14                conv5 stage + average pool
    c5            (b)         C5, stride 32 (all sizes)    C5, 7x7                  2 fc
    fpn           (c)         P2..P6 (one size each)       P2..P5 by Eq. (1), 7x7   2 fc
    no_top_down   (d)         as fpn, bottom-up pyramid    as fpn                   2 fc
    no_lateral    (e)         as fpn, no 1x1 laterals      as fpn                   2 fc
    p2_only       (f)         P2 (all sizes)               P2, 7x7                  2 fc

Choices where the paper is brief (Sec. 5.1.1, 5.2.1-5.2.2):
  * (a), (b): the paper's single-scale baselines use the same hyper-parameters as the FPN, anchors of all five
    scales 32^2..512^2 included, so all of `config.anchors.sizes` x the aspect ratios sit on the one map. The
    RPN's 3x3 conv keeps the map's channels (1024 on C4, 2048 on C5), as the original RPN keeps its input width.
    `rpn.pre_nms_top_n_*` counts per level, so a one-map RPN ((a), (b), (f)) keeps that many times the number of
    anchor sizes before NMS: as many candidates as the FPN's five levels (`fpn.detectors.faster_rcnn._rpn_config`).
  * (a): the box head is that of He et al.'s ResNet Faster R-CNN, which the paper compares with: 14x14 RoIAlign
    on C4 (twice `roi_heads.pooler_resolution`), conv5 with its first block strided (to 7x7), global average
    pooling.
  * (b): the FPN's 2-fc head (the paper's "2fc" of Table 2(b)), on 7x7 RoIs of C5 with its full channel count.
    (a) and (b) have no neck: `BackboneMaps` hands the heads the backbone's maps.
  * (d) `BottomUpPyramid`: each level is its 1x1 lateral followed by its 3x3 conv, attached to the bottom-up maps
    C2..C5 without the top-down pathway; P6 subsamples P5 as in the FPN.
  * (e) `NoLateralFPN`: P5 is the 3x3 conv of C5's 1x1 lateral as in the FPN; each finer level is the 3x3 conv of
    the upsampled coarser merged map alone.
  * (f) `FinestLevelFPN`: as for the single-scale baselines, all anchors go to P2, and so do all RoIs. P2 is
    computed by the full FPN (every lateral and the whole top-down pathway), but the 3x3 convs of P3..P5 and P6
    are not kept: nothing reads them, and parameters without gradients would also stop DistributedDataParallel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from fpn.config import check_variant
from fpn.necks import FPN, LastLevelMaxPool
from fpn.spec import FeatureSpec


class BottomUpPyramid(FPN):
    """(d) FPN without the top-down pathway: P_i = 3x3 conv of the 1x1 lateral of C_i alone. The FPN's parameters
    (and state-dict keys), its extra levels."""

    def forward(self, features: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        inputs = self.inputs(features)  # C2..C5
        return self.pyramid([output_conv(lateral_conv(x)) for x, lateral_conv, output_conv  # (N, d, Hi, Wi)
                             in zip(inputs, self.lateral_convs, self.output_convs)])


class NoLateralFPN(FPN):
    """(e) FPN without the 1x1 laterals of C2..C4: P5 as in the FPN; each finer merged map is the coarser one,
    upsampled, alone. Keeps C5's lateral only (`lateral_convs.0`)."""

    def build_lateral_convs(self, out_channels: int) -> nn.ModuleList:
        coarsest = self.in_specs[self.in_names[-1]]  # no unused parameters (DistributedDataParallel needs it)
        return nn.ModuleList([nn.Conv2d(coarsest.channels, out_channels, kernel_size=1)])

    def forward(self, features: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        inputs = self.inputs(features)  # C2..C5 (only C5 is read; the others give the sizes)
        merged = self.lateral_convs[0](inputs[-1])  # (N, C5, H5, W5) -> (N, d, H5, W5)
        outputs = [self.output_convs[-1](merged)]  # P5
        for i in range(len(inputs) - 2, -1, -1):  # C4 down to C2
            merged = F.interpolate(merged, size=inputs[i].shape[-2:], mode="nearest")  # (N, d, Hi, Wi)
            outputs.insert(0, self.output_convs[i](merged))
        return self.pyramid(outputs)


class FinestLevelFPN(FPN):
    """(f) P2 alone, of the full top-down pathway (every lateral), with no extra level. Keeps P2's 3x3 conv only
    (`output_convs.0`): nothing reads the others."""

    def __init__(self, in_specs: Mapping[str, FeatureSpec], out_channels: int = 256):
        super().__init__(in_specs, out_channels)
        finest = next(iter(self.out_specs))
        self.out_specs = {finest: self.out_specs[finest]}

    def build_output_convs(self, out_channels: int) -> nn.ModuleList:
        return nn.ModuleList([nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)])

    def forward(self, features: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        inputs = self.inputs(features)  # C2..C5
        merged = self.lateral_convs[-1](inputs[-1])  # (N, d, H5, W5)
        for i in range(len(inputs) - 2, -1, -1):  # C4 down to C2, as in the FPN
            top_down = F.interpolate(merged, size=inputs[i].shape[-2:], mode="nearest")
            merged = self.lateral_convs[i](inputs[i]) + top_down  # (N, d, Hi, Wi)
        return self.pyramid([self.output_convs[0](merged)])  # {"p2": (N, d, H2, W2)}


class BackboneMaps(nn.Module):
    """(a), (b) no pyramid: the heads read the backbone's own maps (C4 or C5). No parameters."""

    def __init__(self, in_specs: Mapping[str, FeatureSpec]):
        super().__init__()
        self.out_specs: Dict[str, FeatureSpec] = dict(in_specs)

    def forward(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return features


def build_neck(variant: str, in_specs: Mapping[str, FeatureSpec], out_channels: int) -> nn.Module:
    """The neck of `variant` on a backbone with `in_specs`: the paper's FPN with P6 (stride-2 subsampling of P5)
    for the RPN, one of its ablations, or the backbone's maps themselves. An unknown name raises a ValueError."""
    check_variant(variant)
    if variant in ("c4", "c5"):
        return BackboneMaps(in_specs)
    if variant == "p2_only":
        return FinestLevelFPN(in_specs, out_channels)
    pyramid = {"fpn": FPN, "no_top_down": BottomUpPyramid, "no_lateral": NoLateralFPN}[variant]
    return pyramid(in_specs, out_channels, extra_levels=LastLevelMaxPool())


@dataclass(frozen=True)
class VariantLayout:
    """How the detector is wired around the neck for one variant."""

    trunk_to_c4: bool  # the ResNet stops at C4; its conv5 stage becomes the box head (Res5Head)
    rpn_maps: Optional[Tuple[str, ...]]  # the maps the RPN runs on; None: every map the neck outputs
    pooled_maps: Optional[Tuple[str, ...]]  # the maps RoIs are pooled from; None: the neck's but P6 (Sec. 4.2)


def variant_layout(variant: str) -> VariantLayout:
    """The wiring of `variant` (one of fpn.config.VARIANTS); an unknown name raises a ValueError naming them."""
    check_variant(variant)
    if variant == "c4":
        return VariantLayout(trunk_to_c4=True, rpn_maps=("c4",), pooled_maps=("c4",))
    if variant == "c5":
        return VariantLayout(trunk_to_c4=False, rpn_maps=("c5",), pooled_maps=("c5",))
    if variant == "p2_only":
        return VariantLayout(trunk_to_c4=False, rpn_maps=("p2",), pooled_maps=("p2",))
    return VariantLayout(trunk_to_c4=False, rpn_maps=None, pooled_maps=None)  # fpn, no_top_down, no_lateral
