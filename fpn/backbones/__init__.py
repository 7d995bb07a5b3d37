"""Bottom-up pathways: ResNet and RegNetX trunks returning C2..C5, MobileNetV3-Large returning its two stride-32
maps, with their FeatureSpecs; `build_backbone` builds the configured one."""
from fpn.backbones.build import BACKBONES, build_backbone
from fpn.backbones.imagenet import load_imagenet_weights
from fpn.backbones.mobilenet_v3 import MobileNetV3, build_mobilenet_v3
from fpn.backbones.norm import FrozenBatchNorm2d, make_norm
from fpn.backbones.regnet import REGNET_X, RegNetX, build_regnet
from fpn.backbones.resnet import BasicBlock, Bottleneck, ResNet, build_resnet, freeze_stages

__all__ = [
    "BACKBONES",
    "build_backbone",
    "build_mobilenet_v3",
    "BasicBlock",
    "Bottleneck",
    "FrozenBatchNorm2d",
    "MobileNetV3",
    "REGNET_X",
    "RegNetX",
    "ResNet",
    "build_regnet",
    "build_resnet",
    "freeze_stages",
    "load_imagenet_weights",
    "make_norm",
]
