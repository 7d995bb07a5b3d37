"""Pascal VOC folders -> a COCO instances dict (`read_voc`).

A VOC folder is a VOCdevkit year (VOC2007, VOC2012) or what LabelImg, CVAT and Roboflow export as "Pascal VOC":

    root/Annotations/<id>.xml          one per image: <filename>, <size>, and per object <name>, <bndbox>, <difficult>
    root/JPEGImages/<filename>         the images
    root/ImageSets/Main/<split>.txt    optional, split in train / val / trainval / test: one image id per line
    root/classes.txt                   optional: the class names in label order, one per line

Every `Annotations/*.xml` is an image, sorted by file name (ids 1, 2, ... in that order); its id in the split files
is the xml's stem. Class names are every <name> found, sorted, unless `classes.txt` gives them (its order, unused
names included, and a <name> not in it is an error). Per-class split files (`cat_train.txt`) are not read.

Coordinates: VOC's corners are 1-based, inclusive pixel indices (xmin = 1, xmax = W is the whole row). As
detectron2's Pascal VOC loader does (`detectron2/data/datasets/pascal_voc.py`, `load_voc_instances`), 1 is taken off
xmin and ymin and xmax, ymax are kept, giving the continuous box [xmin - 1, xmax] that covers those pixels.

Difficult objects (<difficult>1</difficult>) become crowd regions (iscrowd = 1): training leaves them out and COCOeval
ignores the detections it matches to them, which is what VOC's own evaluation does with difficult objects (COCOeval
matches a crowd region by intersection over the detection's area, VOC by plain IoU). detectron2 trains on them; here
they are neither positives nor negatives. <truncated>, <pose>, <part> and <segmented> are not read.

Sizes: the image's width and height come from <size>, trusted as a COCO json's are (`fpn.data.coco`); the image
check run before training (`fpn.data.file_check`) compares them with each file's header and reports a mismatch.
Image files: JPEGImages/<filename>; when that file does not exist (renamed or re-encoded images, a <filename> that
kept another tool's name), the one image file of JPEGImages whose stem is the xml's stem is used instead, and a note
says how many were found so. No such file is an error: a label file without its image is a broken folder.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from fpn.data.formats.common import IMAGE_SUFFIXES, CocoBuilder, LabelledData
from fpn.errors import InputError

SPLIT_NAMES = ("train", "val", "trainval", "test")


@dataclass(frozen=True)
class VocObject:
    name: str
    box: Tuple[float, float, float, float]  # (x0, y0, x1, y1) continuous pixel coordinates, 1 taken off xmin, ymin
    difficult: bool


@dataclass(frozen=True)
class VocImage:
    xml_path: Path
    file_name: str  # relative to JPEGImages
    width: int
    height: int
    objects: Tuple[VocObject, ...]
    found_by_stem: bool  # <filename> named no file; the image was found by the xml's stem


def read_voc(root: Path) -> LabelledData:
    """Read a Pascal VOC folder (see the module docstring for the layout and the conventions).

    Args:
        root: the folder holding `Annotations/` and `JPEGImages/` (e.g. VOCdevkit/VOC2007).

    Returns:
        LabelledData with data_format "voc", images_root = root/JPEGImages, and `splits` from
        ImageSets/Main/{train,val,trainval,test}.txt (those present) as lists of image ids, in file order.

    Raises:
        InputError: one line naming the file (and line, or object number counting from 1): no Annotations or
            JPEGImages folder, no xml, XML that does not parse, a missing <size>, <name> or <bndbox>, a coordinate
            that is not a number, an inverted box, an image file not found, a <name> missing from classes.txt,
            a split file naming an image id that has no xml.
    """
    root = Path(root)
    annotations_dir, images_dir = root / "Annotations", root / "JPEGImages"
    for folder in (annotations_dir, images_dir):
        if not folder.is_dir():
            raise InputError(f"{root}: not a Pascal VOC folder: {folder.name}/ is missing")
    xml_paths = sorted(path for path in annotations_dir.iterdir() if path.suffix.lower() == ".xml")
    if not xml_paths:
        raise InputError(f"{annotations_dir}: no .xml annotation files")
    image_names = _image_names_by_stem(images_dir)
    images = [parse_voc_xml(path, images_dir, image_names) for path in xml_paths]

    found = sorted({obj.name for image in images for obj in image.objects})
    classes_file = root / "classes.txt"
    names = read_class_names(classes_file) if classes_file.is_file() else found
    builder = CocoBuilder(names)
    for image in images:
        image_id = builder.add_image(image.file_name, image.width, image.height)
        for number, obj in enumerate(image.objects, start=1):
            if obj.name not in builder.category_ids:
                raise InputError(f"{image.xml_path}: object {number} is named '{obj.name}', which is not in "
                                 f"{classes_file}")
            builder.add_box(image_id, builder.category_ids[obj.name], *obj.box, iscrowd=obj.difficult)

    ids_by_stem = {image.xml_path.stem: image_id for image_id, image in enumerate(images, start=1)}
    splits = {}
    for name in SPLIT_NAMES:
        split_file = root / "ImageSets" / "Main" / f"{name}.txt"
        if split_file.is_file():
            splits[name] = read_split_file(split_file, ids_by_stem)
    return LabelledData(images_root=images_dir, coco=builder.build(), data_format="voc", splits=splits,
                        notes=_notes(images))


def parse_voc_xml(path: Path, images_dir: Path, image_names: Dict[str, List[str]]) -> VocImage:
    """One VOC annotation file.

    Args:
        path: the xml file.
        images_dir: the JPEGImages folder.
        image_names: the image files of JPEGImages by stem (`_image_names_by_stem`), for the fallback.
    Raises:
        InputError: see `read_voc`.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        line, column = err.position
        reason = str(err).rsplit(": line ", 1)[0]
        raise InputError(f"{path}:{line}:{column}: XML does not parse ({reason})") from err
    if root.tag != "annotation":
        raise InputError(f"{path}: the root element is <{root.tag}>, not VOC's <annotation>")
    size = root.find("size")
    if size is None:
        raise InputError(f"{path}: no <size> (the image's <width> and <height>)")
    width, height = (_positive_int(size, key, path) for key in ("width", "height"))
    file_name, found_by_stem = _image_file(path, _text(root, "filename"), images_dir, image_names)
    objects = tuple(_voc_object(obj, number, path) for number, obj in enumerate(root.findall("object"), start=1))
    return VocImage(path, file_name, width, height, objects, found_by_stem)


def _voc_object(obj: ET.Element, number: int, path: Path) -> VocObject:
    name = _text(obj, "name")
    if not name:
        raise InputError(f"{path}: object {number} has no <name>")
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise InputError(f"{path}: object {number} ('{name}') has no <bndbox>")
    what = f"object {number} ('{name}')"
    xmin, ymin, xmax, ymax = (_coordinate(bndbox, key, what, path) for key in ("xmin", "ymin", "xmax", "ymax"))
    if xmax < xmin or ymax < ymin:
        raise InputError(f"{path}: object {number} ('{name}') has an inverted <bndbox>: xmin {xmin:g}, "
                         f"ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}")
    difficult = _text(obj, "difficult") or "0"
    if difficult not in ("0", "1"):
        raise InputError(f"{path}: object {number} ('{name}') has <difficult>{difficult}</difficult>; "
                         f"expected 0 or 1")
    # 1-based inclusive pixel indices -> continuous corners, as detectron2's load_voc_instances
    return VocObject(name, (xmin - 1.0, ymin - 1.0, xmax, ymax), difficult == "1")


def read_class_names(path: Path) -> List[str]:
    """The class names of a `classes.txt`, one per line in label order (blank lines skipped).

    Raises:
        InputError: a name listed twice (naming file:line), or no name at all.
    """
    names: List[str] = []
    for line_number, name in _stripped_lines(path):
        if name in names:
            raise InputError(f"{path}:{line_number}: '{name}' is listed twice")
        if name:
            names.append(name)
    if not names:
        raise InputError(f"{path}: no class names (one per line)")
    return names


def read_split_file(path: Path, ids_by_stem: Dict[str, int]) -> List[int]:
    """The image ids of a VOC split file (one image id, the xml's stem, per line), in file order, once each.

    Raises:
        InputError: "<file>:<line>: image id '<id>' has no Annotations/<id>.xml".
    """
    ids: Dict[int, None] = {}  # an ordered set
    for line_number, stem in _stripped_lines(path):
        if not stem:
            continue
        if stem not in ids_by_stem:
            raise InputError(f"{path}:{line_number}: image id '{stem}' has no Annotations/{stem}.xml")
        ids[ids_by_stem[stem]] = None
    return list(ids)


def _stripped_lines(path: Path) -> List[Tuple[int, str]]:
    """(line number from 1, stripped text) of each line of a text file (UTF-8, a BOM skipped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]


def _image_names_by_stem(images_dir: Path) -> Dict[str, List[str]]:
    """stem -> the sorted names of the image files in `images_dir` with that stem (one listing for all xmls)."""
    by_stem: Dict[str, List[str]] = {}
    for name in sorted(os.listdir(images_dir)):
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(stem, []).append(name)
    return by_stem


def _image_file(path: Path, file_name: str, images_dir: Path,
                image_names: Dict[str, List[str]]) -> Tuple[str, bool]:
    """(the image's name relative to JPEGImages, whether it was found by the xml's stem)."""
    if file_name and (images_dir / file_name).is_file():
        return Path(file_name).as_posix(), False
    candidates = image_names.get(path.stem, [])
    named = f"<filename> '{file_name}' is not in {images_dir}" if file_name else "no <filename>"
    if len(candidates) == 1:
        return candidates[0], True
    if candidates:
        raise InputError(f"{path}: {named}, and several images are named {path.stem}.*: "
                         f"{', '.join(candidates)}")
    raise InputError(f"{path}: {named}, nor is any image named {path.stem}.*")


def _text(element: ET.Element, key: str) -> str:
    """The stripped text of `element`'s child `key`; '' when absent or empty."""
    child = element.find(key)
    return (child.text or "").strip() if child is not None else ""


def _positive_int(size: ET.Element, key: str, path: Path) -> int:
    text = _text(size, key)
    value = _number(text)
    if not (math.isfinite(value) and value > 0 and value == int(value)):
        raise InputError(f"{path}: <size><{key}> must be a positive whole number of pixels, got '{text}'")
    return int(value)


def _coordinate(bndbox: ET.Element, key: str, what: str, path: Path) -> float:
    text = _text(bndbox, key)
    if not text:
        raise InputError(f"{path}: {what} has no <bndbox><{key}>")
    value = _number(text)
    if not math.isfinite(value):
        raise InputError(f"{path}: {what} has <{key}>{text}</{key}>, which is not a number")
    return value


def _number(text: str) -> float:
    """float(text), NaN when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _notes(images: Sequence[VocImage]) -> List[str]:
    notes = []
    by_stem = [image for image in images if image.found_by_stem]
    if by_stem:
        example = by_stem[0]
        notes.append(f"{len(by_stem)} images were found by their annotation file's name because <filename> named no "
                     f"file in JPEGImages (e.g. {example.xml_path.name} -> {example.file_name})")
    difficult = sum(obj.difficult for image in images for obj in image.objects)
    if difficult:
        notes.append(f"{difficult} objects marked difficult are crowd regions (iscrowd = 1): training leaves them "
                     f"out and evaluation ignores detections on them")
    return notes

