"""COCO instance segmentations -> binary masks, read exactly as pycocotools' `COCO.annToMask` reads them.

A COCO `segmentation` takes one of three forms, all in the pixel frame of the whole image:
  * polygons: a list of parts, each a flat list [x1, y1, x2, y2, ...] of >= 3 points; the parts are rasterised
    and merged into one mask (`mask.frPyObjects` + `mask.merge`);
  * uncompressed RLE: {"size": [H, W], "counts": [run, run, ...]}, column-major runs of 0s then 1s (what crowd
    regions use); converted with `mask.frPyObjects`;
  * compressed RLE: {"size": [H, W], "counts": "<string>"}, COCO's run-length string (what `mask.encode` gives).

`segmentation_problem` checks the structure without rasterising anything (types, polygon lengths, the RLE's size
and the total of its runs), so a data set can refuse a bad file when it is built; `decode_masks` rasterises the
masks of one image when its sample is read. The run total is checked because pycocotools decodes runs that stop
short of H * W pixels into uninitialised memory rather than failing.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

NUMPY_COPY_NOTICE = r"__array__ implementation doesn't accept a copy keyword"


def segmentation_problem(segmentation: object, height: int, width: int) -> Optional[str]:
    """What makes `segmentation` unusable on an image of height x width, or None when it decodes.

    Returns:
        None, or a phrase to follow "annotation id N", e.g. "has a polygon (part 0) of 4 coordinates, ...".
    """
    if segmentation is None:
        return "has no segmentation"
    if isinstance(segmentation, list):
        return _polygons_problem(segmentation)
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    return (f"has a segmentation of type {type(segmentation).__name__}, expected polygons (a list of lists) or "
            f"an RLE (a dict with 'size' and 'counts')")


def decode_masks(segmentations: Sequence[object], height: int, width: int) -> torch.Tensor:
    """Rasterise the segmentations of one image, as `COCO.annToMask` does.

    Args:
        segmentations: N COCO segmentations that passed `segmentation_problem` for this height and width.
        height, width: the image size the segmentations are drawn in (the annotation file's).

    Returns:
        uint8 tensor (N, height, width) of 0/1, in the order given.
    """
    if not segmentations:
        return torch.zeros((0, height, width), dtype=torch.uint8)
    rles = [_to_rle(segmentation, height, width) for segmentation in segmentations]
    with warnings.catch_warnings():  # pycocotools 2.0.11 on numpy 2: a notice about its own code, nothing wrong here
        warnings.filterwarnings("ignore", message=NUMPY_COPY_NOTICE, category=DeprecationWarning)
        stacked = mask_utils.decode(rles)  # (H, W, N) uint8, Fortran order
    return torch.from_numpy(np.ascontiguousarray(stacked.transpose(2, 0, 1)))  # (N, H, W)


def fit_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop or zero-pad masks (N, h, w) to (N, height, width), keeping the top-left corner.

    For an image file whose decoded size disagrees with the annotation file (e.g. an EXIF rotation): its boxes
    are clipped to the decoded pixels, and its masks must keep the image's shape.
    """
    if tuple(masks.shape[1:]) == (height, width):
        return masks
    fitted = masks.new_zeros((masks.shape[0], height, width))
    h, w = min(height, masks.shape[1]), min(width, masks.shape[2])
    fitted[:, :h, :w] = masks[:, :h, :w]
    return fitted


def _to_rle(segmentation: object, height: int, width: int) -> dict:
    """`COCO.annToRLE` without the COCO object: the image size comes as arguments."""
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged into one mask
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation  # compressed RLE


def _polygons_problem(polygons: list) -> Optional[str]:
    if not polygons:
        return "has an empty polygon list as segmentation"
    for part, polygon in enumerate(polygons):
        if not isinstance(polygon, list):
            return (f"has a segmentation part {part} of type {type(polygon).__name__}, expected a polygon "
                    f"[x1, y1, x2, y2, ...]")
        # pycocotools would read a 4-number first part as a box, and an odd count drops the last coordinate
        if len(polygon) < 6 or len(polygon) % 2:
            return (f"has a polygon (part {part}) of {len(polygon)} coordinates, expected an even number >= 6 "
                    f"(at least 3 points)")
        try:
            coordinates = np.asarray(polygon, dtype=np.float64)
        except (TypeError, ValueError):
            coordinates = None
        if coordinates is None or coordinates.ndim != 1 or not np.isfinite(coordinates).all():
            return f"has a polygon (part {part}) with a coordinate that is not a finite number"
    return None


def _rle_problem(rle: dict, height: int, width: int) -> Optional[str]:
    size, counts = rle.get("size"), rle.get("counts")
    if size is None or counts is None:
        return f"has an RLE segmentation without 'size' and 'counts' (keys {sorted(rle)})"
    if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
        return f"has an RLE of size {size!r}, but the image is [height, width] = [{height}, {width}]"
    if isinstance(counts, list):
        total = _uncompressed_total(counts)
    elif isinstance(counts, (str, bytes)):
        total = _compressed_total(counts)
    else:
        return f"has RLE counts of type {type(counts).__name__}, expected a list of runs or an RLE string"
    if total is None:
        return "has malformed RLE counts (not non-negative whole runs)"
    if total != height * width:
        return f"has RLE runs covering {total} pixels, but the image has {height} x {width} = {height * width}"
    return None


def _uncompressed_total(counts: list) -> Optional[int]:
    """Sum of the runs of an uncompressed RLE, None when a run is not a non-negative whole number."""
    try:
        runs = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if runs.ndim != 1 or not np.isfinite(runs).all() or (runs < 0).any() or (runs != np.floor(runs)).any():
        return None
    return int(runs.sum())


def _compressed_total(counts: object) -> Optional[int]:
    """Sum of the runs of a COCO RLE string (maskApi.c's rleFrString in Python), None when malformed.

    Each run is a little-endian sequence of 5-bit groups stored as chr(48 + group), bit 0x20 meaning "more
    groups follow", the last group's bit 0x10 the sign; from the third run on, a run is stored as the difference
    from the run two before it.
    """
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            return None
    runs: List[int] = []
    value, shift = 0, 0
    for char in counts:
        group = ord(char) - 48
        if not 0 <= group < 64:
            return None
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift  # sign extension
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
        value, shift = 0, 0
    return None if shift else sum(runs)
