"""Loading ImageNet-pretrained ResNet, RegNetX or MobileNetV3 weights saved in torchvision's key layout (e.g.
resnet50-*.pth, regnet_x_400mf-*.pth, mobilenet_v3_large-*.pth)."""
from __future__ import annotations

import os
from typing import Dict, List, Mapping

import torch
from torch import nn

from fpn.io.weights_file import read_weights

_MAX_LISTED = 10  # keys shown per category in an error message
CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # ResNet's and RegNet's classifier, MobileNetV3's


def load_imagenet_weights(model: nn.Module, path: str) -> None:
    """Copy an ImageNet classification checkpoint (torchvision's layout) into a ResNet, RegNetX or MobileNetV3
    backbone, in place.

    The classifier (`fc.*`, MobileNetV3's `classifier.*`) and BatchNorm step counters (`*.num_batches_tracked`)
    are ignored. When the model uses GroupNorm, the checkpoint's BatchNorm statistics (`running_mean`/
    `running_var`) have nowhere to go and are ignored too; the affine `weight`/`bias` still load, since GroupNorm
    keeps the norms' names.

    Args:
        model: a fpn.backbones.ResNet, RegNetX or MobileNetV3 (any norm kind).
        path: local file written by torch.save: a state dict, or a dict holding one under "state_dict"
            or "model". Loaded with map_location="cpu", weights_only=True.

    Raises:
        InputError: `path` is missing, a folder, empty, truncated, not a torch file, or a pickle that would run code
            (`fpn.io.weights_file.read_weights`).
        ValueError: the file holds no state dict, or its keys/shapes differ from the model's; the message
            names the path and lists the missing, unexpected and shape-mismatched keys.
    """
    path = os.fspath(path)
    checkpoint = read_weights(path, "ImageNet weights file")
    state = _select_state_dict(checkpoint, path)
    state = _drop_ignored_keys(state, _groupnorm_names(model))

    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            _describe("missing keys", missing),
            _describe("unexpected keys", unexpected),
            _describe("shape mismatches", mismatched),
        ]
        raise ValueError(f"{path!r} does not match the backbone: " + "; ".join(p for p in problems if p))
    # every model key except the step counters is present, so strict=False only skips those counters
    model.load_state_dict(state, strict=False)


def _select_state_dict(checkpoint: object, path: str) -> Dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: itself, or its "state_dict" / "model" entry."""
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(
            f"{path!r} holds no state dict (expected a dict of tensors, possibly under 'state_dict' or "
            f"'model'; got {type(checkpoint).__name__})"
        )
    return dict(checkpoint)


def _groupnorm_names(model: nn.Module) -> List[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.GroupNorm)]


def _drop_ignored_keys(state: Dict[str, torch.Tensor], groupnorm_names: List[str]) -> Dict[str, torch.Tensor]:
    """Remove the classifier, step counters, and BatchNorm statistics aimed at GroupNorm layers."""
    stats_without_home = {f"{name}.{stat}" for name in groupnorm_names for stat in ("running_mean", "running_var")}
    return {
        k: v
        for k, v in state.items()
        if not k.startswith(CLASSIFIER_PREFIXES) and not k.endswith("num_batches_tracked")
        and k not in stats_without_home
    }


def _describe(label: str, keys: List[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)} {label} [{shown}{more}]"
