"""A training run's data: where it is (`DataSource`), checked before any work, the synthetic set generated when no
data is given, the two COCO-format datasets and the endless, resumable training loader."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from fpn.data.coco import CocoDetection, collate
from fpn.data.file_check import check_image_files, handle_bad_images
from fpn.data.samplers import GroupedBatchSampler, TrainingSampler
from fpn.data.synthetic import generate_synthetic_coco
from fpn.engine import distributed
from fpn.errors import InputError

SPLIT_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations")


@dataclass
class DataSource:
    """Where a run's images and COCO annotation files are. Either `coco_root` (COCO 2017's layout), or all four
    explicit paths, or nothing: then the synthetic shapes set is generated into `synthetic_dir`."""
    coco_root: Optional[str] = None  # DIR with train2017/, val2017/, annotations/instances_{train,val}2017.json
    train_images: Optional[str] = None  # training images folder
    train_annotations: Optional[str] = None  # training COCO json
    val_images: Optional[str] = None  # validation images folder
    val_annotations: Optional[str] = None  # validation COCO json
    synthetic_dir: Optional[str] = None  # where the synthetic set goes; None: OUTPUT_DIR/synthetic
    skip_bad_images: bool = False  # leave out (and count) unreadable images instead of stopping
    check_images: str = "header"  # before training, check every image file: header, decode or off

    def given(self) -> bool:
        """True when any data path was given (no synthetic set then)."""
        return any([self.coco_root, *(getattr(self, key) for key in SPLIT_KEYS)])


# The synthetic set's file format, stored with its recipe: a set written in an older format is generated again.
# 2: every annotation holds its object's visible pixels as a compressed-RLE `segmentation` (Mask R-CNN).
SYNTHETIC_FORMAT = 2

def coco_layout(root: Path) -> Dict[str, Path]:
    """The paths of COCO 2017's layout under `root` (also the synthetic set's)."""
    return {
        "train_images": root / "train2017", "train_annotations": root / "annotations/instances_train2017.json",
        "val_images": root / "val2017", "val_annotations": root / "annotations/instances_val2017.json",
    }


def check_data_paths(data: DataSource) -> None:
    """InputError naming the first data flag whose folder or file is missing (before anything is generated or read)."""
    if data.coco_root:
        root = Path(data.coco_root)
        if not root.is_dir():
            raise InputError(f"--coco-root {root}: no such folder")
        named = {key: (f"--coco-root {root}: {path}", path) for key, path in coco_layout(root).items()}
    else:
        explicit = {key: value for key in SPLIT_KEYS if (value := getattr(data, key))}
        if explicit and len(explicit) < len(SPLIT_KEYS):
            raise InputError("give all of --train-images, --train-annotations, --val-images, --val-annotations")
        named = {key: (f"--{key.replace('_', '-')} {value}", Path(value)) for key, value in explicit.items()}
    for key, (what, path) in named.items():
        kind, is_kind = ("folder", path.is_dir) if key.endswith("images") else ("file", path.is_file)
        if not path.exists():
            raise InputError(f"{what}: no such {kind}")
        if not is_kind():
            raise InputError(f"{what}: not a {kind}")


def dataset_paths(data: DataSource, output_dir: Path, recipe: Dict[str, Any]) -> Dict[str, Path]:
    """Where the training and validation data are; generates the synthetic set (`recipe`: the arguments of
    `generate_synthetic_coco`) when no data path was given, once per recipe."""
    if data.coco_root:
        return coco_layout(Path(data.coco_root))
    if data.given():
        check_data_paths(data)  # all four or none
        return {key: Path(getattr(data, key)) for key in SPLIT_KEYS}
    root = Path(data.synthetic_dir or Path(output_dir) / "synthetic")
    marker, written = root / "recipe.json", {**recipe, "format": SYNTHETIC_FORMAT}

    def generate() -> None:
        if not marker.is_file() or json.loads(marker.read_text()) != written:
            distributed.log(f"generating the synthetic data set in {root} ...")
            generate_synthetic_coco(root, **recipe, progress=True)
            marker.write_text(json.dumps(written))

    distributed.run_on_main(generate)  # the other ranks wait until rank 0 has written the files
    return coco_layout(root)


def build_datasets(paths: Dict[str, Path], data: DataSource, seed: int,
                   masks: bool = False) -> Tuple[CocoDetection, CocoDetection]:
    """The training and validation sets, every image file checked (`data.check_images`) before the first iteration.
    `masks`: the training targets hold instance masks (Mask R-CNN), every training segmentation checked now; the
    validation set's come from its annotation file at evaluation.

    Raises:
        ValueError: no usable box to train on, a missing or malformed segmentation (masks), or the two sets'
            categories differ (named).
    """
    train_set = CocoDetection(paths["train_images"], paths["train_annotations"], train=True,
                              skip_bad_images=data.skip_bad_images, seed=seed, masks=masks)
    val_set = CocoDetection(paths["val_images"], paths["val_annotations"], train=False,
                            skip_bad_images=data.skip_bad_images)
    if data.check_images != "off":  # every file of both sets, before the first iteration (rank 0 reads them)
        for dataset in (train_set, val_set):
            bad = distributed.run_on_main(lambda: check_image_files(dataset, decode=data.check_images == "decode"))
            handle_bad_images(dataset, bad)  # drops them (--skip-bad-images) or raises, the same on every rank
    annotations = train_set.coco.dataset["annotations"]
    usable = sum(1 for ann in annotations if not ann.get("iscrowd", 0)) - train_set.num_dropped_boxes
    if usable < 1:
        raise ValueError(f"{paths['train_annotations']}: no usable boxes to train on ({len(annotations)} "
                         f"annotations, {train_set.num_dropped_boxes} of them empty after clipping)")
    if val_set.label_to_category != train_set.label_to_category:
        raise ValueError(
            f"the validation categories {sorted(val_set.label_to_category.values())} differ from the training "
            f"categories {sorted(train_set.label_to_category.values())}"
        )
    return train_set, val_set


def training_loader(dataset: CocoDetection, *, batch_size: int, workers: int, seed: int,
                    start_iter: int) -> DataLoader:
    """An endless loader; `start_batch` skips the batches already used, so a resumed run sees the same data."""
    rank, world = distributed.get_rank(), distributed.get_world_size()
    # (index, epoch) keys: the dataset seeds each flip from them, whatever the number of workers.
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world, with_epoch=True)
    batches = GroupedBatchSampler(sampler, dataset.aspect_ratio_groups(), batch_size, start_batch=start_iter)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed + rank))
