"""What every label-format reader returns (`LabelledData`: a COCO instances dict + where its images are) and the
builder the readers fill it with, so that YOLO, Pascal VOC, LabelMe and COCO folders all reach training, evaluation
and `python -m fpn.data.convert` as the same COCO dict.

The dict follows COCO's instances format: `images` (id, file_name relative to `images_root`, width, height),
`annotations` (id, image_id, category_id, bbox [x, y, w, h] in pixels, area, iscrowd, and `segmentation` polygons
where the source has them) and `categories` (id, name). Ids start at 1 and follow the order the reader adds things
in, which each reader keeps deterministic (sorted file names), so the same folder always gives the same dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# The image files the folder readers look for (Pillow reads them all).
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})


@dataclass
class LabelledData:
    """A labelled image set read from disk, as COCO sees it."""
    images_root: Path  # every image's `file_name` is relative to this folder
    coco: dict  # COCO instances dict: images, annotations, categories
    data_format: str  # the format it was read from: coco, yolo, voc or labelme
    # The named subsets the source itself defines (VOC ImageSets/Main/*.txt, YOLO train/val folders or data YAML):
    # name -> image ids. Empty when the source is one undivided set.
    splits: Dict[str, List[int]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)  # what was read past (e.g. unsupported shapes), for the log


class CocoBuilder:
    """Collects images, boxes and categories into a COCO instances dict with ids from 1."""

    def __init__(self, category_names: Sequence[str] = ()):
        self.images: List[dict] = []
        self.annotations: List[dict] = []
        self.category_ids: Dict[str, int] = {}
        for name in category_names:
            self.category(name)

    def category(self, name: str) -> int:
        """The id of category `name`, added (next id) when new."""
        if name not in self.category_ids:
            self.category_ids[name] = len(self.category_ids) + 1
        return self.category_ids[name]

    def add_image(self, file_name: str, width: int, height: int) -> int:
        """Adds an image (`file_name` relative to the images root, POSIX separators); returns its id."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": int(width), "height": int(height)})
        return image_id

    def add_box(self, image_id: int, category_id: int, x0: float, y0: float, x1: float, y1: float, *,
                iscrowd: bool = False, polygon: Optional[Sequence[float]] = None,
                polygons: Sequence[Sequence[float]] = ()) -> int:
        """Adds a box given by its corners (pixels, x1 > x0, y1 > y0) and, optionally, its outline as one COCO polygon
        [x0, y0, x1, y1, ...] (`polygon`) or as several, an object drawn in parts (`polygons`); returns the
        annotation's id. `area` is the polygons' summed area when there are any (as COCO's own files have it), else
        the box's."""
        annotation = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": category_id,
                      "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": int(iscrowd)}
        outline = [list(polygon)] if polygon is not None else [list(part) for part in polygons]
        if outline:
            annotation["segmentation"] = outline
            annotation["area"] = sum(polygon_area(part) for part in outline)
        self.annotations.append(annotation)
        return annotation["id"]

    def build(self) -> dict:
        """The COCO instances dict."""
        categories = [{"id": cat_id, "name": name} for name, cat_id in self.category_ids.items()]
        return {"images": self.images, "annotations": self.annotations,
                "categories": sorted(categories, key=lambda c: c["id"])}


def renumber_categories(coco: dict, ids: Dict[str, int], extra: Sequence[str] = ()) -> dict:
    """`coco` with its categories given the ids `ids` (name -> id) and every annotation's `category_id` mapped by
    name; the names of `extra` (each in `ids`) are listed too, without annotations. Categories sorted by id."""
    name_of = {c["id"]: c["name"] for c in coco["categories"]}
    names = list(name_of.values()) + [name for name in extra if name not in name_of.values()]
    return {**coco, "categories": sorted(({"id": ids[name], "name": name} for name in names), key=lambda c: c["id"]),
            "annotations": [{**a, "category_id": ids[name_of[a["category_id"]]]} for a in coco["annotations"]]}


def polygon_area(polygon: Sequence[float]) -> float:
    """The area of a simple polygon [x0, y0, x1, y1, ...] (shoelace formula), in square pixels."""
    xs, ys = polygon[0::2], polygon[1::2]
    twice = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))
    return abs(twice) / 2.0
