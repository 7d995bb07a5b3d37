"""The detector architectures by name: what a checkpoint's `arch` says, what `--arch` chooses.

    ARCHITECTURES = {"faster_rcnn": (FasterRCNNConfig, FasterRCNNFPN), "fcos": (FCOSConfig, FCOSFPN),
                     "mask_rcnn": (MaskRCNNConfig, MaskRCNNFPN)}

A checkpoint stores `arch` next to its config (`fpn.engine.checkpoint`); a file without one was written before
there were two detectors and holds a Faster R-CNN.
"""
from dataclasses import fields
from typing import Any, Dict, Optional, Tuple, Type

from torch import nn

from fpn.config import FasterRCNNConfig, FCOSConfig, MaskRCNNConfig
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.detectors.fcos import FCOSFPN
from fpn.detectors.mask_rcnn import MaskRCNNFPN

ARCHITECTURES: Dict[str, Tuple[Type, Type[nn.Module]]] = {
    "faster_rcnn": (FasterRCNNConfig, FasterRCNNFPN),
    "fcos": (FCOSConfig, FCOSFPN),
    "mask_rcnn": (MaskRCNNConfig, MaskRCNNFPN),
}
DEFAULT_ARCH = "faster_rcnn"  # what a checkpoint without `arch` holds


def check_arch(arch: Any) -> str:
    """`arch` if it names an architecture, else a ValueError naming it and the choices."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown detector architecture {arch!r}; the choices are {', '.join(ARCHITECTURES)}")
    return arch


def arch_of(model_or_config: Any) -> str:
    """The architecture name of a detector or of its config (an `optimize_for_inference` copy: of its model).
    A subclass is its nearest architecture's (MaskRCNNFPN is a FasterRCNNFPN too: it is "mask_rcnn")."""
    target = getattr(model_or_config, "model", model_or_config)  # InferenceModel wraps the detector
    found = [(len(classes[0].__mro__), name) for name, classes in ARCHITECTURES.items() if isinstance(target, classes)]
    if found:
        return max(found)[1]
    raise ValueError(f"{type(model_or_config).__name__} is not one of the detectors: {', '.join(ARCHITECTURES)}")


def is_rpn_only(model: nn.Module) -> bool:
    """Whether `model` is an RPN alone (a Faster R-CNN with `config.rpn_only`, paper Table 1): its outputs are
    class-agnostic proposals, scored by recall rather than AP."""
    return bool(getattr(model.config, "rpn_only", False))


def config_from_dict(arch: str, data: dict):
    """The config of architecture `arch` rebuilt from its `to_dict()` (unknown keys are a ValueError)."""
    return ARCHITECTURES[check_arch(arch)][0].from_dict(data)


def build_detector(num_classes: int, config, modules: Optional[Dict[str, nn.Module]] = None) -> nn.Module:
    """The detector of `config`'s architecture (FasterRCNNConfig -> FasterRCNNFPN, FCOSConfig -> FCOSFPN), with
    `modules` (parts a user wrote, by the detector's keyword: backbone, neck, rpn_head, box_head; FCOS's head) in
    place of the configured ones."""
    return ARCHITECTURES[arch_of(config)][1](num_classes=num_classes, config=config, **(modules or {}))


def convert_config(config, arch: str):
    """`config` as the config of architecture `arch`: the sections both have carried over (all of Faster
    R-CNN's into Mask R-CNN's and back; backbone, fpn, input and channels_last between a two-stage detector and
    FCOS), the others at that architecture's defaults. Used by `--arch` to put another detector on a preset's trunk
    and input sizes."""
    target = ARCHITECTURES[check_arch(arch)][0]
    if type(config) is target:
        return config
    converted = target()
    shared = {f.name for f in fields(target)} & {f.name for f in fields(config)}
    if isinstance(config, FCOSConfig) or target is FCOSConfig:
        shared = {"backbone", "fpn", "input", "channels_last"}
    for name in sorted(shared):
        setattr(converted, name, getattr(config, name))
    return converted
