"""fpn: detectors on a Feature Pyramid Network (Lin et al., CVPR 2017) in plain PyTorch: Faster R-CNN (two-stage)
and FCOS (one-stage, anchor-free).

A part you wrote goes in by keyword, in place of the configured one: `FasterRCNNFPN(num_classes, config,
backbone=MyTrunk(), box_head=MyHead())`, `FCOSFPN(num_classes, config, neck=MyNeck())`; a backbone or neck declares
its maps as `out_specs` {name: FeatureSpec(channels, stride)} (README, "Extending fpn")."""
from fpn.config import (  # noqa: F401
    AnchorConfig,
    BackboneConfig,
    FasterRCNNConfig,
    FCOSConfig,
    FCOSHeadConfig,
    FPNConfig,
    InputConfig,
    MaskHeadConfig,
    MaskRCNNConfig,
    RoIHeadsConfig,
    RPNConfig,
)

from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.detectors.fcos import FCOSFPN
from fpn.detectors.mask_rcnn import MaskRCNNFPN
from fpn.spec import FeatureSpec  # what a backbone or neck you write declares of each output map
# from the training side, for inference from Python: either detector's checkpoint, or a torchvision file
from fpn.engine.checkpoint import load_detector

__version__ = "0.1.0"
__all__ = ["FasterRCNNFPN", "FasterRCNNConfig", "FCOSFPN", "FCOSConfig", "MaskRCNNFPN", "MaskRCNNConfig",
           "FeatureSpec", "load_detector"]

