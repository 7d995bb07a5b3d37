"""A COCO instances JSON given as training data: the file itself, or a folder holding exactly one.

Where its images are: each `file_name` is relative to the JSON's folder, or to an `images/` folder beside it;
for a JSON inside an `annotations/` folder (COCO's own layout), to that folder's parent or the parent's `images/`.
The first of these folders that holds the first image's file is the images root (the others are not looked at
again: a missing file later is the image check's to report).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from fpn.errors import InputError
from fpn.data.formats.common import LabelledData

_REQUIRED = ("images", "annotations", "categories")


def read_coco_json(path: Path) -> LabelledData:
    """A COCO instances JSON (or the folder holding exactly one), its ids and contents as they are.

    Args:
        path: the .json file, or a folder with one .json at its top or in its annotations/ folder.
    Returns:
        LabelledData with data_format "coco" and no splits.
    Raises:
        InputError: not valid JSON ("<file>:<line>: ..."), a missing images/annotations/categories list, no or
            several JSON files in the folder, the first image found in none of the candidate folders.
    """
    path = Path(path)
    json_file = path if path.is_file() else find_coco_json(path)
    try:
        coco = json.loads(json_file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise InputError(f"{json_file}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(coco, dict) or any(not isinstance(coco.get(key), list) for key in _REQUIRED):
        raise InputError(f"{json_file}: a COCO instances JSON needs the lists {', '.join(_REQUIRED)}")
    return LabelledData(images_root(json_file, coco), coco, "coco", {}, [f"annotations from {json_file}"])


def find_coco_json(folder: Path) -> Path:
    """The one .json file at the top of `folder` or in its annotations/ folder.

    Raises:
        InputError: none, or several.
    """
    found = sorted(folder.glob("*.json")) + sorted((folder / "annotations").glob("*.json"))
    if len(found) != 1:
        what = f"{len(found)} ({', '.join(p.relative_to(folder).as_posix() for p in found)})" if found else "none"
        raise InputError(f"{folder}: a COCO folder holds exactly one .json file (at its top or in annotations/), "
                         f"found {what}: name the file")
    return found[0]


def images_root(json_file: Path, coco: dict) -> Path:
    """The folder the file names of `coco` are relative to (see the module docstring); the JSON's folder when
    it lists no image."""
    candidates = image_root_candidates(json_file)
    if not coco["images"]:
        return candidates[0]
    first = min(coco["images"], key=lambda image: image.get("id", 0))
    name = first.get("file_name")
    if not isinstance(name, str):
        raise InputError(f"{json_file}: image {first.get('id')} has no file_name")
    for folder in candidates:
        if (folder / name).is_file():
            return folder
    raise InputError(f"{json_file}: the first image's file {name} is in none of "
                     f"{', '.join(str(folder) for folder in candidates)}")


def image_root_candidates(json_file: Path) -> List[Path]:
    """Where the images of `json_file` may be, in the order they are tried."""
    folders = [json_file.parent, json_file.parent / "images"]
    if json_file.parent.name == "annotations":
        folders += [json_file.parent.parent, json_file.parent.parent / "images"]
    return folders
