"""Data augmentation applied by the dataset to (image, target) pairs: the horizontal flip of the paper's training.

Lin et al. (2017) train with horizontal flipping only. Resizing is NOT done here: the shorter-side resize (one
size at inference, a size drawn from `fpn.config.InputConfig.train_min_sizes` per iteration for multi-scale
training, e.g. 640..800) and the padding to a multiple of 32 happen inside the model, as in torchvision's
`GeneralizedRCNNTransform`. The dataset therefore returns images at their original resolution, and boxes (and
instance masks, when asked for) in the pixel frame of that image.

A transform is a callable `(image, target, generator) -> (image, target)`: `image` float (3, H, W), `target` a
dict holding at least `boxes` (N, 4) xyxy absolute pixels (and, for instance masks, `masks` (N, H, W)),
`generator` a `torch.Generator` (or None for torch's global RNG) from which any random decision is drawn, so that
the caller controls reproducibility.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

Target = Dict[str, object]
Transform = Callable[[torch.Tensor, Target, Optional[torch.Generator]], Tuple[torch.Tensor, Target]]


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mirror an image and its boxes left-right.

    Args:
        image: tensor (C, H, W), any dtype.
        boxes: float tensor (N, 4), xyxy in absolute pixels of `image` (pixel edges, x in [0, W]).

    Returns:
        (flipped image (C, H, W), flipped boxes (N, 4)) with x1' = W - x2, x2' = W - x1, y unchanged.
    """
    if image.dim() != 3:
        raise ValueError(f"expected an image of shape (C, H, W), got shape {tuple(image.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got shape {tuple(boxes.shape)}")
    width = image.shape[-1]
    flipped_boxes = boxes.clone()  # xyxy, pixel frame of the flipped image
    flipped_boxes[:, 0] = width - boxes[:, 2]
    flipped_boxes[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped_boxes


class RandomHorizontalFlip:
    """Flip image, `target["boxes"]` and, when present, `target["masks"]` left-right with probability `p`.

    One draw per call decides for all of them, so a flipped image always comes with flipped boxes and masks.
    `masks` is any tensor (N, H, W) of the image's height and width (the dataset's is uint8 0/1); it is mirrored
    along its last dimension (torch.flip, the dtype kept). Other keys are passed on unchanged.

    Args:
        p: flip probability in [0, 1].
    """

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability p must be in [0, 1], got {p}")
        self.p = p

    def __call__(
        self, image: torch.Tensor, target: Target, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, Target]:
        # Always draw, so the random stream advances the same way whatever the outcome.
        draw = torch.rand((), generator=generator).item()
        if draw >= self.p:
            return image, target
        flipped = dict(target)
        if "masks" in target:
            flipped["masks"] = _hflip_masks(target["masks"], image.shape[-2:])
        image, flipped["boxes"] = hflip(image, target["boxes"])
        return image, flipped

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def _hflip_masks(masks: torch.Tensor, image_size: torch.Size) -> torch.Tensor:
    if masks.dim() != 3 or tuple(masks.shape[1:]) != tuple(image_size):
        raise ValueError(f"expected masks of shape (N, {image_size[0]}, {image_size[1]}) to match the image, got "
                         f"shape {tuple(masks.shape)}")
    return masks.flip(-1)  # (N, H, W), same dtype


class Compose:
    """Apply transforms in order, all drawing from the same generator.

    Args:
        transforms: callables `(image, target, generator) -> (image, target)`.
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(
        self, image: torch.Tensor, target: Target, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"
