"""fpn: Faster R-CNN with a Feature Pyramid Network (Lin et al., CVPR 2017) in plain PyTorch."""
from fpn.config import (  # noqa: F401
    AnchorConfig,
    BackboneConfig,
    FasterRCNNConfig,
    FPNConfig,
    InputConfig,
    RoIHeadsConfig,
    RPNConfig,
)

from fpn.detectors.faster_rcnn import FasterRCNNFPN

__version__ = "0.1.0"
__all__ = ["FasterRCNNFPN", "FasterRCNNConfig"]

