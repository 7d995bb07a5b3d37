"""Multi-scale RoIAlign over a feature pyramid (Lin et al., 2017, Sec. 4.2, Eq. 1).

A RoI of size w x h (input pixels) is pooled from level k = floor(k0 + log2(sqrt(w * h) / 224)), clamped to the
pyramid's levels: a 224 x 224 box (the ImageNet canonical size) goes to P4 (k0 = 4), halving its side moves it
one level down. Level k has stride 2**k, so its spatial scale is 1 / 2**k.
Shape shorthand: N images, R_i RoIs of image i, K = sum R_i, C channels, L levels.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from fpn.ops.boxes import box_area, check_boxes
from fpn.ops.roi_align import _check_output_size, as_rois, roi_align

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


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign of each box on the pyramid level that matches its size; a drop-in for torchvision's module.

    The levels are `featmap_names`, finest first, with strides consecutive powers of two. Their scales are
    inferred at each call as torchvision does (feature height over the largest image height, rounded to a power
    of two: scale = 2 ** round(log2(Hl / max H))), or fixed by `strides`, which makes `image_shapes` optional.
    Unlike torchvision's module, which infers the scales at its first call and keeps them, nothing is cached.

    Args:
        featmap_names: keys of the pyramid levels in the feature dict, finest first.
        output_size: oh = ow, or (oh, ow), of the pooled features.
        sampling_ratio: bilinear samples per bin side (<= 0: adaptive); see roi_align.
        canonical_scale, canonical_level: of the level assignment (224 and 4 in the paper).
        strides: optional stride of each level in input pixels, e.g. (4, 8, 16, 32).
        aligned: half-pixel shift of roi_align (torchvision's module has False).

    Host syncs per call: one (the number of RoIs per level, to split them; none for a single level), plus two
    per level with RoIs for adaptive sampling, forward and backward (see roi_align).
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: Union[int, Tuple[int, int]],
        sampling_ratio: int,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        strides: Optional[Sequence[int]] = None,
        aligned: bool = False,
    ):
        super().__init__()
        if isinstance(featmap_names, str) or len(featmap_names) == 0:
            raise ValueError(f"featmap_names must be a non-empty list of names, got {featmap_names!r}")
        if strides is not None:
            if len(strides) != len(featmap_names):
                raise ValueError(f"need one stride per feature map, got {list(featmap_names)} and {list(strides)}")
            _check_levels([1.0 / s if s > 0 else math.nan for s in strides], f"strides {tuple(strides)}")
        self.featmap_names = list(featmap_names)
        self.output_size = _check_output_size(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.strides = None if strides is None else tuple(int(s) for s in strides)
        self.aligned = aligned

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor],
                image_shapes: Optional[List[Tuple[int, int]]] = None) -> Tensor:
        """Pool every box from its level.

        Args:
            x: level name -> (N, C, Hl, Wl) float feature map (other keys are ignored).
            boxes: per image, (R_i, 4) float boxes (x1, y1, x2, y2) in input-image pixels.
            image_shapes: (height, width) of each image before the backbone; required unless `strides` is set.

        Returns:
            (K, C, oh, ow) pooled features, boxes in input order (image 0's first).
        """
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise ValueError(f"features lack the levels {missing}; got keys {sorted(x)}")
        maps = [x[name] for name in self.featmap_names]
        if len(boxes) != maps[0].shape[0]:
            raise ValueError(f"got boxes for {len(boxes)} images but the features hold {maps[0].shape[0]} images")
        scales = self._scales(maps, image_shapes)
        rois = as_rois(boxes, maps[0].shape[0])  # (K, 5) rows (image index, x1, y1, x2, y2)
        if len(maps) == 1:
            return roi_align(maps[0], rois, self.output_size, scales[0], self.sampling_ratio, self.aligned)
        min_level = round(-math.log2(scales[0]))
        levels = assign_fpn_levels(rois[:, 1:], min_level, min_level + len(maps) - 1, self.canonical_scale,
                                   self.canonical_level) - min_level  # (K,) in [0, L)
        # RoIs sorted by level, then one contiguous range per level
        order = torch.argsort(levels, stable=True)  # (K,)
        per_level = (levels[:, None] == torch.arange(len(maps), device=levels.device)).sum(dim=0)  # (L,)
        counts = per_level.tolist()  # the one host sync: the size of each level's range
        pooled = torch.cat([roi_align(feature, rois.index_select(0, placed), self.output_size, scale,
                                      self.sampling_ratio, self.aligned)
                            for feature, scale, placed in zip(maps, scales, order.split(counts))])  # sorted RoIs
        # back to the input order, in one copy (one index_copy_ per level would make autograd clone the whole
        # gradient for each)
        out = maps[0].new_empty((rois.shape[0], maps[0].shape[1], *self.output_size))  # (K, C, oh, ow)
        return out.index_copy_(0, order, pooled)

    def _scales(self, maps: List[Tensor], image_shapes: Optional[List[Tuple[int, int]]]) -> List[float]:
        """Spatial scale of each level: 1 / stride, or inferred from the map and image heights as torchvision."""
        if self.strides is not None:
            return [1.0 / s for s in self.strides]
        if not image_shapes:
            raise ValueError(f"image_shapes must list each image's (height, width) when strides are not set, "
                             f"got {image_shapes!r}")
        height = max(shape[0] for shape in image_shapes)
        # torchvision rounds log2 of the ratio in float32; in float64 the result differs only where the ratio is
        # within 1e-7 of 2 ** (k + 1/2) (e.g. a 1189-pixel map of a 6726-pixel image)
        scales = [2.0 ** round(math.log2(m.shape[-2] / height)) for m in maps]
        _check_levels(scales, f"scales {scales} inferred from map heights {[m.shape[-2] for m in maps]} and "
                      f"image height {height}")
        return scales

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio})")


def _check_levels(scales: Sequence[float], what: str) -> None:
    """Raise unless the scales are 1 / 2**k for consecutive k, finest first."""
    levels = [-math.log2(s) if s > 0 else math.nan for s in scales]
    powers_of_two = all(math.isfinite(level) and level == round(level) for level in levels)
    if not powers_of_two or any(finer + 1 != coarser for finer, coarser in zip(levels, levels[1:])):
        raise ValueError(f"the levels must have strides of consecutive powers of two, finest first; got {what}")
