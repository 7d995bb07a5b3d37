"""Build the trunk a `fpn.config.BackboneConfig` names (`name`): the one entry point the detectors call."""
from torch import nn

from fpn.backbones.mobilenet_v3 import build_mobilenet_v3
from fpn.backbones.regnet import REGNET_X, build_regnet
from fpn.backbones.resnet import build_resnet

BACKBONES = ("resnet", *REGNET_X, "mobilenet_v3_large")  # the values of BackboneConfig.name


def build_backbone(cfg) -> nn.Module:
    """The trunk of `cfg` (ImageNet weights loaded when `cfg.weights` is set): a module whose forward maps
    (N, 3, H, W) to {"c2": ..., "c5": ...} (MobileNetV3: {"c4", "c5"}) and whose `out_specs` gives each map's
    FeatureSpec."""
    if cfg.name == "resnet":
        return build_resnet(cfg)
    if cfg.name in REGNET_X:
        return build_regnet(cfg)
    if cfg.name == "mobilenet_v3_large":
        return build_mobilenet_v3(cfg)
    raise ValueError(f"backbone.name must be one of {', '.join(BACKBONES)}; got {cfg.name!r}")
