"""Training and validation subsets of one labelled set: a named split of the source (`select_split`) or a seeded
fraction (`split_by_fraction`). Both keep every category (so the two label maps match) and renumber nothing (the
image and annotation ids stay those of the whole set, so a converted file and its splits agree)."""
from __future__ import annotations

import hashlib
from typing import Iterable, Tuple

from fpn.errors import InputError
from fpn.data.formats.common import LabelledData


def select_split(data: LabelledData, name: str) -> LabelledData:
    """The images of the source's split `name` (e.g. "train", "val") with their annotations.

    Raises:
        InputError: the source has no split of that name (the message lists those it has).
    """
    if name not in data.splits:
        have = ", ".join(sorted(data.splits)) or "none"
        raise InputError(f"{data.images_root}: no {name!r} split in this {data.data_format} data (splits: {have})")
    return subset(data, data.splits[name], [f"split {name!r}"])


def split_by_fraction(data: LabelledData, fraction: float, seed: int = 0) -> Tuple[LabelledData, LabelledData]:
    """(train, val): `round(fraction * N)` images (at least 1, at most N - 1) for validation, the rest for training.

    The validation images are those whose sha256 of "<seed>:<file_name>" is smallest: the split depends only on
    the file names, the fraction and the seed (not on the order a file system lists files in), and adding an image
    to the folder moves at most one image of the split.

    Raises:
        InputError: fraction not in (0, 1), or fewer than 2 images.
    """
    if not 0 < fraction < 1:
        raise InputError(f"--val-split must be between 0 and 1 (the fraction of images for validation), got {fraction}")
    images = data.coco["images"]
    if len(images) < 2:
        raise InputError(f"{data.images_root}: {len(images)} image(s), too few to split into training and validation")
    count = min(max(round(fraction * len(images)), 1), len(images) - 1)

    def rank(image: dict) -> Tuple[str, str]:
        return hashlib.sha256(f"{seed}:{image['file_name']}".encode()).hexdigest(), image["file_name"]

    val_ids = {image["id"] for image in sorted(images, key=rank)[:count]}
    train_ids = [image["id"] for image in images if image["id"] not in val_ids]
    note = f"{count} of {len(images)} images for validation (--val-split {fraction:g}, --split-seed {seed})"
    return subset(data, train_ids, [note]), subset(data, val_ids, [note])


def subset(data: LabelledData, image_ids: Iterable[int], notes=()) -> LabelledData:
    """The images `image_ids` of `data` (in the set's order) with their annotations and every category."""
    keep = set(image_ids)
    coco = {**data.coco, "images": [image for image in data.coco["images"] if image["id"] in keep],
            "annotations": [ann for ann in data.coco["annotations"] if ann["image_id"] in keep]}
    return LabelledData(data.images_root, coco, data.data_format, {}, [*data.notes, *notes])
