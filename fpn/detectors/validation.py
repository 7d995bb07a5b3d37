"""Checks of the detector's public inputs: a clear ValueError naming the bad value, or a warning naming a legal
value that is almost surely a mistake (0..255 images), never a silent wrong answer."""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

# Devices whose tensors the host reads without waiting for queued work. On any other (CUDA, MPS, ...) reading a
# value is a host sync, so image values there are checked once per model, not on every call.
HOST_READABLE_DEVICES = ("cpu",)
# Images a little above 1 are harmless (bicubic or antialiased resizing overshoots); 0..255 pixels, or images
# normalised twice, go far above.
MAX_IMAGE_VALUE = 1.5


def check_images(images: Sequence[Tensor]) -> None:
    """Images must be a non-empty list of float (3, H, W) tensors with H, W >= 1."""
    if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
        raise ValueError(
            f"images must be a list of (3, H, W) tensors, got {type(images).__name__}"
            + (f" of shape {tuple(images.shape)}" if isinstance(images, Tensor) else "")
        )
    if len(images) == 0:
        raise ValueError("images is an empty list; pass at least one (3, H, W) tensor")
    for i, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise ValueError(f"images[{i}] must be a tensor, got {type(image).__name__}")
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"images[{i}] must have shape (3, H, W), got {tuple(image.shape)}")
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"images[{i}] is empty: shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(
                f"images[{i}] has dtype {image.dtype}; the model takes float images in [0, 1] "
                "(use model.predict for uint8 tensors or PIL images)"
            )


def check_value_range(images: Sequence[Tensor], *, read_accelerator_images: bool) -> bool:
    """Warn about each image with values above `MAX_IMAGE_VALUE`: the model expects [0, 1], and the normalised
    pixels of a 0..255 image are ~1000 standard deviations out, so it finds little or nothing there.

    CPU images are always checked (reading them costs nothing); images on another device only when
    `read_accelerator_images`, with one host read for all of them.

    Args:
        images: float (3, H, W) tensors (already passed `check_images`).
        read_accelerator_images: also read the values of images that are not on the CPU.

    Returns:
        True when the values of images on an accelerator were read (the caller's one sync is spent).
    """
    picked = [(i, image) for i, image in enumerate(images)
              if image.device.type in HOST_READABLE_DEVICES or read_accelerator_images]
    if not picked:
        return False
    maxima = [image.detach().amax() for _, image in picked]  # (,) each, on the image's device
    values = torch.stack([m.to(maxima[0].device) for m in maxima]).tolist()  # the one host read
    for (i, _), value in zip(picked, values):
        if value > MAX_IMAGE_VALUE:
            warnings.warn(
                f"images[{i}] has values up to {value:g}, but the model expects float images in [0, 1] (given "
                "0..255 values it detects little or nothing): divide the image by 255, or pass the uint8 tensor to "
                "model.predict",
                stacklevel=2,
            )
    return any(image.device.type not in HOST_READABLE_DEVICES for _, image in picked)


def check_targets(targets: Optional[List[Dict[str, Tensor]]], num_images: int, num_classes: int) -> None:
    """Training targets: one dict per image with `boxes` (N, 4) xyxy (x2 > x1, y2 > y1) and `labels` (N,)
    int64 in 1..num_classes-1 (0 is the background).

    Shapes and dtypes are checked image by image; the values of the whole batch are checked at once, with a
    single read on the host (one sync with an accelerator per batch, not one per image or per box)."""
    if targets is None:
        raise ValueError("targets are required in training mode (call model.eval() for inference)")
    if not isinstance(targets, (list, tuple)) or len(targets) != num_images:
        count = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"targets must be a list with one dict per image: {num_images} images, got {count}")
    for i, target in enumerate(targets):
        _check_target_shapes(i, target)
    boxes = torch.cat([t["boxes"] for t in targets])  # (sum N, 4)
    labels = torch.cat([t["labels"] for t in targets])  # (sum N,)
    if labels.numel() and bool((~_valid_values(boxes, labels, num_classes)).any()):  # the one host read
        for i, target in enumerate(targets):
            _check_target_values(i, target["boxes"], target["labels"], num_classes)


def _check_target_shapes(i: int, target: Dict[str, Tensor]) -> None:
    if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
        raise ValueError(f"targets[{i}] must be a dict with 'boxes' and 'labels'")
    boxes, labels = target["boxes"], target["labels"]
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"targets[{i}]['boxes'] must have shape (N, 4), got {shape}")
    if not boxes.is_floating_point():
        raise ValueError(f"targets[{i}]['boxes'] must be a float tensor, got {boxes.dtype}")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != boxes.shape[0]:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"targets[{i}]['labels'] must have shape ({boxes.shape[0]},), got {shape}")
    if labels.dtype != torch.int64:
        raise ValueError(f"targets[{i}]['labels'] must be int64, got {labels.dtype}")


def _valid_values(boxes: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    # (N,) bool: label in 1..num_classes-1, finite coordinates, x1 < x2 and y1 < y2
    finite = torch.isfinite(boxes).all(dim=1)
    positive_size = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return finite & positive_size & (labels >= 1) & (labels < num_classes)


def _check_target_values(i: int, boxes: Tensor, labels: Tensor, num_classes: int) -> None:
    # The error path: reads values freely to name the first bad one.
    bad_labels = (labels < 1) | (labels >= num_classes)
    if bad_labels.any():
        raise ValueError(
            f"targets[{i}]['labels'] has label {labels[bad_labels][0].item()}, outside 1..{num_classes - 1} "
            f"(num_classes={num_classes} includes the background 0)"
        )
    if not torch.isfinite(boxes).all():
        raise ValueError(f"targets[{i}]['boxes'] contains non-finite values")
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if degenerate.any():
        j = int(torch.where(degenerate)[0][0])
        raise ValueError(
            f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} has no positive width and height "
            "(expected x1 < x2 and y1 < y2, absolute pixels)"
        )


def check_target_masks(images: Sequence[Tensor], targets: Sequence[Dict[str, Tensor]]) -> None:
    """Mask R-CNN's training targets: each also holds `masks` (N, H, W) uint8 or bool (0/1), one per box, at the
    size (H, W) of its image (the model resizes the boxes, and reads the masks at their own size). Shapes only:
    no value is read."""
    for i, (image, target) in enumerate(zip(images, targets)):
        masks = target.get("masks")
        if masks is None:
            raise ValueError(f"targets[{i}] has no 'masks': Mask R-CNN trains on one mask per box (N, H, W)")
        expected = (target["boxes"].shape[0], image.shape[-2], image.shape[-1])
        if not isinstance(masks, Tensor) or tuple(masks.shape) != expected:
            shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"targets[{i}]['masks'] must have shape {expected} (boxes, image height, width), "
                             f"got {shape}")
        if masks.dtype not in (torch.uint8, torch.bool):
            raise ValueError(f"targets[{i}]['masks'] must be uint8 or bool (0/1), got {masks.dtype}")
