"""Loading a detector for inference from a file: one of our training checkpoints (either detector, its `arch`
field) or a torchvision detector state dict (its keys say which detector).

Loading is not training: this module reads what `fpn.engine.checkpoint.save_checkpoint` writes (the fields are
listed there) and needs nothing of the training side. `fpn.load_detector` and `fpn.engine.checkpoint.load_detector`
are this function.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from fpn.data.coco_names import COCO_CLASS_NAMES
from fpn.detectors.build import DEFAULT_ARCH, arch_of, build_detector, check_arch, config_from_dict
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.detectors.fcos import FCOSFPN
from fpn.detectors.mask_rcnn import MaskRCNNFPN
from fpn.errors import InputError, first_line
from fpn.io.convert import MASK_KEY, V2_KEY
from fpn.io.weights_file import read_weights

PathLike = Union[str, Path]


def is_training_checkpoint(obj: Any) -> bool:
    """Whether `obj` (a loaded file) is a training checkpoint of this project (`fpn.engine.checkpoint`)."""
    return isinstance(obj, dict) and {"model", "config", "num_classes", "iteration"} <= set(obj)


def checkpoint_arch(checkpoint: Dict[str, Any]) -> str:
    """The detector architecture a training checkpoint holds ("faster_rcnn" for files older than the field)."""
    return check_arch(checkpoint.get("arch", DEFAULT_ARCH))


def build_from_checkpoint(checkpoint: Dict[str, Any]) -> nn.Module:
    """A detector of the architecture, config, class count and weights stored in a training checkpoint.

    Raises:
        ValueError: the checkpoint's model was built with parts passed in by their author (`given_modules`), which
            its config cannot rebuild (a part of the same parameter names would load silently into the wrong
            module otherwise).
    """
    given = list(checkpoint.get("given_modules") or [])
    if given:
        raise ValueError(f"its detector was built with parts passed in by their author ({', '.join(given)}), "
                         "which the stored config cannot rebuild: build the detector with the same parts and "
                         "load_state_dict(checkpoint['model']) (README, \"Extending fpn\")")
    config = config_from_dict(checkpoint_arch(checkpoint), checkpoint["config"])
    config.backbone.weights = None  # the checkpoint's weights replace any ImageNet initialisation
    model = build_detector(int(checkpoint["num_classes"]), config)
    model.load_state_dict(checkpoint["model"])
    return model


def load_detector(path: PathLike, device: Union[str, torch.device] = "cpu",
                  arch: Optional[str] = None) -> Tuple[nn.Module, Dict[int, str]]:
    """Load a detector for inference from one of our checkpoints or from a torchvision detector file, whichever
    architecture it holds (the checkpoint's `arch`; a torchvision file's keys).

    Args:
        path: a training checkpoint written by `save_checkpoint`, or a torchvision detector state dict:
            `fasterrcnn_resnet50_fpn` (e.g. `fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`), `fasterrcnn_resnet50_fpn_v2`,
            `fasterrcnn_mobilenet_v3_large_fpn` / `_320_fpn` or `fcos_resnet50_fpn`.
        device: where to put the model.
        arch: the architecture the caller needs ("faster_rcnn", "fcos"); None accepts either. A file of the
            other one is an InputError saying so.
    Returns:
        (model in eval mode on `device`, class_names {label: name}); a torchvision file gets the 91 COCO names.
    """
    path = Path(path)
    obj = read_weights(path, "weights file")
    if is_training_checkpoint(obj):
        try:
            found = checkpoint_arch(obj)
        except ValueError as error:
            raise InputError(f"checkpoint {path}: {error}") from None
        if arch is not None and found != check_arch(arch):
            raise InputError(f"checkpoint {path} holds a {found} detector; a {arch} detector is needed here")
        try:
            model = build_from_checkpoint(obj)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:  # an edited or foreign file
            raise InputError(f"checkpoint {path}: cannot build a detector from it ({first_line(error)})") from error
        class_names = {int(k): str(v) for k, v in obj.get("class_names", {}).items()}
    else:
        model = torchvision_detector(obj, path)
        if arch is not None and arch_of(model) != check_arch(arch):
            raise InputError(f"{path} holds a torchvision {arch_of(model)} detector; a {arch} detector is needed here")
        # torchvision's COCO detectors use the raw COCO category ids as labels (91 outputs)
        class_names = dict(COCO_CLASS_NAMES) if model.num_classes == len(COCO_CLASS_NAMES) else {}
    try:
        return model.to(device).eval(), class_names
    except (RuntimeError, AssertionError) as error:  # torch raises AssertionError for CUDA on a CPU-only build
        raise InputError(f"device {device}: cannot run the model there ({first_line(error)})") from error


def torchvision_detector(obj: Any, path: Path) -> nn.Module:
    """The detector of a torchvision state dict file (FCOS when it has FCOS's head, else Faster R-CNN: v1, v2 or
    MobileNetV3, as its keys say, `FasterRCNNFPN.from_torchvision`), or InputError saying what the file is
    instead."""
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = f"a {type(obj).__name__}" + (f" with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else "")
        raise InputError(f"{path} is neither a training checkpoint of this project nor a torchvision detector "
                         f"state dict (it holds {kind})")
    fcos, masks = any(key.startswith("head.classification_head.") for key in obj), MASK_KEY in obj
    name = "fcos_resnet50_fpn" if fcos else ("maskrcnn" if masks else "fasterrcnn") + "_resnet50_fpn" + \
        ("_v2" if V2_KEY in obj else "")
    detector_class = FCOSFPN if fcos else MaskRCNNFPN if masks else FasterRCNNFPN
    # a MobileNetV3 file holds no trace of its input size: the 320 model's settings come from its name
    extra = {} if fcos or masks else {"low_resolution": "_320_" in Path(path).name}
    try:
        return detector_class.from_torchvision(obj, **extra)
    except (KeyError, ValueError, RuntimeError) as error:
        raise InputError(f"{path} is not a torchvision {name} state dict: {first_line(error)}") from error
