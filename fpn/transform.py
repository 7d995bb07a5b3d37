"""Input side of the detector: normalise, resize, pad into a batch; and map detections back.

Shape shorthand: N images, Hp/Wp padded batch size, (h, w) an image's size after resizing.
Boxes everywhere are (x1, y1, x2, y2) in absolute pixels of the frame named in the comment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fpn.config import InputConfig


@dataclass
class ImageBatch:
    """A padded batch: `tensor` (N, 3, Hp, Wp) normalised and zero-padded at the bottom/right, and each image's
    size (h, w) after resizing, before padding (the frame that proposals and detections live in)."""

    tensor: Tensor
    image_sizes: List[Tuple[int, int]]


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Resize (3, H, W) so the shorter side is `min_size` unless the longer would exceed `max_size` (bilinear).

    The scale is applied with `recompute_scale_factor=True`, so the new size is floor(H * scale), exactly as
    torchvision's detection transform does (same weights -> same detections).
    """
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    resized = F.interpolate(
        image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )
    return resized[0]


def scale_boxes(boxes: Tensor, from_size: Tuple[int, int], to_size: Tuple[int, int]) -> Tensor:
    """Map (N, 4) boxes from an image of size `from_size` (h, w) to the same image resized to `to_size`.

    The ratios are float32 quotients, as torchvision's resize_boxes computes them, but computed on the host:
    a tensor made from Python numbers on an accelerator is a blocking host-to-device copy.
    """
    ratio_h = float(np.float32(to_size[0]) / np.float32(from_size[0]))
    ratio_w = float(np.float32(to_size[1]) / np.float32(from_size[1]))
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=-1)


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(image - mean) / std per channel of a (3, H, W) image, with the statistics as Python numbers: the same
    arithmetic as with (3, 1, 1) tensors of the image's dtype, without copying host data to the device."""
    return torch.stack([(channel - m) / s for channel, m, s in zip(image, mean, std)])


def pad_batch(images: Sequence[Tensor], size_divisible: int) -> Tensor:
    """Stack (3, h_i, w_i) images into (N, 3, Hp, Wp), zero-padded, Hp and Wp multiples of `size_divisible`."""
    max_h = max(img.shape[-2] for img in images)
    max_w = max(img.shape[-1] for img in images)
    pad_h = int(math.ceil(max_h / size_divisible) * size_divisible)
    pad_w = int(math.ceil(max_w / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), images[0].shape[0], pad_h, pad_w))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch


def preprocess(
    images: Sequence[Tensor],
    targets: Optional[Sequence[Dict[str, Tensor]]],
    cfg: InputConfig,
    training: bool,
) -> Tuple[ImageBatch, Optional[List[Dict[str, Tensor]]]]:
    """Normalise with the ImageNet mean/std, resize, and pad `images` (each (3, H, W) in [0, 1]).

    In training the shorter side is drawn uniformly from `cfg.train_min_sizes` (torch's global RNG, one draw
    per image); at inference it is `cfg.min_size`. Target boxes are scaled into the resized frame (copies; the
    caller's dicts are not modified).
    """
    resized, sizes, new_targets = [], [], [] if targets is not None else None
    for i, image in enumerate(images):
        if training:
            # a draw on the host's generator, as torchvision's (reading a CPU tensor waits for no device)
            pick = int(torch.empty(1).uniform_(0.0, float(len(cfg.train_min_sizes))).item())
            min_size = cfg.train_min_sizes[pick]
        else:
            min_size = cfg.min_size
        out = resize_image(normalize(image, cfg.image_mean, cfg.image_std), min_size, cfg.max_size)
        resized.append(out)
        sizes.append((int(out.shape[-2]), int(out.shape[-1])))
        if targets is not None:
            target = dict(targets[i])
            target["boxes"] = scale_boxes(target["boxes"], tuple(image.shape[-2:]), sizes[-1])
            new_targets.append(target)
    return ImageBatch(pad_batch(resized, cfg.size_divisible), sizes), new_targets


def postprocess(
    detections: List[Dict[str, Tensor]],
    image_sizes: List[Tuple[int, int]],
    original_sizes: List[Tuple[int, int]],
) -> List[Dict[str, Tensor]]:
    """Map each image's detection boxes from the resized frame back to the input image's own pixels."""
    for det, size, orig in zip(detections, image_sizes, original_sizes):
        det["boxes"] = scale_boxes(det["boxes"], size, orig)
    return detections
