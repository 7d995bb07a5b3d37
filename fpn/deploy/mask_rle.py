"""A detection's mask as COCO's results format holds it: the model's probabilities thresholded at 0.5 (as
torchvision's), then run-length encoded (pycocotools' compressed RLE, the `segmentation` of a results entry).

Shape shorthand: D detections; H x W the pixels of the image the masks are pasted in. `python -m fpn.predict`
(fpn/deploy/predictions.py), the pictures (fpn/deploy/visualize.py) and COCO evaluation (fpn/engine/evaluation.py)
binarise and encode with these two functions, so the three agree pixel for pixel.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from pycocotools import mask as mask_utils

MASK_THRESHOLD = 0.5  # a pixel is the object's where its mask probability is above this (torchvision's)


def binary_masks(masks: torch.Tensor) -> torch.Tensor:
    """(D, 1, H, W) float mask probabilities in [0, 1] -> (D, H, W) bool, True above `MASK_THRESHOLD`, on the
    masks' device (so that a GPU's masks travel to the host as bytes, not floats)."""
    return masks[:, 0] > MASK_THRESHOLD


def mask_rles(masks: torch.Tensor) -> List[dict]:
    """COCO compressed RLEs of binary masks.

    Args:
        masks: (D, H, W) bool or 0/1 uint8, on any device.
    Returns:
        D dicts {"size": [H, W], "counts": str} (str: JSON has no bytes), in order; `pycocotools.mask.decode`
        gives the masks back.
    """
    if masks.shape[0] == 0:
        return []
    # pycocotools reads (H, W, D) uint8 in column-major order
    columns = np.asfortranarray(masks.to("cpu", torch.uint8).permute(1, 2, 0).numpy())  # (H, W, D)
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
            for rle in mask_utils.encode(columns)]
