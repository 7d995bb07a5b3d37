"""One YOLO label file: a line per object, `class cx cy w h` (a box) or `class x1 y1 x2 y2 x3 y3 ...` (a polygon,
Ultralytics' segmentation format), every coordinate normalised to [0, 1] by the image's width and height.

Coordinates may pass 0 or 1 by `COORD_TOLERANCE` (exporters' rounding) and are clipped to the image; anything
further out, a wrong field count, a non-number, a width or height <= 0 is an InputError `file:line: ...`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from fpn.errors import InputError

COORD_TOLERANCE = 1e-3  # normalised: 0.1% of the image side, more than any exporter's rounding
_DECIMALS = 4  # pixel coordinates are rounded to 1e-4 px, so 0.3 * 100 reads 30.0 in the JSON


@dataclass
class YoloObject:
    """One labelled object of a label file, in pixels of the (upright) image."""
    class_index: int  # the YOLO class index (0-based)
    line: int  # its line in the label file, from 1
    box: Tuple[float, float, float, float]  # (x0, y0, x1, y1) corners, pixels, clipped to the image
    polygon: Optional[List[float]] = None  # [x0, y0, x1, y1, ...] pixels, for a polygon label


def read_label_file(path: Path, shown: str, width: int, height: int) -> List[YoloObject]:
    """The objects of a YOLO label file (empty lines skipped; an empty file: no objects).

    Args:
        path: the .txt file.
        shown: how the file is named in errors (e.g. "labels/a.txt").
        width, height: the image's size in pixels (after its EXIF rotation).
    Raises:
        InputError: "<shown>:<line>: <what>" for a malformed line.
        OSError: the file cannot be read.
    """
    objects = []
    text = path.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:
            objects.append(_parse_line(fields, f"{shown}:{number}", number, width, height))
    return objects


def _parse_line(fields: List[str], where: str, number: int, width: int, height: int) -> YoloObject:
    count = len(fields)
    if count != 5 and (count < 7 or count % 2 == 0):
        raise InputError(f"{where}: {count} fields, expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 "
                         "x3 y3 ..., an odd count of 7 or more)")
    class_index = _class_index(fields[0], where)
    values = [_number(token, where) for token in fields[1:]]
    if count == 5:
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            raise InputError(f"{where}: width and height must be > 0, got {w:g} {h:g}")
        points = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    else:
        points = values
    for value in points:
        if not -COORD_TOLERANCE <= value <= 1 + COORD_TOLERANCE:
            raise InputError(f"{where}: coordinate {value:g} is outside the image (normalised [0, 1], "
                             f"{COORD_TOLERANCE:g} tolerated)")
    pixels = [round(min(max(value, 0.0), 1.0) * (width if i % 2 == 0 else height), _DECIMALS)
              for i, value in enumerate(points)]
    xs, ys = pixels[0::2], pixels[1::2]
    box = (min(xs), min(ys), max(xs), max(ys))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"{where}: the object is empty once clipped to the image")
    return YoloObject(class_index, number, box, pixels if count > 5 else None)


def _class_index(token: str, where: str) -> int:
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"{where}: class {token!r} is not a number") from None
    if not value.is_integer() or value < 0:
        raise InputError(f"{where}: class {token!r} is not a class index (an integer >= 0)")
    return int(value)


def _number(token: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"{where}: {token!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: {token!r} is not a finite number")
    return value
