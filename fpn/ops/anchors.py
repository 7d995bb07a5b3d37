"""Anchors of the region proposal network on a feature pyramid (Lin et al., 2017, Sec. 4.1).

In the paper each level has one anchor size (32 on P2 ... 512 on P6) and three aspect ratios at every location;
like torchvision's AnchorGenerator (a drop-in replacement for it) a level may have several sizes and its own ratios.
Conventions follow torchvision so that both produce identical anchors:
  * the stride of a level is (H // Hl, W // Wl) with integer division of the padded batch size by the map size
    (for P6 of an 800-pixel-high batch: 800 // 13 = 61, not 64);
  * a base anchor of size s and ratio r = h / w has h = s * sqrt(r), w = s / sqrt(r) and is
    round([-w/2, -h/2, w/2, h/2]) (computed in float32, then cast to the requested dtype), centred on the
    top-left corner of its cell (no half-stride offset);
  * order: level, then location (row-major: y, then x), then aspect ratio, then size.
Shape shorthand: L levels, A_l = (ratios x sizes) anchors per location of level l, (Hl, Wl) size of level l.
"""
from collections import OrderedDict
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

# Anchor sets (one per padded batch size, device and dtype) that a generator keeps, least recently used dropped
# first. A set is (sum_l Hl*Wl*A_l, 4) values, about 3.5 MB in float32 for an 800x1088 batch with 3 anchors per
# location; multi-scale training cycles through a few padded sizes (multiples of 32), so 8 sets cover a usual
# schedule and cost at most ~30 MB per device, where an unbounded cache would grow with every new size.
ANCHOR_CACHE_SIZE = 8


def base_anchors(
    sizes: Sequence[float], aspect_ratios: Sequence[float], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The anchors of one location, centred on (0, 0).

    Args:
        sizes: S anchor sizes (sqrt of the area, pixels).
        aspect_ratios: R height / width ratios.
        dtype, device: of the computation and of the result.

    Returns:
        (R*S, 4) boxes (x1, y1, x2, y2) rounded to integers, ratio-major (all sizes of the first ratio first).
    """
    scales = torch.as_tensor(sizes, dtype=dtype, device=device)  # (S,)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)  # (R,)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    widths = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (R*S,)
    heights = (h_ratios[:, None] * scales[None, :]).reshape(-1)  # (R*S,)
    return (torch.stack((-widths, -heights, widths, heights), dim=1) / 2).round()


def shift_anchors(cell: Tensor, grid_size: Sequence[int], stride: Sequence[Union[int, Tensor]]) -> Tensor:
    """Place the anchors of one location at every cell of a level's grid.

    Args:
        cell: (A, 4) anchors centred on (0, 0), as from base_anchors.
        grid_size: (Hl, Wl) of the level.
        stride: (stride_y, stride_x) in pixels, ints or 0-dim integer tensors on `cell`'s device.

    Returns:
        (Hl*Wl*A, 4) anchors (x1, y1, x2, y2) in padded-image pixels, in `cell`'s dtype and device,
        location-major (row-major over the grid), then the A anchors of the location.
    """
    level_h, level_w = (v if isinstance(v, torch.SymInt) else int(v) for v in grid_size)  # SymInt (export): kept
    shifts_x = torch.arange(level_w, device=cell.device) * stride[1]  # (Wl,) integer
    shifts_y = torch.arange(level_h, device=cell.device) * stride[0]  # (Hl,) integer
    grid_y, grid_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (Hl, Wl) each
    grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)
    shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=1)  # (Hl*Wl, 4)
    # (Hl*Wl, 1, 4) + (1, A, 4) -> (Hl*Wl*A, 4), location-major
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)


PerLevel = Tuple[Tuple[float, ...], ...]  # one tuple of values (sizes or aspect ratios) per pyramid level


def _per_level(sizes, aspect_ratios) -> Tuple[PerLevel, PerLevel]:
    """torchvision's two forms -> one tuple of sizes and one of ratios per level: a flat tuple of sizes is one size
    per level, a flat tuple of ratios is used at every level."""
    if len(sizes) == 0 or len(aspect_ratios) == 0:
        raise ValueError(f"need at least one size and one aspect ratio, got {sizes} and {aspect_ratios}")
    if not isinstance(sizes[0], (list, tuple)):
        sizes = tuple((s,) for s in sizes)
    if not isinstance(aspect_ratios[0], (list, tuple)):
        aspect_ratios = (aspect_ratios,) * len(sizes)
    sizes = tuple(tuple(level) for level in sizes)
    aspect_ratios = tuple(tuple(level) for level in aspect_ratios)
    if len(sizes) != len(aspect_ratios):
        raise ValueError(
            f"need one tuple of sizes and one of aspect ratios per level, got {len(sizes)} levels of sizes {sizes} "
            f"and {len(aspect_ratios)} of aspect ratios {aspect_ratios}"
        )
    for name, levels in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
        for level in levels:
            if len(level) == 0 or any(not v > 0 for v in level):  # `not >` also catches NaN
                raise ValueError(f"{name} must be positive numbers, at least one per level, got {level} in {levels}")
    return sizes, aspect_ratios


class AnchorGenerator(nn.Module):
    """Generates the anchors of every pyramid level for a padded batch; torchvision's AnchorGenerator interface.

    An nn.Module without parameters or buffers (so it adds nothing to a state_dict). The anchors of a padded
    batch size are computed once and kept in a small LRU cache (ANCHOR_CACHE_SIZE entries).

    Args:
        sizes: one tuple of anchor sizes (sqrt of area, pixels) per level, e.g. ((32,), (64,), ...) or
            ((32, 40, 50), ...); a flat tuple (32, 64, 128, 256, 512) means one size per level.
        aspect_ratios: one tuple of height / width ratios per level; a flat tuple is used at every level.
    """

    def __init__(self, sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)):
        super().__init__()
        self.sizes, self.aspect_ratios = _per_level(sizes, aspect_ratios)
        # (A_l, 4) float32 CPU per level; torchvision's attribute, used by grid_anchors (see set_cell_anchors).
        self.cell_anchors = [self.generate_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios)]
        self._cache: "OrderedDict[tuple, Tensor]" = OrderedDict()

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"

    def num_anchors_per_location(self) -> List[int]:
        """A_l, the number of anchors at each location, for every level l."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def generate_anchors(
        self,
        scales: Sequence[float],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tensor:
        """(len(aspect_ratios) * len(scales), 4) anchors of one location centred on (0, 0); see base_anchors."""
        return base_anchors(scales, aspect_ratios, dtype, device)

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        """Move `cell_anchors` to `dtype` and `device` (what grid_anchors uses, as in torchvision)."""
        self.cell_anchors = [cell.to(dtype=dtype, device=device) for cell in self.cell_anchors]

    def grid_anchors(self, grid_sizes: List[List[int]], strides: List[List[Union[int, Tensor]]]) -> List[Tensor]:
        """Per level l, the (Hl*Wl*A_l, 4) anchors of `cell_anchors[l]` over a grid of `grid_sizes[l]` (Hl, Wl)
        with `strides[l]` (stride_y, stride_x), in the cell anchors' dtype and device."""
        self._check_levels(len(grid_sizes), "grid sizes")
        self._check_levels(len(strides), "strides")
        return [shift_anchors(c, g, s) for c, g, s in zip(self.cell_anchors, grid_sizes, strides)]

    def forward(self, image_list, feature_maps: List[Tensor]) -> List[Tensor]:
        """Anchors of every image of a batch (torchvision's call form).

        Args:
            image_list: torchvision's ImageList, or anything with `.tensors` (N, C, H, W) or `.tensor` (as
                fpn.detectors.transform.ImageBatch) holding the padded batch, and `.image_sizes` (one entry per image).
            feature_maps: L maps (N, C, Hl, Wl); the anchors take the first one's dtype and device.

        Returns:
            N tensors (sum_l Hl*Wl*A_l, 4) of anchors (x1, y1, x2, y2) in padded-image pixels, the same for every
            image (separate copies, so a caller may modify one in place).
        """
        batch = getattr(image_list, "tensors", getattr(image_list, "tensor", None))
        if not isinstance(batch, Tensor) or batch.dim() < 2:
            raise ValueError(
                f"image_list must have .tensors (N, C, H, W) (torchvision's ImageList) or .tensor, got "
                f"{type(image_list).__name__}"
            )
        self._check_levels(len(feature_maps), "feature maps")
        shapes = [tuple(f.shape[-2:]) for f in feature_maps]
        anchors = self.anchors_for(tuple(batch.shape[-2:]), shapes, feature_maps[0].device, feature_maps[0].dtype)
        return [anchors.clone() for _ in image_list.image_sizes]

    def anchors_for(
        self,
        image_size: Tuple[int, int],
        feature_shapes: List[Tuple[int, int]],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Anchors of all levels, shared by every image of the batch (the form the detector's RPN uses).

        Args:
            image_size: (H, W) of the padded batch.
            feature_shapes: (Hl, Wl) of each level, one per level of `sizes`.
            device, dtype: of the returned tensor.

        Returns:
            (sum_l Hl*Wl*A_l, 4) anchors (x1, y1, x2, y2) in padded-image pixels. The tensor is cached: do not
            modify it in place.
        """
        self._check_levels(len(feature_shapes), "feature maps")
        if any(isinstance(v, torch.SymInt) for v in (*image_size, *(v for s in feature_shapes for v in s))):
            # symbolic sizes (torch.export): anchors computed in the graph, no cache keyed by values it lacks
            return self._generate(*image_size, list(feature_shapes), torch.device(device), dtype)
        height, width = int(image_size[0]), int(image_size[1])
        shapes = tuple((int(h), int(w)) for h, w in feature_shapes)
        key = (height, width, shapes, torch.device(device), dtype)
        anchors = self._cache.pop(key, None)
        if anchors is None:
            anchors = self._generate(height, width, shapes, torch.device(device), dtype)
        self._cache[key] = anchors  # now the most recently used
        while len(self._cache) > ANCHOR_CACHE_SIZE:
            self._cache.popitem(last=False)
        return anchors

    def _generate(self, height: int, width: int, shapes, device: torch.device, dtype: torch.dtype) -> Tensor:
        per_level = []
        for sizes, ratios, (level_h, level_w) in zip(self.sizes, self.aspect_ratios, shapes):
            # Base anchors in float32 on the CPU, then cast, as torchvision's cell anchors are (same values).
            cell = base_anchors(sizes, ratios, torch.float32, torch.device("cpu")).to(dtype=dtype, device=device)
            per_level.append(shift_anchors(cell, (level_h, level_w), (height // level_h, width // level_w)))
        return torch.cat(per_level, dim=0)

    def _check_levels(self, count: int, what: str) -> None:
        if count != len(self.sizes):
            raise ValueError(
                f"got {count} {what} but {len(self.sizes)} pyramid levels of anchor sizes {self.sizes}"
            )
