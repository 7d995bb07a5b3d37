"""The detector architectures by name: what a checkpoint's `arch` says, what `--arch` chooses.

    ARCHITECTURES = {"faster_rcnn": (FasterRCNNConfig, FasterRCNNFPN), "fcos": (FCOSConfig, FCOSFPN)}

A checkpoint stores `arch` next to its config (`fpn.engine.checkpoint`); a file without one was written before
there were two detectors and holds a Faster R-CNN.
"""
from typing import Any, Dict, Optional, Tuple, Type

from torch import nn

from fpn.config import FasterRCNNConfig, FCOSConfig
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.detectors.fcos import FCOSFPN

ARCHITECTURES: Dict[str, Tuple[Type, Type[nn.Module]]] = {
    "faster_rcnn": (FasterRCNNConfig, FasterRCNNFPN),
    "fcos": (FCOSConfig, FCOSFPN),
}
DEFAULT_ARCH = "faster_rcnn"  # what a checkpoint without `arch` holds


def check_arch(arch: Any) -> str:
    """`arch` if it names an architecture, else a ValueError naming it and the choices."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown detector architecture {arch!r}; the choices are {', '.join(ARCHITECTURES)}")
    return arch


def arch_of(model_or_config: Any) -> str:
    """The architecture name of a detector or of its config (an `optimize_for_inference` copy: of its model)."""
    target = getattr(model_or_config, "model", model_or_config)  # InferenceModel wraps the detector
    for name, (config_class, model_class) in ARCHITECTURES.items():
        if isinstance(target, (config_class, model_class)):
            return name
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
    """`config` as the config of architecture `arch`: the sections both have (backbone, fpn, input,
    channels_last) carried over, the detector-specific ones at that architecture's defaults. Used by
    `--arch` to put the other detector on a preset's trunk and input sizes."""
    target = ARCHITECTURES[check_arch(arch)][0]
    if isinstance(config, target):
        return config
    converted = target()
    for name in ("backbone", "fpn", "input", "channels_last"):
        setattr(converted, name, getattr(config, name))
    return converted
