"""fpn: Faster R-CNN with a Feature Pyramid Network (Lin et al., CVPR 2017) in plain PyTorch."""
from fpn.config import (
    AnchorConfig,
    BackboneConfig,
    FasterRCNNConfig,
    FPNConfig,
    InputConfig,
    RoIHeadsConfig,
    RPNConfig,
)

__version__ = "0.1.0"
