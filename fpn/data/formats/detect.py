"""Which label format a data path holds (`detect_format`), and reading it whatever it is (`read_dataset`).

    coco     a .json file, or a folder holding exactly one .json (at its top or in annotations/) that is not LabelMe's
    yolo     a folder with images/ and labels/, or a data YAML (the .yaml file, or a folder holding one)
    voc      a folder with Annotations/ and JPEGImages/
    labelme  a folder of LabelMe .json files (each with `shapes` and `imagePath`)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional

from fpn.errors import InputError
from fpn.data.formats.coco_json import read_coco_json
from fpn.data.formats.common import LabelledData
from fpn.data.formats.labelme import read_labelme
from fpn.data.formats.voc import read_voc
from fpn.data.formats.yolo import YAML_SUFFIXES, find_data_yaml, read_yolo

FORMATS = ("coco", "yolo", "voc", "labelme")
READERS: Dict[str, Callable[[Path], LabelledData]] = {
    "coco": read_coco_json, "yolo": read_yolo, "voc": read_voc, "labelme": read_labelme,
}
NEEDS = ("coco: a .json file or a folder with one; yolo: images/ + labels/ or a data YAML; voc: Annotations/ + "
         "JPEGImages/; labelme: LabelMe .json files (shapes, imagePath)")


def read_dataset(path, data_format: Optional[str] = None) -> LabelledData:
    """Read a labelled image set in any of the formats, detected from what is on disk unless named.

    Args:
        path: a data set folder or file (see the module docstring).
        data_format: coco, yolo, voc or labelme; None: detected (`detect_format`).
    Returns:
        LabelledData; its notes start with the format read and, when detected, why.
    Raises:
        InputError: no such path, an unknown or undetectable format (saying what each needs), or the reader's
            error for a malformed file (naming the file and line).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if data_format is not None and data_format not in FORMATS:
        raise InputError(f"unknown data format {data_format!r}: choose {', '.join(FORMATS)}")
    how = "as named" if data_format else "detected"
    data_format = data_format or detect_format(path)
    data = READERS[data_format](path)
    data.notes.insert(0, f"{path}: {data_format} format ({how})")
    return data


def detect_format(path: Path) -> str:
    """The label format of a data set file or folder (see the module docstring).

    Raises:
        InputError: none fits (the message says what each format needs), or several do (name one).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in YAML_SUFFIXES:
            return "yolo"
        if path.suffix.lower() == ".json":
            return "coco"
        raise InputError(f"{path}: not a data set file (.json: COCO, .yaml: YOLO data YAML); {NEEDS}")
    found = formats_in(path)
    if not found:
        raise InputError(f"{path}: no label format recognised ({NEEDS})")
    if len(found) > 1:
        raise InputError(f"{path}: holds {' and '.join(found)} data; choose one with --data-format")
    return found[0]


def formats_in(folder: Path) -> List[str]:
    """Every format whose layout `folder` has."""
    found = []
    jsons = sorted(folder.glob("*.json"))
    first = jsons[0] if jsons else next(folder.rglob("*.json"), None)  # LabelMe files may sit in subfolders
    if first is not None and _is_labelme(first):
        found.append("labelme")
    elif jsons or list((folder / "annotations").glob("*.json")):
        found.append("coco")
    if ((folder / "images").is_dir() and (folder / "labels").is_dir()) or find_data_yaml(folder) is not None:
        found.append("yolo")
    if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
        found.append("voc")
    return found


_LABELME_MAX_BYTES = 64 << 20  # a larger JSON is not one image's shapes (and is not read in full to find out)


def _is_labelme(json_file: Path) -> bool:
    try:
        if json_file.stat().st_size > _LABELME_MAX_BYTES:
            return False
        content = json.loads(json_file.read_text(encoding="utf-8-sig"))
    except (ValueError, OSError):
        return False
    return isinstance(content, dict) and "shapes" in content and "imagePath" in content
