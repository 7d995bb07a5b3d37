"""Anchors of the region proposal network on a feature pyramid (Lin et al., 2017, Sec. 4.1).

One anchor size per pyramid level (32 on P2 ... 512 on P6) and several aspect ratios at every location.
Conventions follow torchvision's AnchorGenerator so that both produce identical anchors:
  * the stride of a level is (H // Hl, W // Wl) with integer division of the padded batch size by the map size
    (for P6 of an 800-pixel-high batch: 800 // 13 = 61, not 64);
  * a base anchor of size s and ratio r = h / w has h = s * sqrt(r), w = s / sqrt(r) and is
    round([-w/2, -h/2, w/2, h/2]), centred on the top-left corner of its cell (no half-stride offset);
  * order: level, then location (row-major: y, then x), then aspect ratio.
Shape shorthand: L levels, A anchors per location, (Hl, Wl) size of level l.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor


def base_anchors(size: float, aspect_ratios: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The A anchors of one level centred on (0, 0).

    Args:
        size: sqrt of the anchor area in pixels.
        aspect_ratios: height / width ratios.

    Returns:
        (A, 4) boxes (x1, y1, x2, y2) rounded to integers, in `dtype` on `device`.
    """
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)  # (A,)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    widths = w_ratios * size
    heights = h_ratios * size
    return (torch.stack((-widths, -heights, widths, heights), dim=1) / 2).round()


class AnchorGenerator:
    """Generates the anchors of every pyramid level for a padded batch.

    Args:
        sizes: one anchor size (sqrt of area, pixels) per level, e.g. (32, 64, 128, 256, 512) for P2..P6.
        aspect_ratios: height / width ratios used at every level.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ):
        if len(sizes) == 0 or len(aspect_ratios) == 0:
            raise ValueError(f"need at least one size and one aspect ratio, got {sizes} and {aspect_ratios}")
        self.sizes = tuple(sizes)
        self.aspect_ratios = tuple(aspect_ratios)
        self._cache: Dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        """A, the number of anchors at each location of every level."""
        return len(self.aspect_ratios)

    def __call__(
        self,
        image_size: Tuple[int, int],
        feature_shapes: List[Tuple[int, int]],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Anchors of all levels, shared by every image of the batch.

        Args:
            image_size: (H, W) of the padded batch.
            feature_shapes: (Hl, Wl) of each level, one per anchor size.
            device, dtype: of the returned tensor.

        Returns:
            (sum_l Hl*Wl*A, 4) anchors (x1, y1, x2, y2) in padded-image pixels.
        """
        if len(feature_shapes) != len(self.sizes):
            raise ValueError(
                f"got {len(feature_shapes)} feature maps but {len(self.sizes)} anchor sizes {self.sizes}"
            )
        key = (tuple(image_size), tuple(tuple(s) for s in feature_shapes), torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = self._generate(image_size, feature_shapes, torch.device(device), dtype)
        return self._cache[key]

    def _generate(self, image_size, feature_shapes, device, dtype) -> Tensor:
        height, width = int(image_size[0]), int(image_size[1])
        per_level = []
        for size, (level_h, level_w) in zip(self.sizes, feature_shapes):
            stride_y, stride_x = height // int(level_h), width // int(level_w)
            cell = base_anchors(size, self.aspect_ratios, dtype, device)  # (A, 4)
            shifts_x = torch.arange(int(level_w), device=device) * stride_x  # (Wl,) int64
            shifts_y = torch.arange(int(level_h), device=device) * stride_y  # (Hl,) int64
            grid_y, grid_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (Hl, Wl) each
            grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)
            shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=1)  # (Hl*Wl, 4)
            # (Hl*Wl, 1, 4) + (1, A, 4) -> (Hl*Wl*A, 4), location-major
            per_level.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4))
        return torch.cat(per_level, dim=0)
