"""Loading torchvision `fasterrcnn_resnet50_fpn` (v1), `fasterrcnn_resnet50_fpn_v2`,
`fasterrcnn_mobilenet_v3_large_fpn` and `fasterrcnn_mobilenet_v3_large_320_fpn` checkpoints into `FasterRCNNFPN`,
`maskrcnn_resnet50_fpn` and `maskrcnn_resnet50_fpn_v2` into `MaskRCNNFPN`, and `fcos_resnet50_fpn` checkpoints into
`FCOSFPN`.

Only parameter names differ between the two models (the architecture and the maths are the same):

    torchvision                                   fpn
    backbone.body.*                            -> backbone.* (MobileNetV3: backbone.features.*)
    backbone.fpn.inner_blocks.{i}[.0].*        -> neck.lateral_convs.{i}.*
    backbone.fpn.layer_blocks.{i}[.0].*        -> neck.output_convs.{i}.*
    rpn.head.conv[.0.0].*                      -> rpn.head.conv.*
    rpn.head.{cls_logits,bbox_pred}.*          -> rpn.head.{cls_logits,bbox_pred}.*
    roi_heads.box_head.{fc6,fc7}.*             -> roi_heads.box_head.{fc6,fc7}.*
    roi_heads.box_predictor.*                  -> roi_heads.predictor.*
  v2 (torchvision's Conv2dNormActivation children 0 and 1 become `conv` and `norm`; the other keys as above):
    backbone.fpn.inner_blocks.{i}.{0,1}.*      -> neck.lateral_convs.{i}.{conv,norm}.*
    backbone.fpn.layer_blocks.{i}.{0,1}.*      -> neck.output_convs.{i}.{conv,norm}.*
    rpn.head.conv.{j}.0.*                      -> rpn.head.conv.{j}.*
    roi_heads.box_head.{i}.{0,1}.*  (i < 4)    -> roi_heads.box_head.convs.{i}.{conv,norm}.*
    roi_heads.box_head.5.*  (after Flatten)    -> roi_heads.box_head.fc.*
  Mask R-CNN (its box part as the Faster R-CNN of the same version, above):
    roi_heads.mask_head.{i}.{0[,1]}.*          -> mask_branch.head.layers.{i}.{0[,1]}.* (conv[, v2's BatchNorm])
    roi_heads.mask_head.mask_fcn{i+1}.*        -> mask_branch.head.layers.{i}.0.* (files written before torchvision
                                                  named them as the others)
    roi_heads.mask_predictor.*                 -> mask_branch.predictor.* (conv5_mask, mask_fcn_logits)
  FCOS (the backbone and FPN keys as above):
    backbone.fpn.extra_blocks.{p6,p7}.*        -> neck.extra_convs.{0,1}.*
    head.{classification,regression}_head.*    -> head.{classification,regression}_head.* (same layout)
"""
from __future__ import annotations

import os
import re
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from fpn.config import FasterRCNNConfig, FCOSConfig, MaskRCNNConfig

_RULES = [
    (re.compile(r"^backbone\.body\."), "backbone."),
    (re.compile(r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?"), r"neck.lateral_convs.\1."),
    (re.compile(r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?"), r"neck.output_convs.\1."),
    (re.compile(r"^rpn\.head\.conv\.(?:0\.0\.)?"), "rpn.head.conv."),
    (re.compile(r"^roi_heads\.box_predictor\."), "roi_heads.predictor."),
]
_KEPT_AS_IS = re.compile(r"^(rpn\.head\.(cls_logits|bbox_pred)|roi_heads\.box_head\.fc[67])\.")
PREDICTOR_PREFIX = "roi_heads.predictor."
# torchvision's MobileNetV3 detectors keep the trunk's `features` children under backbone.body
_MOBILENET_RULES = [(re.compile(r"^backbone\.body\."), "backbone.features."), *_RULES[1:]]
MOBILENET_KEY = "backbone.body.16.0.weight"  # the last 1x1 conv of MobileNetV3-Large, in no ResNet file
# torchvision's fasterrcnn_mobilenet_v3_large_320_fpn: the same weights' layout, run on smaller inputs with fewer
# proposals; its files are named fasterrcnn_mobilenet_v3_large_320_fpn-*.pth
LOW_RESOLUTION_NAME = "_320_"


def _conv_norm(prefix: str):
    """A replacement naming torchvision's Conv2dNormActivation children "0" (conv) and "1" (norm) as ours."""
    return lambda match: f"{prefix}.{match[1]}.{('conv', 'norm')[int(match[2])]}."


# torchvision's fasterrcnn_resnet50_fpn_v2: BatchNorm after the FPN's convs, two RPN convs, the 4conv1fc box head
V2_KEY = "roi_heads.box_head.0.0.weight"  # the first conv of its box head, in no v1 or MobileNetV3 file
_V2_RULES = [
    _RULES[0],
    (re.compile(r"^backbone\.fpn\.inner_blocks\.(\d+)\.([01])\."), _conv_norm("neck.lateral_convs")),
    (re.compile(r"^backbone\.fpn\.layer_blocks\.(\d+)\.([01])\."), _conv_norm("neck.output_convs")),
    (re.compile(r"^rpn\.head\.conv\.(\d+)\.0\."), r"rpn.head.conv.\1."),
    (re.compile(r"^roi_heads\.box_head\.([0-3])\.([01])\."), _conv_norm("roi_heads.box_head.convs")),
    (re.compile(r"^roi_heads\.box_head\.5\."), "roi_heads.box_head.fc."),  # 4 is the Flatten, 6 the ReLU
    _RULES[-1],
]
_V2_KEPT_AS_IS = re.compile(r"^rpn\.head\.(cls_logits|bbox_pred)\.")


# torchvision's maskrcnn_resnet50_fpn (v1) and _v2: a Faster R-CNN of that version plus the mask branch
MASK_KEY = "roi_heads.mask_predictor.mask_fcn_logits.weight"
MASK_PREFIX = "roi_heads.mask_"
_MASK_RULES = [
    (re.compile(r"^roi_heads\.mask_head\.(\d+)\.([01])\."), r"mask_branch.head.layers.\1.\2."),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\."),
     lambda match: f"mask_branch.head.layers.{int(match[1]) - 1}.0."),
    (re.compile(r"^roi_heads\.mask_predictor\."), "mask_branch.predictor."),
]
MASK_LOGITS = "mask_branch.predictor.mask_fcn_logits."


_FCOS_RULES = [
    *_RULES[:3],
    (re.compile(r"^backbone\.fpn\.extra_blocks\.p6\."), "neck.extra_convs.0."),
    (re.compile(r"^backbone\.fpn\.extra_blocks\.p7\."), "neck.extra_convs.1."),
]
_FCOS_KEPT_AS_IS = re.compile(r"^head\.(classification|regression)_head\.")
FCOS_LOGITS = "head.classification_head.cls_logits."
_OURS = "(a checkpoint of this project, either detector, loads with fpn.load_detector(path))"


def convert_torchvision_fcos_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename a torchvision FCOS state dict into fpn's names; unknown keys raise a ValueError."""
    return _convert(state_dict, _FCOS_RULES, _FCOS_KEPT_AS_IS, "fcos_resnet50_fpn")


def convert_torchvision_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Rename a torchvision Faster R-CNN state dict (ResNet-50 FPN v1 or v2, MobileNetV3-Large FPN) or Mask R-CNN
    state dict (ResNet-50 FPN v1 or v2) into fpn's names; unknown keys raise a ValueError.

    torchvision builds the v1 trunk with BatchNorm2d when constructed without pretrained weights and with
    FrozenBatchNorm2d otherwise; both have the same four buffers, which load into fpn's frozen BN. The v2 model
    (`V2_KEY`) has BatchNorm2d everywhere, as ours built from it: its step counters are kept.
    """
    if MASK_KEY in state_dict:  # the box part as a Faster R-CNN file, then the mask branch
        box = convert_torchvision_state_dict({k: v for k, v in state_dict.items() if not k.startswith(MASK_PREFIX)})
        mask = {k: v for k, v in state_dict.items() if k.startswith(MASK_PREFIX)}
        name = "maskrcnn_resnet50_fpn" + ("_v2" if V2_KEY in state_dict else "")
        return {**box, **_convert(mask, _MASK_RULES, re.compile("$^"), name, keep_counters=V2_KEY in state_dict)}
    if V2_KEY in state_dict:
        return _convert(state_dict, _V2_RULES, _V2_KEPT_AS_IS, "fasterrcnn_resnet50_fpn_v2", keep_counters=True)
    if MOBILENET_KEY in state_dict:
        return _convert(state_dict, _MOBILENET_RULES, _KEPT_AS_IS, "fasterrcnn_mobilenet_v3_large_fpn")
    return _convert(state_dict, _RULES, _KEPT_AS_IS, "fasterrcnn_resnet50_fpn")


def _convert(state_dict: Dict[str, Tensor], rules, kept_as_is, name: str,
             keep_counters: bool = False) -> Dict[str, Tensor]:
    converted, unknown = {}, []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") and not keep_counters:  # BatchNorm bookkeeping; frozen BN has none
            continue
        new_key = key if kept_as_is.match(key) else None
        for pattern, replacement in rules:
            if new_key is None and pattern.match(key):
                new_key = pattern.sub(replacement, key, count=1)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(f"not a torchvision {name} state dict: unexpected keys {unknown[:10]} {_OURS}")
    return converted


def read_torchvision_checkpoint(path_or_state_dict: Union[str, os.PathLike, Dict[str, Tensor]],
                                required: str = "roi_heads.box_predictor.cls_score.weight",
                                name: str = "fasterrcnn_resnet50_fpn") -> Dict[str, Tensor]:
    """A state dict from a file (plain, or nested under "model" as torchvision's reference scripts save it),
    read with `weights_only=True`, or the given dict itself; it must hold the key `required` (of model `name`)."""
    if isinstance(path_or_state_dict, dict):
        state = path_or_state_dict
    else:
        path = os.fspath(path_or_state_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"torchvision checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # corrupt file, or one that needs unpickling arbitrary objects
            raise ValueError(f"cannot read torchvision checkpoint {path}: {error}") from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or required not in state:
        raise ValueError(f"not a torchvision {name} checkpoint: no {required} {_OURS}")
    return state


def torchvision_detector_config(config_class=FasterRCNNConfig):
    """The config of a torchvision ResNet-50 detector as torchvision builds it with weights: frozen BN, stem and C2
    frozen. Explicit, since our default without backbone weights is trainable BN in every stage."""
    config = config_class()
    config.backbone.norm, config.backbone.trainable_stages = "frozen_bn", 3
    return config


def torchvision_v2_config(config_class=FasterRCNNConfig):
    """torchvision's `fasterrcnn_resnet50_fpn_v2` (or `maskrcnn_resnet50_fpn_v2`, with config_class MaskRCNNConfig:
    BatchNorm in the mask head too) as it builds it with weights: ResNet-50 with BatchNorm2d (its v2 builders keep
    torchvision's ResNet default, not frozen BN), stem and C2 frozen; BatchNorm after every FPN conv, two 3x3 convs
    in the RPN head, the 4conv1fc box head."""
    config = torchvision_detector_config(config_class)
    if isinstance(config, MaskRCNNConfig):
        config.mask.norm = "bn"
    config.backbone.norm = "bn"
    config.fpn.norm = "bn"
    config.rpn.conv_depth = 2
    config.roi_heads.box_head = "4conv1fc"
    return config


def torchvision_mobilenet_config(low_resolution: bool = False) -> FasterRCNNConfig:
    """torchvision's `fasterrcnn_mobilenet_v3_large_fpn` (or with `low_resolution`, `..._320_fpn`) as it builds
    them with weights: MobileNetV3-Large with frozen BN and 3 trained stages, the FPN on its two stride-32 maps
    and P6, every anchor size 32..512 on each of the three levels, proposals of objectness below 0.05 dropped;
    the 320 model resizes to 320 / 640 px and keeps 150 proposals per level before NMS and per image after it."""
    config = torchvision_detector_config()
    config.backbone.name = "mobilenet_v3_large"
    config.anchors.every_size_on_every_level = True
    config.rpn.score_thresh = 0.05
    if low_resolution:
        config.input.min_size, config.input.max_size, config.input.train_min_sizes = 320, 640, (320,)
        config.rpn.pre_nms_top_n_test = config.rpn.post_nms_top_n_test = 150
    return config


def load_torchvision_detector(cls, path_or_state_dict, num_classes: Optional[int] = None,
                              low_resolution: Optional[bool] = None):
    """Build `cls` (FasterRCNNFPN, or MaskRCNNFPN for a Mask R-CNN file) as torchvision builds the file's detector
    (`torchvision_detector_config()`, `torchvision_v2_config()` for a v2 file, `torchvision_mobilenet_config(
    low_resolution)` for a MobileNetV3 file) and load its weights. A MobileNetV3 file holds no trace of 320 or not:
    `low_resolution` None takes it from a file name holding "_320_".

    Raises:
        ValueError: a Mask R-CNN file for a detector without masks, or a Faster R-CNN file for MaskRCNNFPN (the
            file's model named), or keys that do not fit.
    """
    state = read_torchvision_checkpoint(path_or_state_dict)
    config_class = getattr(cls, "config_class", FasterRCNNConfig)  # MaskRCNNFPN's: MaskRCNNConfig
    if (MASK_KEY in state) != issubclass(config_class, MaskRCNNConfig):
        model = "a maskrcnn_resnet50_fpn" if MASK_KEY in state else "a Faster R-CNN (no mask branch)"
        raise ValueError(f"the file holds {model} model: load it with "
                         f"{'MaskRCNNFPN' if MASK_KEY in state else 'FasterRCNNFPN'}.from_torchvision or "
                         "fpn.load_detector")
    config = torchvision_v2_config(config_class) if V2_KEY in state else torchvision_detector_config(config_class)
    if MOBILENET_KEY in state:
        if low_resolution is None:
            low_resolution = not isinstance(path_or_state_dict, dict) and \
                LOW_RESOLUTION_NAME in os.path.basename(os.fspath(path_or_state_dict))
        config = torchvision_mobilenet_config(low_resolution)
    class_specific = (PREDICTOR_PREFIX, MASK_LOGITS) if MASK_KEY in state else (PREDICTOR_PREFIX,)
    state = convert_torchvision_state_dict(state)
    return _build_and_load(cls, config, state, class_specific, PREDICTOR_PREFIX + "cls_score.weight", num_classes)


def load_torchvision_fcos(cls, path_or_state_dict, num_classes: Optional[int] = None):
    """Build `cls` (FCOSFPN) as torchvision builds `fcos_resnet50_fpn` with weights and load its weights."""
    state = read_torchvision_checkpoint(path_or_state_dict, FCOS_LOGITS + "weight", "fcos_resnet50_fpn")
    state = convert_torchvision_fcos_state_dict(state)
    return _build_and_load(cls, torchvision_detector_config(FCOSConfig), state, (FCOS_LOGITS,), FCOS_LOGITS + "weight",
                           num_classes)


def _build_and_load(cls, config, state: Dict[str, Tensor], class_prefixes: Tuple[str, ...], class_key: str,
                    num_classes: Optional[int]):
    """The model with every converted tensor loaded. With a `num_classes` other than the file's (the rows of
    `state[class_key]`), the tensors under `class_prefixes` (the class-specific outputs: class scores and box
    deltas, Mask R-CNN's mask logits) keep their fresh initialisation (fine-tuning)."""
    file_classes = state[class_key].shape[0]
    num_classes = file_classes if num_classes is None else num_classes
    model = cls(num_classes=num_classes, config=config)
    fresh = num_classes != file_classes
    if fresh:
        state = {k: v for k, v in state.items() if not k.startswith(class_prefixes)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (fresh and k.startswith(class_prefixes))]
    if missing or unexpected:
        raise ValueError(f"torchvision checkpoint does not fit: missing {missing[:10]}, unexpected {unexpected[:10]}")
    return model
