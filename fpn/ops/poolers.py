"""Multi-scale RoIAlign over a feature pyramid (Lin et al., 2017, Sec. 4.2, Eq. 1).

A RoI of size w x h (input pixels) is pooled from level k = floor(k0 + log2(sqrt(w * h) / 224)), clamped to the
pyramid's levels: a 224 x 224 box (the ImageNet canonical size) goes to P4 (k0 = 4), halving its side moves it
one level down. Level k has stride 2**k, so its spatial scale is 1 / 2**k.
Shape shorthand: N images, R_i RoIs of image i, K = sum R_i, C channels, L levels.
"""
import math
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor

from fpn.ops.boxes import box_area, check_boxes
from fpn.ops.roi_align import roi_align

LEVEL_EPS = 1e-6  # torchvision's LevelMapper adds this before the floor; kept for identical assignments


def assign_fpn_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """Pyramid level of each box, by the paper's Eq. (1).

    Args:
        boxes: (K, 4) float boxes (x1, y1, x2, y2) in input-image pixels.
        min_level, max_level: the pyramid's lowest and highest level (2 and 5 for P2..P5).
        canonical_scale, canonical_level: a box of side canonical_scale maps to canonical_level.

    Returns:
        (K,) int64 levels in [min_level, max_level].
    """
    check_boxes(boxes)
    if min_level > max_level:
        raise ValueError(f"min_level {min_level} is above max_level {max_level}")
    scale = torch.sqrt(box_area(boxes))  # (K,)
    eps = torch.tensor(LEVEL_EPS, dtype=scale.dtype, device=scale.device)
    levels = torch.floor(canonical_level + torch.log2(scale / canonical_scale) + eps)
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


class MultiScaleRoIAlign:
    """RoIAlign of each box on the pyramid level that matches its size.

    Args:
        featmap_names: keys of the pyramid levels in the feature dict, finest first.
        strides: stride of each level in input pixels: consecutive powers of two, e.g. (4, 8, 16, 32).
        output_size: oh = ow, or (oh, ow), of the pooled features.
        sampling_ratio: bilinear samples per bin side (<= 0: adaptive); see roi_align.
        aligned: half-pixel shift of roi_align.
        canonical_scale, canonical_level: of the level assignment (224 and 4 in the paper).
    """

    def __init__(
        self,
        featmap_names: Sequence[str] = ("p2", "p3", "p4", "p5"),
        strides: Sequence[int] = (4, 8, 16, 32),
        output_size: Union[int, Tuple[int, int]] = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_scale: float = 224,
        canonical_level: int = 4,
    ):
        if len(featmap_names) != len(strides) or len(strides) == 0:
            raise ValueError(f"need one stride per feature map, got {list(featmap_names)} and {list(strides)}")
        levels = [math.log2(s) if s > 0 else math.nan for s in strides]
        if not all(level == int(level) for level in levels) or levels != list(range(int(levels[0]),
                                                                                    int(levels[0]) + len(levels))):
            raise ValueError(f"strides must be consecutive powers of two, finest first, got {tuple(strides)}")
        self.featmap_names = tuple(featmap_names)
        self.strides = tuple(int(s) for s in strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.min_level, self.max_level = int(levels[0]), int(levels[-1])

    def __call__(self, features: Dict[str, Tensor], boxes: List[Tensor]) -> Tensor:
        """Pool every box from its level.

        Args:
            features: level name -> (N, C, Hl, Wl) float feature map.
            boxes: per image, (R_i, 4) float boxes (x1, y1, x2, y2) in input-image pixels.

        Returns:
            (K, C, oh, ow) pooled features, boxes in input order (image 0's first).
        """
        missing = [name for name in self.featmap_names if name not in features]
        if missing:
            raise ValueError(f"features lack the levels {missing}; got keys {sorted(features)}")
        maps = [features[name] for name in self.featmap_names]
        if len(boxes) != maps[0].shape[0]:
            raise ValueError(f"got boxes for {len(boxes)} images but the features hold {maps[0].shape[0]} images")
        for i, b in enumerate(boxes):
            check_boxes(b, f"boxes[{i}]")
        # (K, 5) rows (image index, x1, y1, x2, y2)
        rois = torch.cat([torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)])
        levels = assign_fpn_levels(rois[:, 1:], self.min_level, self.max_level, self.canonical_scale,
                                   self.canonical_level)  # (K,)
        pooled, placed = [], []
        for level, feature, stride in zip(range(self.min_level, self.max_level + 1), maps, self.strides):
            in_level = torch.where(levels == level)[0]
            pooled.append(roi_align(feature, rois[in_level], self.output_size, 1.0 / stride,
                                    self.sampling_ratio, self.aligned))
            placed.append(in_level)
        return torch.cat(pooled, dim=0)[torch.argsort(torch.cat(placed))]  # back to input order
