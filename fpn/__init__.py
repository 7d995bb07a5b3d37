"""fpn: detectors on a Feature Pyramid Network (Lin et al., CVPR 2017) in plain PyTorch: Faster R-CNN (two-stage)
and FCOS (one-stage, anchor-free)."""
from fpn.config import (  # noqa: F401
    AnchorConfig,
    BackboneConfig,
    FasterRCNNConfig,
    FCOSConfig,
    FCOSHeadConfig,
    FPNConfig,
    InputConfig,
    RoIHeadsConfig,
    RPNConfig,
)

from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.detectors.fcos import FCOSFPN
# from the training side, for inference from Python: either detector's checkpoint, or a torchvision file
from fpn.engine.checkpoint import load_detector

__version__ = "0.1.0"
__all__ = ["FasterRCNNFPN", "FasterRCNNConfig", "FCOSFPN", "FCOSConfig", "load_detector"]

