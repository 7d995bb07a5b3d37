"""LabelMe folders -> a COCO instances dict (`read_labelme`).

LabelMe (and AnyLabeling / X-AnyLabeling, which write the same files) saves one JSON per image, usually beside it:

    {"shapes": [{"label": "dog", "points": [[x, y], ...], "shape_type": "polygon", "group_id": null}, ...],
     "imagePath": "dog.jpg", "imageWidth": 640, "imageHeight": 480, "imageData": "<base64, not read>"}

Every *.json under root, at any depth and sorted by path, that holds a JSON object with "shapes" is a LabelMe file
and one image (ids 1, 2, ... in that order; an image without shapes is an image without objects); other JSON files
(a COCO file, a tool's settings) are read past and counted in a note. imagePath is relative to the JSON's folder
(Windows' backslashes read as '/') and must name an existing file under root; `file_name` is its path relative to
root. imageWidth and imageHeight are trusted as a COCO json's sizes are (`fpn.data.coco`); the image check before
training (`fpn.data.file_check`) compares them with each file's header. Points are pixel coordinates, taken as they
are.

Shapes -> objects (class names: the labels of the objects, sorted):
- rectangle: two opposite corners in any order (LabelMe), or its four corners (X-AnyLabeling): the box is their
  bounds, and the segmentation the box's 4 corners as a polygon [x0, y0, x1, y0, x1, y1, x0, y1] (LabelMe's own
  labelme2coco does the same), so Mask R-CNN learns a box-shaped mask from it.
- polygon, or a shape without shape_type (LabelMe's default): at least 3 points; the box is their bounds and the
  segmentation the polygon.
- any other type (circle, line, linestrip, point, mask, ...): read past, counted per type in `notes`.
- group_id: shapes of one file with the same label and group_id are ONE object drawn in parts (LabelMe's convention;
  its examples/instance_segmentation/labelme2coco.py groups by (label, group_id) too): the box is the union of the
  parts' boxes, the segmentation the list of their polygons and the area the sum of their areas. A shape without a
  group_id is an object of its own.
- an object whose box has zero width or height (two clicks on one spot) is left out and counted in a note.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fpn.data.formats.common import CocoBuilder, LabelledData
from fpn.errors import InputError

BOX_SHAPES = ("rectangle", "polygon")
_SIZE_KEYS = ("imagePath", "imageWidth", "imageHeight")
Polygon = Tuple[float, ...]  # [x0, y0, x1, y1, ...] pixels


@dataclass(frozen=True)
class LabelmeObject:
    label: str
    polygons: Tuple[Polygon, ...]  # its parts (one unless drawn in parts with a group_id)
    box: Tuple[float, float, float, float]  # (x0, y0, x1, y1) pixels, the bounds of every part


@dataclass
class LabelmeImage:
    json_path: Path
    file_name: str  # relative to root, POSIX separators
    width: int
    height: int
    objects: List[LabelmeObject]
    left_out_types: Counter = field(default_factory=Counter)  # shape type -> shapes read past
    empty_objects: int = 0  # objects left out for a zero-width or zero-height box


def read_labelme(root: Path) -> LabelledData:
    """Read a folder of LabelMe files (see the module docstring for the conventions).

    Args:
        root: the folder; its *.json files are searched at any depth.

    Returns:
        LabelledData with data_format "labelme", images_root = root, no splits, and notes on what was read past.

    Raises:
        InputError: one line naming the file (and `shapes[i]`, counting from 0, for a bad shape): no LabelMe file,
            JSON that does not parse (file:line:column), a missing or malformed imagePath / imageWidth /
            imageHeight / shapes / label / points / group_id, a wrong number of points, an imagePath naming no
            file, a file outside root or an image that another LabelMe file names too.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    json_paths = sorted((path for path in root.rglob("*") if path.suffix.lower() == ".json" and path.is_file()),
                        key=lambda path: path.relative_to(root).as_posix())
    images: List[LabelmeImage] = []
    others: List[Path] = []
    named_by: Dict[str, Path] = {}
    for path in json_paths:
        image = parse_labelme_file(path, root)
        if image is None:
            others.append(path)
            continue
        if image.file_name in named_by:
            raise InputError(f"{path}: imagePath names {image.file_name}, which {named_by[image.file_name]} "
                             f"names too")
        named_by[image.file_name] = path
        images.append(image)
    if not images:
        raise InputError(f"{root}: no LabelMe .json files (JSON objects with 'shapes') in this folder or below")

    builder = CocoBuilder(sorted({obj.label for image in images for obj in image.objects}))
    for image in images:
        image_id = builder.add_image(image.file_name, image.width, image.height)
        for obj in image.objects:
            # an object drawn in parts keeps every part's polygon, their areas summed
            builder.add_box(image_id, builder.category_ids[obj.label], *obj.box, polygons=obj.polygons)
    return LabelledData(images_root=root, coco=builder.build(), data_format="labelme",
                        notes=_notes(images, others, root))


def parse_labelme_file(path: Path, root: Path) -> Optional[LabelmeImage]:
    """One JSON file: its image and objects, or None when it is not a LabelMe file (no object with "shapes").

    Raises:
        InputError: see `read_labelme`.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: skips a BOM
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not isinstance(data, dict) or "shapes" not in data:
        return None
    for key in _SIZE_KEYS:
        if key not in data:
            raise InputError(f"{path}: no '{key}' (a LabelMe file has shapes, imagePath, imageWidth, imageHeight)")
    width, height = (_positive_int(data[key], key, path) for key in ("imageWidth", "imageHeight"))
    shapes = data["shapes"]
    if not isinstance(shapes, list):
        raise InputError(f"{path}: 'shapes' is a {type(shapes).__name__}, not a list")
    image = LabelmeImage(path, _image_file(path, data["imagePath"], root), width, height, [])
    parts: Dict[tuple, List[Polygon]] = {}  # object key -> its parts' polygons, in file order
    for index, shape in enumerate(shapes):
        where = f"{path}: shapes[{index}]"
        if not isinstance(shape, dict):
            raise InputError(f"{where} is a {type(shape).__name__}, not an object")
        shape_type = shape.get("shape_type") or "polygon"
        if shape_type not in BOX_SHAPES:
            image.left_out_types[str(shape_type)] += 1
            continue
        label = shape.get("label")
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"{where} has no label")
        group_id = shape.get("group_id")
        if group_id is not None and (isinstance(group_id, bool) or not isinstance(group_id, (int, str))):
            raise InputError(f"{where} has group_id {group_id!r}; expected a number, a string or null")
        points = _points(shape.get("points"), shape_type, where)
        # shapes without a group_id are their own object (keyed by their index, which no group_id can equal)
        key = (label.strip(), "group", group_id) if group_id is not None else (label.strip(), "shape", index)
        parts.setdefault(key, []).append(_rectangle(points) if shape_type == "rectangle" else _flat(points))
    for (label, _, _), polygons in parts.items():
        box = _bounds(polygons)
        if box[2] > box[0] and box[3] > box[1]:
            image.objects.append(LabelmeObject(label, tuple(polygons), box))
        else:
            image.empty_objects += 1
    return image


def _image_file(path: Path, image_path: object, root: Path) -> str:
    """The image's path relative to root (POSIX), checked to exist."""
    if not isinstance(image_path, str) or not image_path.strip():
        raise InputError(f"{path}: imagePath must be a file name, got {image_path!r}")
    full = os.path.normpath(os.path.join(path.parent, image_path.replace("\\", "/")))
    if not os.path.isfile(full):
        raise InputError(f"{path}: imagePath '{image_path}' names no file ({full})")
    relative = os.path.relpath(full, root)
    if relative.startswith(".."):
        raise InputError(f"{path}: imagePath '{image_path}' is outside {root}, the folder read")
    return Path(relative).as_posix()


def _positive_int(value: object, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            value <= 0 or value != int(value):
        raise InputError(f"{path}: {key} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def _points(points: object, shape_type: str, where: str) -> List[Tuple[float, float]]:
    """The shape's points as (x, y) floats, their count checked for its type."""
    if not isinstance(points, list):
        raise InputError(f"{where} ({shape_type}) has no 'points' list")
    for number, point in enumerate(points):
        if not (isinstance(point, list) and len(point) == 2 and
                all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)):
            raise InputError(f"{where} ({shape_type}) point {number} is {json.dumps(point)[:40]}, not [x, y] numbers")
    if shape_type == "rectangle" and len(points) not in (2, 4):
        raise InputError(f"{where} (rectangle) has {len(points)} points; expected 2 opposite corners or 4 corners")
    if shape_type == "polygon" and len(points) < 3:
        raise InputError(f"{where} (polygon) has {len(points)} points; a polygon needs at least 3")
    return [(float(x), float(y)) for x, y in points]


def _rectangle(points: Sequence[Tuple[float, float]]) -> Polygon:
    """The 4 corners [x0, y0, x1, y0, x1, y1, x0, y1] of the box bounding `points`."""
    x0, y0, x1, y1 = _bounds([_flat(points)])
    return (x0, y0, x1, y0, x1, y1, x0, y1)


def _flat(points: Sequence[Tuple[float, float]]) -> Polygon:
    return tuple(v for point in points for v in point)


def _bounds(polygons: Sequence[Polygon]) -> Tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the box bounding every polygon."""
    xs = [x for polygon in polygons for x in polygon[0::2]]
    ys = [y for polygon in polygons for y in polygon[1::2]]
    return (min(xs), min(ys), max(xs), max(ys))


def _notes(images: Sequence[LabelmeImage], others: Sequence[Path], root: Path) -> List[str]:
    notes = []
    for shape_type in sorted({t for image in images for t in image.left_out_types}):
        shapes = sum(image.left_out_types[shape_type] for image in images)
        files = sum(shape_type in image.left_out_types for image in images)
        notes.append(f"{shapes} shapes of type '{shape_type}' in {files} files were left out: boxes come from "
                     f"rectangles and polygons")
    empty = [image for image in images if image.empty_objects]
    if empty:
        notes.append(f"{sum(image.empty_objects for image in empty)} objects with a zero-width or zero-height box in "
                     f"{len(empty)} files were left out (e.g. {empty[0].json_path.relative_to(root).as_posix()})")
    if others:
        notes.append(f"{len(others)} .json files without 'shapes' were read past as not LabelMe files "
                     f"(e.g. {others[0].relative_to(root).as_posix()})")
    return notes
