"""Bottom-up pathways: ResNet trunks returning C2..C5 with their FeatureSpecs."""
from fpn.backbones.imagenet import load_imagenet_weights
from fpn.backbones.norm import FrozenBatchNorm2d, make_norm
from fpn.backbones.resnet import BasicBlock, Bottleneck, ResNet, build_resnet, freeze_stages

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "FrozenBatchNorm2d",
    "ResNet",
    "build_resnet",
    "freeze_stages",
    "load_imagenet_weights",
    "make_norm",
]
