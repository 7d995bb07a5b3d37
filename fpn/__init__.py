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


def __getattr__(name):
    if name == "FasterRCNNFPN":  # imported lazily so that `import fpn` stays light
        from fpn.model import FasterRCNNFPN

        return FasterRCNNFPN
    raise AttributeError(f"module 'fpn' has no attribute {name!r}")
