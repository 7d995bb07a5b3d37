"""Input side of the detector: normalise, resize, pad into a batch; and map detections back.

Shape shorthand: N images, Hp/Wp padded batch size, (h, w) an image's size after resizing.
Boxes everywhere are (x1, y1, x2, y2) in absolute pixels of the frame named in the comment.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fpn.config import InputConfig
from fpn.ops.masks import paste_masks
from fpn.ops.resize import bilinear_resize
from fpn.spec import ImageBatch  # the contract lives on the ground floor; the detectors import it from here too


def resize_image(image: Tensor, min_size: int, max_size: int, *, written_out: bool = False) -> Tensor:
    """Resize (3, H, W) so the shorter side is `min_size` unless the longer would exceed `max_size` (bilinear).

    The new size is floor(H * scale), as torchvision's detection transform gets it (`recompute_scale_factor=True`:
    same weights -> same detections), computed here and passed as the size: the same interpolation, written with
    `torch.sym_min` so that under `torch.export` a symbolic H and W stay symbolic (Python's `min` would fix them).
    With `written_out` (the ONNX export asks for it) the interpolation is `bilinear_resize` (fpn/ops/resize.py):
    PyTorch's sampling points in ops that ONNX runtimes compute alike, where ONNX's own Resize samples a last bit
    elsewhere. `torch.export` does not need it: its program calls the same kernel as eager.
    """
    h, w = image.shape[-2:]
    scale = torch.sym_min(min_size / torch.sym_min(h, w), max_size / torch.sym_max(h, w))
    size = (torch.sym_int(h * scale), torch.sym_int(w * scale))  # what F.interpolate's recompute_scale_factor does
    if written_out:
        return bilinear_resize(image, size)
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def scale_boxes(boxes: Tensor, from_size: Tuple[int, int], to_size: Tuple[int, int]) -> Tensor:
    """Map (N, 4) boxes from an image of size `from_size` (h, w) to the same image resized to `to_size`.

    The ratios are float32 quotients, as torchvision's resize_boxes computes them, but computed on the host:
    a tensor made from Python numbers on an accelerator is a blocking host-to-device copy.
    """
    ratio_h, ratio_w = _ratio(to_size[0], from_size[0], boxes), _ratio(to_size[1], from_size[1], boxes)
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=-1)


def _ratio(new: int, old: int, like: Tensor) -> Union[float, Tensor]:
    """new / old as a float32 quotient. Sizes that are symbolic (under torch.export) give it as a 0-dim float32
    tensor on `like`'s device: the same value, computed in the graph (a Python float would be float64 there)."""
    if isinstance(new, int) and isinstance(old, int):
        return float(np.float32(new) / np.float32(old))
    return torch.full((), new, dtype=torch.float32, device=like.device) / torch.full(
        (), old, dtype=torch.float32, device=like.device)


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(image - mean) / std per channel of a (3, H, W) image, with the statistics as Python numbers: the same
    arithmetic as with (3, 1, 1) tensors of the image's dtype, without copying host data to the device."""
    return torch.stack([(channel - m) / s for channel, m, s in zip(image, mean, std)])


def pad_batch(images: Sequence[Tensor], size_divisible: int) -> Tensor:
    """Stack (3, h_i, w_i) images into (N, 3, Hp, Wp), zero-padded, Hp and Wp multiples of `size_divisible`."""
    max_h = _sym_max(img.shape[-2] for img in images)
    max_w = _sym_max(img.shape[-1] for img in images)
    # rounded up in integers of one sign (no float ceil, so that symbolic sizes under torch.export stay integers;
    # no floor division of negatives, which the ONNX exporter turns into a truncating Div)
    pad_h = (max_h + size_divisible - 1) // size_divisible * size_divisible
    pad_w = (max_w + size_divisible - 1) // size_divisible * size_divisible
    # zeros at the bottom and right (F.pad rather than copies into a slice of zeros: under torch.export a slice
    # that may be the whole tensor would fix whether the image needed padding)
    return torch.stack([F.pad(img, (0, pad_w - img.shape[-1], 0, pad_h - img.shape[-2])) for img in images])


def _sym_max(values):
    values = list(values)
    return functools.reduce(torch.sym_max, values[1:], values[0])


def preprocess(
    images: Sequence[Tensor],
    targets: Optional[Sequence[Dict[str, Tensor]]],
    cfg: InputConfig,
    training: bool,
    *,
    written_out_resize: bool = False,
) -> Tuple[ImageBatch, Optional[List[Dict[str, Tensor]]]]:
    """Normalise with the ImageNet mean/std, resize, and pad `images` (each (3, H, W) in [0, 1]).

    In training the shorter side is drawn uniformly from `cfg.train_min_sizes` (torch's global RNG, one draw
    per image); at inference it is `cfg.min_size`. Target boxes are scaled into the resized frame (copies; the
    caller's dicts are not modified). `written_out_resize`: resize with `bilinear_resize` (see `resize_image`),
    for the ONNX export.
    """
    resized, sizes, new_targets = [], [], [] if targets is not None else None
    for i, image in enumerate(images):
        if training:
            # a draw on the host's generator, as torchvision's (reading a CPU tensor waits for no device)
            pick = int(torch.empty(1).uniform_(0.0, float(len(cfg.train_min_sizes))).item())
            min_size = cfg.train_min_sizes[pick]
        else:
            min_size = cfg.min_size
        out = resize_image(normalize(image, cfg.image_mean, cfg.image_std), min_size, cfg.max_size,
                           written_out=written_out_resize)
        resized.append(out)
        sizes.append((out.shape[-2], out.shape[-1]))  # ints (symbolic under torch.export: no int() to fix them)
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
    """Map each image's detection boxes from the resized frame back to the input image's own pixels; paste
    Mask R-CNN's 28x28 `masks` (D, 1, 28, 28) into the input image at those boxes: (D, 1, H, W)."""
    for det, size, orig in zip(detections, image_sizes, original_sizes):
        det["boxes"] = scale_boxes(det["boxes"], size, orig)
        if "masks" in det:
            det["masks"] = paste_masks(det["masks"], det["boxes"], orig)
    return detections
