"""Tiled inference for small objects in large images (SAHI-style slicing): cut each image into overlapping tiles,
run every tile through the detector as an image of its own, map the tile detections back and merge them.

    model.predict(images, tile=512, overlap=0.25)  # fpn/detectors/base.py; `python -m fpn.predict --tile 512`

Why it helps: the detector resizes each input to its `input.min_size`, so a 512 px tile of a 3000x2000 photo on an
800 px model is upsampled 1.56x where the whole photo is downsampled 2.5x: a 16 px object becomes 25 px
instead of 6 px. The whole image also runs (downscaled as usual, `whole=True`), so objects larger than a tile are
still found.

1. Grid (`tile_grid`): SIZE x SIZE windows every `stride = floor(SIZE * (1 - overlap))` px; the last row and column
   are shifted back to end at the image edge (never padded). An axis no longer than SIZE is one window spanning it;
   an image no larger than one tile is not tiled at all (the whole image is the only input).
2. Detect: the tiles of all images, `batch` at a time, through the model's eval forward (its score threshold,
   its own NMS); boxes come back in tile pixels and are shifted by the tile's origin.
3. Cut objects (`touches_inner_edge`): a tile detection within EDGE_MARGIN px of a tile side that is not an image
   side is taken for an object the tile cuts (its visible part). With `drop_edge=True` (default) these are
   discarded, relying on the overlap (which must exceed the largest object wanted whole from the tiles) and on the
   whole-image pass for the rest. Measured (benchmarks/tiling.py, 300 objects of 12-32 px in two 1536 px scenes,
   256 px tiles, overlap 0.25): dropped, recall 0.997 and precision 0.815; kept, recall 1.000 and precision 0.701:
   the partial box of a cut object survives the NMS beside the whole one (their IoU is about the visible fraction,
   often <= nms_thresh): 61 more false positives for one more object found.
4. Merge (`merge_detections`): every kept detection of the tiles and of the whole image, per-class greedy NMS at
   the model's threshold (`roi_heads.nms_thresh`, FCOS's `head.nms_thresh`), the best `detections_per_img`.
   A Mask R-CNN's masks (tile-size, pasted by the model) are placed into image-size canvases after the merge.

Host syncs per call, beside the model's own per forward: per image one boolean selection (score threshold and
cut objects), the merge NMS's reads (fpn/ops/nms.py), and one read of the kept indices when there are masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fpn.errors import InputError
from fpn.ops.nms import batched_nms

MIN_TILE = 32  # px: a smaller tile holds no object the model's stride-32 level can see
EDGE_MARGIN = 2.0  # px of the tile: a box side this close to an inner tile side counts as cut by it

Window = Tuple[int, int, int, int]  # (x0, y0, x1, y1) integer pixel edges of a tile in its image
Run = Callable[[List[Tensor]], List[Dict[str, Tensor]]]  # the model's eval forward: images -> detections


@dataclass(frozen=True)
class Tiling:
    """How `predict_tiled` cuts and merges; checked on construction (InputError naming the bad value).

    Attributes:
        size: tile side, px (>= MIN_TILE).
        overlap: fraction of a tile shared with its neighbour, 0 <= overlap < 1; stride = floor(size * (1 - overlap)).
        whole: also run the whole image, downscaled as usual (large objects).
        batch: tiles per forward pass (>= 1).
        drop_edge: discard tile detections cut by an inner tile side (see the module docstring, step 3).
    """

    size: int
    overlap: float = 0.25
    whole: bool = True
    batch: int = 4
    drop_edge: bool = True

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < MIN_TILE:
            raise InputError(f"tile must be an integer >= {MIN_TILE} px, got {self.size!r}")
        if not isinstance(self.overlap, (int, float)) or not 0.0 <= self.overlap < 1.0:
            raise InputError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise InputError(f"tile_batch must be an integer >= 1, got {self.batch!r}")

    @property
    def stride(self) -> int:
        return max(1, math.floor(self.size * (1.0 - self.overlap)))


def tile_starts(length: int, size: int, stride: int) -> List[int]:
    """Origins of the windows along one axis of `length` px: 0, stride, 2 stride, ... and length - size last
    (shifted back to end at the edge); [0] when length <= size (one window spanning the axis)."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def tile_grid(height: int, width: int, tiling: Tiling) -> List[Window]:
    """The tiles of a height x width image, row by row: (x0, y0, x1, y1) windows of at most size x size px.

    Returns [] when the image fits in one tile (height and width <= size): it is not tiled.
    """
    if height <= tiling.size and width <= tiling.size:
        return []
    ys = tile_starts(height, tiling.size, tiling.stride)
    xs = tile_starts(width, tiling.size, tiling.stride)
    return [(x0, y0, min(x0 + tiling.size, width), min(y0 + tiling.size, height)) for y0 in ys for x0 in xs]


def touches_inner_edge(boxes: Tensor, window: Window, image_size: Tuple[int, int]) -> Tensor:
    """Which tile detections a side of the tile that is not a side of the image cuts.

    Args:
        boxes: (D, 4) xyxy in the tile's pixels.
        window: the tile's (x0, y0, x1, y1) in its image.
        image_size: (height, width) of the image.
    Returns:
        (D,) bool: True where the box reaches within EDGE_MARGIN px of an inner side.
    """
    x0, y0, x1, y1 = window
    height, width = image_size
    tile_w, tile_h = x1 - x0, y1 - y0
    cut = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        cut |= boxes[:, 0] <= EDGE_MARGIN
    if y0 > 0:
        cut |= boxes[:, 1] <= EDGE_MARGIN
    if x1 < width:
        cut |= boxes[:, 2] >= tile_w - EDGE_MARGIN
    if y1 < height:
        cut |= boxes[:, 3] >= tile_h - EDGE_MARGIN
    return cut


def detection_limits(config) -> Tuple[float, int]:
    """(NMS IoU threshold, detections kept per image) of a detector's config, used again by the merge: the RoI
    heads' (Faster / Mask R-CNN), the RPN's for an RPN alone (its proposals), FCOS's head's."""
    if getattr(config, "rpn_only", False):
        return config.rpn.nms_thresh, config.rpn.post_nms_top_n_test
    section = config.roi_heads if hasattr(config, "roi_heads") else config.head
    return section.nms_thresh, section.detections_per_img


def _shifted(boxes: Tensor, window: Window) -> Tensor:
    """(D, 4) xyxy tile pixels -> image pixels: plus the tile's origin (Python scalars: no host-to-device copy)."""
    x0, y0 = window[0], window[1]
    corners = boxes.reshape(-1, 2, 2)  # (D, 2 corners, xy)
    return torch.stack((corners[..., 0] + x0, corners[..., 1] + y0), dim=-1).reshape(-1, 4)


def merge_detections(
    parts: Sequence[Tuple[Window, Dict[str, Tensor]]],
    image_size: Tuple[int, int],
    *,
    nms_thresh: float,
    detections_per_img: int,
    score_threshold: Optional[float] = None,
    drop_edge: bool = True,
) -> Dict[str, Tensor]:
    """One image's detections from its tiles (and its whole-image pass), in image pixels.

    Args:
        parts: (window, detection) pairs: a tile's window (x0, y0, x1, y1) in the image (the whole image:
            (0, 0, W, H)) and the model's detection of it, `boxes` (D, 4) xyxy in the window's pixels, `scores`
            (D,), `labels` (D,) int64 and a Mask R-CNN's `masks` (D, 1, h, w) at the window's size. Non-empty.
        image_size: (H, W) of the image.
        nms_thresh: per-class NMS IoU threshold of the merge (`detection_limits`).
        detections_per_img: at most this many detections are returned, the best.
        score_threshold: detections scoring below it are dropped first (None: none).
        drop_edge: drop the detections cut by an inner tile side (`touches_inner_edge`).
    Returns:
        `boxes` (K, 4) xyxy image pixels, `scores` (K,), `labels` (K,), by decreasing score (ties: the earlier
        part first), K <= detections_per_img; `masks` (K, 1, H, W) when the parts have masks.
    """
    boxes = torch.cat([_shifted(det["boxes"], window) for window, det in parts])  # (N, 4) xyxy image pixels
    scores = torch.cat([det["scores"] for _, det in parts])  # (N,)
    labels = torch.cat([det["labels"] for _, det in parts])  # (N,)
    keep = torch.ones_like(scores, dtype=torch.bool)  # (N,)
    if score_threshold is not None:
        keep &= scores >= score_threshold
    if drop_edge:
        keep &= torch.cat([touches_inner_edge(det["boxes"], window, image_size) for window, det in parts]).logical_not()
    candidates = keep.nonzero()[:, 0]  # (C,) the one host sync of the selection
    order = batched_nms(boxes[candidates], scores[candidates], labels[candidates], nms_thresh)  # (M,) by score
    chosen = candidates[order[:detections_per_img]]  # (K,) indices into the N detections
    merged = {"boxes": boxes[chosen], "scores": scores[chosen], "labels": labels[chosen]}
    if all("masks" in det for _, det in parts):
        merged["masks"] = _masks_in_image(parts, chosen, image_size)
    return merged


def _masks_in_image(parts: Sequence[Tuple[Window, Dict[str, Tensor]]], chosen: Tensor,
                    image_size: Tuple[int, int]) -> Tensor:
    """(K, 1, H, W): the chosen detections' window-size masks placed at their windows in image-size canvases."""
    height, width = image_size
    starts = [0]  # index of each part's first detection among the N
    for _, det in parts:
        starts.append(starts[-1] + det["masks"].shape[0])
    placed = []
    for index in chosen.tolist():  # one host read of the K indices
        part = max(p for p in range(len(parts)) if starts[p] <= index)
        (x0, y0, x1, y1), det = parts[part]
        mask = det["masks"][index - starts[part]]  # (1, h, w) in the window
        placed.append(F.pad(mask, (x0, width - x1, y0, height - y1)))  # (1, H, W)
    if not placed:
        return parts[0][1]["masks"].new_zeros((0, 1, height, width))
    return torch.stack(placed)


def predict_tiled(
    run: Run,
    images: Sequence[Tensor],
    tiling: Tiling,
    *,
    nms_thresh: float,
    detections_per_img: int,
    score_threshold: Optional[float] = None,
) -> List[Dict[str, Tensor]]:
    """Detections of large images from their tiles (see the module docstring).

    Args:
        run: the model's eval forward: a list of float (3, h, w) images -> per image `boxes` (D, 4) xyxy in that
            image's pixels, `scores`, `labels` (and `masks`), e.g. a detector in eval mode under no_grad.
        images: float (3, H, W) images in [0, 1] on the model's device.
        tiling: tile size, overlap, whole-image pass, tiles per forward, cut-object rule.
        nms_thresh, detections_per_img: the merge's (`detection_limits(model.config)`).
        score_threshold: detections below it are dropped (None: the model's own threshold only).
    Returns:
        Per image the merged detections in its pixels (`merge_detections`). An image no larger than one tile is
        run whole and its detections merged alone (the same as the model's, thresholded).
    """
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    grids = [tile_grid(height, width, tiling) for height, width in sizes]
    parts: List[List[Tuple[Window, Dict[str, Tensor]]]] = [[] for _ in images]
    whole = [i for i, grid in enumerate(grids) if tiling.whole or not grid]
    jobs = [(i, (0, 0, sizes[i][1], sizes[i][0]), None) for i in whole]  # (image, window, crop or None: whole)
    jobs += [(i, window, window) for i, grid in enumerate(grids) for window in grid]
    for start in range(0, len(jobs), tiling.batch):
        chunk = jobs[start:start + tiling.batch]
        inputs = [images[i] if crop is None else images[i][:, crop[1]:crop[3], crop[0]:crop[2]]
                  for i, _, crop in chunk]  # (3, h, w) views
        for (i, window, _), detection in zip(chunk, run(inputs)):
            parts[i].append((window, detection))
    return [merge_detections(parts_i, size, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                             score_threshold=score_threshold, drop_edge=tiling.drop_edge)
            for parts_i, size in zip(parts, sizes)]
