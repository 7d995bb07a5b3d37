"""COCO-format detection dataset: images + `instances_*.json` -> (image tensor, target dict) samples.

Label space: the K category ids of the json, sorted, map to contiguous labels 1..K; 0 is the background.
Targets keep what the detector trains on: crowd regions (`iscrowd` = 1) are left out (they must never be matched
as positives; COCOeval still sees them through `dataset.coco`), boxes are converted xywh -> xyxy and clipped to the
image, and boxes that are empty after clipping (zero area, inverted, outside the image) are dropped, counted at
load time and reported in one warning.

Instance masks (masks=True) come from each kept annotation's `segmentation` (polygons, uncompressed or compressed
RLE; see `fpn.data.masks`): its structure is checked when the data set is built, and the masks of a sample are
rasterised only when that sample is read, as uint8 0/1 at the image's original size (the model resizes).

Random flips (train=True) are reproducible: the flip of sample `index` in epoch `e` is drawn from a
`torch.Generator` seeded by (seed, e, index), so it does not depend on the DataLoader's worker count or on which
worker decodes it. The epoch comes with the key: `dataset[(index, epoch)]` (what `TrainingSampler(...,
with_epoch=True)` yields), or `dataset[index]` with the epoch last given to `set_epoch` (default 0).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from fpn.errors import InputError
from fpn.data.image_io import load_rgb_image, pil_to_tensor01, to_uint8_tensor
from fpn.data.masks import decode_masks, fit_masks, segmentation_problem
from fpn.data.transforms import Compose, RandomHorizontalFlip

_REQUIRED_KEYS = ("images", "annotations", "categories")
SampleKey = Union[int, Tuple[int, int]]


class CocoDetection(Dataset):
    """Detection samples from a COCO-format annotation file (pycocotools' COCO underneath).

    Args:
        images_dir: folder holding the files named by each image's `file_name`.
        annotations_file: COCO instances json (`images`, `annotations`, `categories`).
        train: apply the training augmentation (horizontal flip, p = 0.5).
        skip_bad_images: when an image file is missing or cannot be decoded, warn once for that file and return
            the next readable image in index order (index + 1, index + 2, ..., wrapping around) instead of
            raising InputError; the count of bad files found is `num_skipped_images` (per process: with
            DataLoader workers, each worker keeps its own count). `fpn.data.file_check` finds bad files before
            training and drops them (`drop_images`) under this same option.
        seed: non-negative seed of the flip draws (see the module docstring).
        masks: also return each target's instance masks (`masks` below); every kept annotation then needs a
            usable `segmentation`. False reads no segmentation at all.
        cache_images: keep each image decoded (uint8, 3 bytes a pixel: `decoded_bytes()`) after its first read,
            so that later epochs skip the file read and decode. Per process: each DataLoader worker keeps its own.
            For sets that fit in memory (the CPU presets' synthetic set: 500 images, ~0.12 GB).

    Attributes:
        coco: the pycocotools `COCO` object (for COCOeval).
        image_ids: COCO image ids in sample order (sorted), list[int].
        label_to_category: contiguous label (1..K) -> COCO category id.
        category_to_label: the inverse mapping.
        class_names: label -> category name, with 0 -> "__background__" (len == num_classes).
        num_classes: K + 1 (background included).
        num_dropped_boxes: annotations dropped for an empty box after clipping (crowd ones not counted).
        num_crowd_annotations: annotations left out of the targets because iscrowd = 1.
        num_dropped_images: images left out by `drop_images` (e.g. unreadable files found before training).
        with_masks: the `masks` argument.

    Raises:
        FileNotFoundError: the annotation file does not exist.
        ValueError: malformed json, a missing top-level key, no images or categories, an annotation naming an
            unknown category or image, a malformed bbox, or a negative seed.
        InputError (a ValueError): masks=True and a kept annotation has no usable segmentation (missing, an empty
            polygon list, a polygon of fewer than 3 points, an RLE whose size is not the image's); the message
            names the file and the annotation id.

    Each sample is `(image, target)`: image float32 (3, H, W) RGB in [0, 1]; target `boxes` float32 (N, 4) xyxy
    absolute pixels, `labels` int64 (N,) in 1..K, `image_id` int, `orig_size` (H, W) ints. N may be 0.
    With masks=True the target also holds `masks` uint8 (N, H, W) of 0/1, one per box in the same order (the
    annotation's segmentation as `COCO.annToMask` decodes it); without it there is no `masks` key.
    A missing or undecodable file raises InputError (one line naming the file) unless skip_bad_images.
    """

    def __init__(
        self,
        images_dir: Union[str, os.PathLike],
        annotations_file: Union[str, os.PathLike],
        train: bool,
        skip_bad_images: bool = False,
        seed: int = 0,
        masks: bool = False,
        cache_images: bool = False,
    ):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.images_dir = Path(images_dir)
        self.annotations_file = Path(annotations_file)
        self.train = train
        self.skip_bad_images = skip_bad_images
        self.seed = seed
        self.with_masks = masks
        self.cache_images = cache_images
        self._decoded: Dict[int, torch.Tensor] = {}  # index -> uint8 (3, H, W), with cache_images
        self.epoch = 0
        self.transforms = Compose([RandomHorizontalFlip(0.5)]) if train else None

        data = _read_coco_json(self.annotations_file)
        categories = _check_categories(data, self.annotations_file)
        self.label_to_category = {label: cat_id for label, cat_id in enumerate(sorted(categories), start=1)}
        self.category_to_label = {cat_id: label for label, cat_id in self.label_to_category.items()}
        self.class_names = {0: "__background__"}
        self.class_names.update({lb: categories[c] for lb, c in self.label_to_category.items()})
        self.num_classes = len(self.label_to_category) + 1

        self.num_dropped_images = 0
        self._index(data, warn=True)

    def _index(self, data: dict, warn: bool) -> None:
        """(Re)build everything indexed by sample: ids, file names, sizes, targets, the COCO object."""
        images = _check_images(data, self.annotations_file)
        self.image_ids = sorted(images)
        self._file_names = [str(images[i]["file_name"]) for i in self.image_ids]
        # (n, 2) int64: the (height, width) the json states, used for clipping and aspect-ratio grouping
        self._json_sizes = np.array([[images[i]["height"], images[i]["width"]] for i in self.image_ids], np.int64)
        self._build_targets(data["annotations"], warn)

        self.coco = COCO()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco.dataset = data
            self.coco.createIndex()
        self._bad_indices: set = set()
        self._warned_size_mismatch: set = set()

    def drop_images(self, indices: Iterable[int]) -> None:
        """Leave the samples at `indices` out of the data set, as if the json had never listed them.

        Everything indexed by sample is rebuilt from the remaining images: `image_ids`, the targets,
        `aspect_ratio_groups()`, `coco` (images and annotations of the dropped ones removed) and the box counts;
        the label mapping stays (it comes from the categories). Adds the count to `num_dropped_images`.

        Raises:
            IndexError: an index out of range.
            ValueError: every image would be dropped.
        """
        drop_ids = set()
        for index in indices:
            if not 0 <= index < len(self):
                raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
            drop_ids.add(self.image_ids[index])
        if not drop_ids:
            return
        if len(drop_ids) == len(self):
            raise ValueError(f"cannot drop all {len(self)} images of {self.annotations_file}")
        data = dict(self.coco.dataset)
        data["images"] = [img for img in data["images"] if img.get("id") not in drop_ids]
        data["annotations"] = [ann for ann in data["annotations"] if ann.get("image_id") not in drop_ids]
        self._index(data, warn=False)  # the empty-box warning was given once, at construction
        self._decoded.clear()  # keyed by sample index, which changed
        self.num_dropped_images += len(drop_ids)

    def _build_targets(self, annotations: Sequence[dict], warn: bool) -> None:
        """Store every image's boxes/labels in flat arrays (cheap to share with forked DataLoader workers), and with
        masks the kept annotations' segmentations, checked but not decoded."""
        row_of_image = {image_id: row for row, image_id in enumerate(self.image_ids)}
        rows, boxes, labels, segmentations = [], [], [], []
        self.num_crowd_annotations = 0
        self.num_dropped_boxes = 0
        for ann in annotations:
            ann_id, cat_id, image_id = ann.get("id"), ann.get("category_id"), ann.get("image_id")
            if cat_id not in self.category_to_label:
                raise ValueError(
                    f"{self.annotations_file}: annotation id {ann_id} has category_id {cat_id}, which is not "
                    f"among the categories {sorted(self.category_to_label)}"
                )
            if image_id not in row_of_image:
                raise ValueError(f"{self.annotations_file}: annotation id {ann_id} has unknown image_id {image_id}")
            if ann.get("iscrowd", 0):
                self.num_crowd_annotations += 1
                continue
            row = row_of_image[image_id]
            box = _xywh_to_clipped_xyxy(ann.get("bbox"), self._json_sizes[row], ann_id, self.annotations_file)
            if box[2] <= box[0] or box[3] <= box[1]:
                self.num_dropped_boxes += 1
                continue
            if self.with_masks:
                segmentations.append(_checked_segmentation(ann, self._json_sizes[row], self.annotations_file))
            rows.append(row)
            boxes.append(box)
            labels.append(self.category_to_label[cat_id])
        if self.num_dropped_boxes and warn:
            warnings.warn(
                f"{self.annotations_file}: dropped {self.num_dropped_boxes} annotations whose box is empty "
                f"(zero area or inverted) after clipping to the image"
            )
        rows_np = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows_np, kind="stable")  # group by image, keeping the json order within an image
        self._boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order]  # (M, 4) xyxy abs px
        self._labels = np.asarray(labels, dtype=np.int64)[order]  # (M,)
        self._segmentations = [segmentations[i] for i in order] if self.with_masks else None  # M COCO segmentations
        counts = np.bincount(rows_np, minlength=len(self.image_ids))
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (n + 1,)

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used for the flip draws of integer keys (tuple keys carry their own epoch)."""
        self.epoch = int(epoch)

    @property
    def num_skipped_images(self) -> int:
        """How many distinct bad image files this process has skipped (skip_bad_images=True)."""
        return len(self._bad_indices)

    def aspect_ratio_groups(self) -> List[int]:
        """Per sample, 0 if width >= height else 1 (portrait), from the json sizes (no decoding)."""
        return [int(w < h) for h, w in self._json_sizes.tolist()]

    def decoded_bytes(self) -> int:
        """Bytes of every image decoded as uint8 RGB, from the annotation file's sizes (what cache_images holds
        once each image was read)."""
        return int(3 * self._json_sizes.astype(np.int64).prod(axis=1).sum())

    def image_paths(self) -> List[Path]:
        """Per sample, the image file (`images_dir / file_name`)."""
        return [self.images_dir / name for name in self._file_names]

    def image_sizes(self) -> List[Tuple[int, int]]:
        """Per sample, the (height, width) the json states."""
        return [(h, w) for h, w in self._json_sizes.tolist()]

    def __getitem__(self, key: SampleKey) -> Tuple[torch.Tensor, Dict[str, object]]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), self.epoch)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index %= len(self)
        image, index = self._load_image(index)  # index changes only when a bad image was skipped
        height, width = image.shape[1:]
        target = {
            **self._target_arrays(index, height, width),  # boxes, labels (, masks)
            "image_id": self.image_ids[index],
            "orig_size": (int(height), int(width)),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target, self._generator(index, epoch))
        return image, target

    def _generator(self, index: int, epoch: int) -> torch.Generator:
        # SeedSequence mixes (seed, epoch, index) into well-spread 64-bit seeds; nearby keys give unrelated draws.
        words = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed((int(words[0]) << 32) | int(words[1]))

    def _load_image(self, index: int) -> Tuple[torch.Tensor, int]:
        n = len(self)
        for offset in range(n):
            candidate = (index + offset) % n
            if candidate in self._bad_indices:
                continue
            path = self.images_dir / self._file_names[candidate]
            try:
                if not self.cache_images:
                    return pil_to_tensor01(load_rgb_image(path)), candidate  # (3, H, W) float32 in [0, 1]
                if candidate not in self._decoded:
                    self._decoded[candidate] = to_uint8_tensor(load_rgb_image(path))  # (3, H, W) uint8
                return self._decoded[candidate].to(torch.float32).div_(255.0), candidate  # as pil_to_tensor01
            except (FileNotFoundError, ValueError) as err:
                if not self.skip_bad_images:
                    # One line, so that the message a DataLoader re-raises from a worker ends with all of it.
                    reason = " ".join(str(err).split())
                    raise InputError(f"{reason}; restore or replace the file, or skip unreadable images with "
                                     f"--skip-bad-images") from err
                self._bad_indices.add(candidate)
                warnings.warn(f"skipping bad image {path}: {err}")
        raise ValueError(f"no readable image among the {n} images of {self.annotations_file} in {self.images_dir}")

    def _target_arrays(self, index: int, height: int, width: int) -> Dict[str, torch.Tensor]:
        start, end = self._offsets[index], self._offsets[index + 1]
        boxes = torch.from_numpy(self._boxes[start:end].copy())  # (N, 4) xyxy abs px, clipped to the json size
        labels = torch.from_numpy(self._labels[start:end].copy())  # (N,)
        arrays = {"boxes": boxes, "labels": labels}
        json_height, json_width = self._json_sizes[index].tolist()
        if self.with_masks:
            masks = decode_masks(self._segmentations[start:end], json_height, json_width)  # (N, H_json, W_json)
            arrays["masks"] = fit_masks(masks, height, width)
        if (height, width) != (json_height, json_width):
            # The decoded file disagrees with the json (e.g. an EXIF rotation): clip to the real pixels.
            if index not in self._warned_size_mismatch:
                self._warned_size_mismatch.add(index)
                warnings.warn(
                    f"{self.images_dir / self._file_names[index]}: decoded size (H, W) = ({height}, {width}) differs "
                    f"from the annotation file's ({json_height}, {json_width}); boxes are clipped to the decoded image"
                )
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            arrays = {key: value[keep] for key, value in arrays.items()}
        return arrays


def collate(batch: Sequence[Tuple[torch.Tensor, dict]]) -> Tuple[List[torch.Tensor], List[dict]]:
    """DataLoader `collate_fn` for detection: keep images and targets as lists (sizes differ, nothing stacked).

    Args:
        batch: the (image (3, H_i, W_i), target) samples of one batch.

    Returns:
        (images: list of B tensors, targets: list of B dicts), in batch order.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def _read_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"annotations file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: malformed JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise ValueError(f"{path}: missing key '{key}' (a COCO file needs {list(_REQUIRED_KEYS)})")
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def _check_categories(data: dict, path: Path) -> Dict[int, str]:
    """Return category id -> name, checking ids are unique integers."""
    categories: Dict[int, str] = {}
    for cat in data["categories"]:
        cat_id = cat.get("id")
        if not isinstance(cat_id, int) or cat_id in categories:
            raise ValueError(f"{path}: category id {cat_id!r} is not a unique integer")
        categories[cat_id] = str(cat.get("name", cat_id))
    if not categories:
        raise ValueError(f"{path}: 'categories' is empty")
    return categories


def _check_images(data: dict, path: Path) -> Dict[int, dict]:
    """Return image id -> image entry, checking ids are unique and each entry has file_name/width/height."""
    images: Dict[int, dict] = {}
    for img in data["images"]:
        image_id = img.get("id")
        if image_id in images:
            raise ValueError(f"{path}: duplicate image id {image_id}")
        for key in ("file_name", "width", "height"):
            if key not in img:
                raise ValueError(f"{path}: image id {image_id} has no '{key}'")
        images[image_id] = img
    if not images:
        raise ValueError(f"{path}: 'images' is empty (zero images)")
    return images


def _checked_segmentation(ann: dict, size_hw: np.ndarray, path: Path) -> object:
    """The annotation's segmentation, or InputError (one line: file, annotation id, what is wrong)."""
    problem = segmentation_problem(ann.get("segmentation"), int(size_hw[0]), int(size_hw[1]))
    if problem is not None:
        raise InputError(f"{path}: annotation id {ann.get('id')} {problem}; masks=True needs a segmentation "
                         f"(polygons or an RLE of the image's size) on every non-crowd annotation")
    return ann["segmentation"]


def _xywh_to_clipped_xyxy(bbox: object, size_hw: np.ndarray, ann_id: object, path: Path) -> List[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{path}: annotation id {ann_id} has bbox {bbox!r}, expected [x, y, width, height]")
    x, y, w, h = (float(v) for v in bbox)
    height, width = float(size_hw[0]), float(size_hw[1])
    x1, y1, x2, y2 = x, y, x + w, y + h  # xywh -> xyxy, absolute pixels
    # clip to [0, W] x [0, H] (pixel edges)
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
