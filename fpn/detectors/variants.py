"""The models of the FPN paper's ablations (Lin et al., 2017, Tables 1-3, rows (a)-(f)) as wirings of one detector.

`FasterRCNNConfig.variant` names one; `variant_layout` says how `FasterRCNNFPN` wires it: whether the trunk stops
at C4 (conv5 becoming the box head), how the neck is built, and which maps the RPN and the RoI heads read.

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
  * (d): each level is its 1x1 lateral followed by its 3x3 conv, attached to the bottom-up maps C2..C5 without
    the top-down pathway; P6 subsamples P5 as in the FPN.
  * (e): P5 is the 3x3 conv of C5's 1x1 lateral as in the FPN; each finer level is the 3x3 conv of the upsampled
    coarser merged map alone.
  * (f): as for the single-scale baselines, all anchors go to P2, and so do all RoIs. P2 is computed by the full
    FPN (every lateral and the whole top-down pathway), but the 3x3 convs of P3..P5 and P6 are not built:
    nothing reads them, and parameters without gradients would also stop DistributedDataParallel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from fpn.config import check_variant


@dataclass(frozen=True)
class VariantLayout:
    """How the detector is wired for one variant."""

    trunk_to_c4: bool  # the ResNet stops at C4; its conv5 stage becomes the box head (Res5Head)
    neck: bool  # build the FPN neck; False: the heads read the backbone's maps directly
    top_down: bool  # the neck's top-down pathway (FPN argument `top_down`)
    laterals: bool  # the neck's 1x1 laterals below the coarsest level (FPN argument `laterals`)
    finest_only: bool  # the neck outputs P2 alone (FPN argument `finest_only`)
    rpn_maps: Optional[Tuple[str, ...]]  # the maps the RPN runs on; None: every map the neck outputs
    pooled_maps: Optional[Tuple[str, ...]]  # the maps RoIs are pooled from; None: the neck's but P6 (Sec. 4.2)


def variant_layout(variant: str) -> VariantLayout:
    """The wiring of `variant` (one of fpn.config.VARIANTS); an unknown name raises a ValueError naming them."""
    check_variant(variant)
    pyramid = dict(trunk_to_c4=False, neck=True, top_down=True, laterals=True, finest_only=False,
                   rpn_maps=None, pooled_maps=None)
    if variant == "c4":
        return VariantLayout(**{**pyramid, "trunk_to_c4": True, "neck": False, "rpn_maps": ("c4",),
                                "pooled_maps": ("c4",)})
    if variant == "c5":
        return VariantLayout(**{**pyramid, "neck": False, "rpn_maps": ("c5",), "pooled_maps": ("c5",)})
    if variant == "no_top_down":
        return VariantLayout(**{**pyramid, "top_down": False})
    if variant == "no_lateral":
        return VariantLayout(**{**pyramid, "laterals": False})
    if variant == "p2_only":
        return VariantLayout(**{**pyramid, "finest_only": True, "rpn_maps": ("p2",), "pooled_maps": ("p2",)})
    return VariantLayout(**pyramid)  # "fpn"
