"""YOLO (Ultralytics) data sets: image folders with a label .txt per image, read into a COCO dict.

Two layouts:

    DATASET/images/a.jpg, DATASET/labels/a.txt                 one set (images directly under images/)
    DATASET/images/train/a.jpg, DATASET/labels/train/a.txt     one split per subfolder of images/ (train, val, ...)
    DATASET/data.yaml (or any one *.yaml)                       `path`, `train`, `val`, `test`, `names`, `nc`

A data YAML's `path` is relative to the YAML's folder (absent: that folder); `train` / `val` / `test` are relative
to `path` and name image folders (or a list of them, or a .txt listing image files, relative to that file's
folder). An image's label file is its path with the last `images` folder replaced by `labels` and the suffix by
`.txt`, as Ultralytics finds it; an image without one, or with an empty one, is a background image; a label file
without its image is an error.

Class names: the YAML's `names` (a list, or an {index: name} mapping), else a names file (`classes.txt` in the
data set or its labels/ folder, or one `*.names` file), else "0", "1", ... up to the largest class index (noted).
Category ids are the YOLO class index + 1, and every class is a category, used or not.
Image sizes come from each file's header, after its EXIF rotation (as `fpn.data.image_io` delivers the pixels
and as Ultralytics reads the labels).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from PIL import Image

from fpn.errors import InputError
from fpn.data.file_check import TRANSPOSED_ORIENTATIONS, exif_orientation
from fpn.data.formats.common import IMAGE_SUFFIXES, CocoBuilder, LabelledData
from fpn.data.formats.yaml_subset import read_yaml_subset
from fpn.data.formats.yolo_labels import YoloObject, read_label_file

YAML_SUFFIXES = (".yaml", ".yml")
SPLIT_KEYS = ("train", "val", "test")


def read_yolo(path: Path) -> LabelledData:
    """A YOLO data set (a folder, or its data YAML) as a COCO dict.

    Args:
        path: the data set folder (images/ + labels/, or holding one data YAML), or the data YAML file.
    Returns:
        LabelledData: images_root = the common folder of the images; splits from split subfolders or the YAML.
    Raises:
        InputError: a missing folder, a malformed YAML or label file ("<file>:<line>: ..."), a class index
            outside the names, a label file without its image. An image whose header Pillow cannot read is
            listed with size 0 and no objects (noted) for the image check to name or skip.
    """
    path = Path(path)
    yaml_file = path if path.is_file() else find_data_yaml(path)
    notes: List[str] = []
    if yaml_file is not None:
        root, sets, names = _yaml_layout(yaml_file, notes)
        images_root = Path(os.path.commonpath([str(folder) for folder in _image_folders(sets)]))
    else:
        root, sets = path, _folder_layout(path)
        names = _names_file(root, notes)
        images_root = root / "images"
    files = sorted({image for images in sets.values() for image in images},
                   key=lambda image: image.relative_to(images_root).as_posix())
    label_files = {image: label_file_of(image) for image in files}
    _check_no_orphan_labels(label_files, root)
    labelled = [(image, *_read_image_labels(image, label_files[image], root)) for image in files]
    unreadable = [image for image, size, _ in labelled if size == (0, 0)]
    if unreadable:
        notes.append(f"{len(unreadable)} image(s) whose header Pillow cannot read (e.g. {_shown(unreadable[0], root)}) "
                     "are listed with size 0 and no objects: the image check reports them (--skip-bad-images drops "
                     "them)")
    names = _check_classes(labelled, names, notes, root)
    builder = CocoBuilder(names)
    image_ids = {}
    for image, (width, height), objects in labelled:
        image_ids[image] = builder.add_image(image.relative_to(images_root).as_posix(), width, height)
        for obj in objects:
            builder.add_box(image_ids[image], obj.class_index + 1, *obj.box, polygon=obj.polygon)
    splits = {name: sorted({image_ids[image] for image in images}) for name, images in sets.items() if name is not None}
    return LabelledData(images_root, builder.build(), "yolo", splits, notes)


def find_data_yaml(folder: Path) -> Optional[Path]:
    """The data YAML of a folder: data.yaml, else its only *.yaml / *.yml; None when it has none.

    Raises:
        InputError: several YAML files and none is data.yaml.
    """
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in YAML_SUFFIXES and p.is_file())
    for candidate in found:
        if candidate.stem == "data":
            return candidate
    if len(found) > 1:
        raise InputError(f"{folder}: several YAML files ({', '.join(p.name for p in found)}): name the data YAML "
                         "itself as the data path")
    return found[0] if found else None


def _folder_layout(root: Path) -> Dict[Optional[str], List[Path]]:
    """{split name or None: image files} of DATASET/images (+ labels/)."""
    images = root / "images"
    if not images.is_dir() or not (root / "labels").is_dir():
        raise InputError(f"{root}: a YOLO folder holds images/ and labels/ (or a data YAML)")
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.iterdir() if p.is_file()):
        return {None: _images_under(images)}
    sets = {p.name: _images_under(p) for p in sorted(images.iterdir()) if p.is_dir()}
    if not any(sets.values()):
        raise InputError(f"{images}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return sets


def _images_under(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _yaml_layout(yaml_file: Path, notes: List[str]) -> Tuple[Path, Dict[Optional[str], List[Path]], Optional[List[str]]]:
    """(dataset root, {split: image files}, class names or None) of a data YAML."""
    data = read_yaml_subset(yaml_file)
    root = (yaml_file.parent / str(data["path"]) if data.get("path") else yaml_file.parent).resolve()
    sets: Dict[Optional[str], List[Path]] = {}
    for key in SPLIT_KEYS:
        value = data.get(key)
        if value is None:
            continue
        sets[key] = []
        for entry in value if isinstance(value, list) else [value]:
            sets[key] += _yaml_images((root / str(entry)).resolve(), f"{yaml_file}: {key}: {entry}")
    if not sets:
        raise InputError(f"{yaml_file}: names no image folder (give train and val)")
    return root, sets, _yaml_names(data, yaml_file, notes)


def _yaml_images(target: Path, what: str) -> List[Path]:
    if target.is_dir():
        return _images_under(target)
    if target.is_file() and target.suffix == ".txt":  # a list of image files, relative to its folder
        lines = [line.strip() for line in target.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        return [(target.parent / line).resolve() for line in lines]
    raise InputError(f"{what}: no such folder ({target})")


def _image_folders(sets: Dict[Optional[str], List[Path]]) -> List[Path]:
    folders = {image.parent for images in sets.values() for image in images}
    if not folders:
        raise InputError("the data YAML's folders hold no image files")
    return sorted(folders)


def _yaml_names(data: dict, yaml_file: Path, notes: List[str]) -> Optional[List[str]]:
    names, count = data.get("names"), data.get("nc")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise InputError(f"{yaml_file}: names must be indexed 0 to {len(names) - 1}, got {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if names is not None and not isinstance(names, list):
        raise InputError(f"{yaml_file}: names must be a list or an index: name mapping, got {names!r}")
    if names is not None and count is not None and count != len(names):
        raise InputError(f"{yaml_file}: nc is {count} but names has {len(names)} entries")
    if names is None and isinstance(count, int):
        notes.append(f"{yaml_file.name} gives nc {count} and no names: the classes are named 0 to {count - 1}")
        names = [str(i) for i in range(count)]
    return [str(name) for name in names] if names is not None else None


def _names_file(root: Path, notes: List[str]) -> Optional[List[str]]:
    """Class names from classes.txt (in the data set or its labels/) or one *.names file; None without one."""
    candidates = [root / "classes.txt", root / "labels" / "classes.txt", *sorted(root.glob("*.names"))]
    found = [p for p in candidates if p.is_file()]
    if not found:
        return None
    names = [line.strip() for line in found[0].read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    notes.append(f"class names from {found[0].relative_to(root).as_posix()}")
    return names


def label_file_of(image: Path) -> Path:
    """The label file Ultralytics reads for `image`: its last `images` folder -> `labels`, suffix -> .txt."""
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        raise InputError(f"{image}: a YOLO image must be under a folder named images (its labels under labels)")
    index = len(parts) - 2 - parts[-2::-1].index("images")
    parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def _read_image_labels(image: Path, label: Path, root: Path) -> Tuple[Tuple[int, int], List[YoloObject]]:
    """((width, height), objects) of an image; ((0, 0), []) when its header cannot be read: the label file needs
    the size, and the bad file is left for the image check (`fpn.data.file_check`) to name or skip as it does
    for every format."""
    try:
        width, height = upright_size(image, _shown(image, root))
    except InputError:
        return (0, 0), []
    objects = read_label_file(label, _shown(label, root), width, height) if label.is_file() else []
    return (width, height), objects


def upright_size(image: Path, shown: str) -> Tuple[int, int]:
    """(width, height) of an image file after its EXIF rotation, from its header (no decode).

    Raises:
        InputError: Pillow cannot read the header.
    """
    try:
        with Image.open(image) as img:
            width, height = img.size
            return (height, width) if exif_orientation(img) in TRANSPOSED_ORIENTATIONS else (width, height)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise InputError(f"{shown}: not an image Pillow can read ({type(err).__name__})") from err


def _check_no_orphan_labels(label_files: Dict[Path, Path], root: Path) -> None:
    """InputError naming the first label file (in the labels folders of the images) that has no image."""
    wanted = set(label_files.values())
    for folder in sorted({label.parent for label in wanted}):
        for label in sorted(folder.glob("*.txt")):
            if label not in wanted and label.name != "classes.txt":
                raise InputError(f"{_shown(label, root)}: a label file with no image (no image named "
                                 f"{label.stem} with the same path under images/)")


def _check_classes(labelled, names: Optional[List[str]], notes: List[str], root: Path) -> List[str]:
    """The class names, checked against every object's class index (named 0, 1, ... when there are none)."""
    if names is None:
        largest = max((obj.class_index for _, _, objects in labelled for obj in objects), default=-1)
        notes.append(f"no class names (data YAML, classes.txt or *.names): the classes are named 0 to {largest}")
        return [str(i) for i in range(largest + 1)]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise InputError(f"{root}: class names given twice: {', '.join(twice)}")
    for image, _, objects in labelled:
        for obj in objects:
            if obj.class_index >= len(names):
                raise InputError(f"{_shown(label_file_of(image), root)}:{obj.line}: class {obj.class_index} is not "
                                 f"among the {len(names)} classes (0 to {len(names) - 1})")
    return names


def _shown(path: Path, root: Path) -> str:
    """`path` relative to the data set's root (POSIX), or as given when it is elsewhere."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
