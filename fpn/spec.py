"""The contracts every floor shares: what each feature map is (`FeatureSpec`), and the padded image batch the
detector's input side hands to its parts (`ImageBatch`)."""
from dataclasses import dataclass
from typing import List, Tuple

from torch import Tensor


@dataclass(frozen=True)
class FeatureSpec:
    """One feature map of a backbone or neck output dict: its channel count and stride in input pixels."""

    channels: int
    stride: int


@dataclass
class ImageBatch:
    """A padded batch: `tensor` (N, 3, Hp, Wp) normalised and zero-padded at the bottom/right, and each image's
    size (h, w) after resizing, before padding (the frame that proposals and detections live in). Made by
    `fpn.detectors.transform.preprocess`; read by the heads (anchors, clipping) without knowing how it was made."""

    tensor: Tensor
    image_sizes: List[Tuple[int, int]]
