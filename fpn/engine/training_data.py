"""A training run's data: where it is (`DataSource`), checked before any work, the synthetic set generated when no
data is given, the two COCO-format datasets and the endless, resumable training loader.

Data in another label format (`--train-data` / `--val-data`: YOLO, Pascal VOC, LabelMe or a COCO JSON, see
`fpn.data.formats`) is read and checked with the other paths, before the output folder exists, and written as two
COCO files (OUTPUT_DIR/data/train.json, val.json) that the rest of training reads as it reads COCO's own.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from fpn.data.coco import CocoDetection, collate
from fpn.data.file_check import check_image_files, handle_bad_images
from fpn.data.formats import LabelledData, read_dataset, select_split, split_by_fraction
from fpn.data.formats.common import renumber_categories
from fpn.data.samplers import GroupedBatchSampler, TrainingSampler
from fpn.data.synthetic import generate_synthetic_coco
from fpn.engine import distributed
from fpn.errors import InputError

SPLIT_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations")
OWN_DATA_KEYS = ("train_data", "val_data", "data_format", "val_split")
DEFAULT_VAL_SPLIT = 0.2  # the fraction of --train-data kept for validation when it has no val split of its own


@dataclass
class DataSource:
    """Where a run's images and COCO annotation files are. Either `coco_root` (COCO 2017's layout), or all four
    explicit paths, or `train_data` (any label format, with `val_data` or a split of it), or nothing: then the
    synthetic shapes set is generated into `synthetic_dir`."""
    coco_root: Optional[str] = None  # DIR with train2017/, val2017/, annotations/instances_{train,val}2017.json
    train_images: Optional[str] = None  # training images folder
    train_annotations: Optional[str] = None  # training COCO json
    val_images: Optional[str] = None  # validation images folder
    val_annotations: Optional[str] = None  # validation COCO json
    synthetic_dir: Optional[str] = None  # where the synthetic set goes; None: OUTPUT_DIR/synthetic
    skip_bad_images: bool = False  # leave out (and count) unreadable images instead of stopping
    check_images: str = "header"  # before training, check every image file: header, decode or off
    train_data: Optional[str] = None  # a labelled set: YOLO, Pascal VOC, LabelMe folder or COCO JSON (detected)
    val_data: Optional[str] = None  # the validation set, in any format; None: train_data's val split or a fraction
    data_format: Optional[str] = None  # the format of train_data and val_data: coco, yolo, voc, labelme; None: detected
    val_split: Optional[float] = None  # the fraction of train_data for validation (None: its own val split, else 0.2)
    split_seed: int = 0  # seed of the val_split draw, apart from the training seed: another --seed keeps the split

    def given(self) -> bool:
        """True when any data path was given (no synthetic set then)."""
        return any([self.coco_root, self.train_data, *(getattr(self, key) for key in SPLIT_KEYS)])


# The synthetic set's file format, stored with its recipe: a set written in an older format is generated again.
# 2: every annotation holds its object's visible pixels as a compressed-RLE `segmentation` (Mask R-CNN).
SYNTHETIC_FORMAT = 2

def coco_layout(root: Path) -> Dict[str, Path]:
    """The paths of COCO 2017's layout under `root` (also the synthetic set's)."""
    return {
        "train_images": root / "train2017", "train_annotations": root / "annotations/instances_train2017.json",
        "val_images": root / "val2017", "val_annotations": root / "annotations/instances_val2017.json",
    }


OwnData = Tuple[LabelledData, LabelledData, List[str]]  # what own_data_sets returns: (train, val, notes)


def check_data_paths(data: DataSource) -> Optional[OwnData]:
    """InputError naming the first data flag whose folder or file is missing (before anything is generated or read);
    `train_data` / `val_data` are read in full here, so a malformed label file stops the run before it starts, and
    returned (`own_data_sets`) for `dataset_paths`, which then does not read them again; None for other data."""
    check_data_flags(data)
    if data.train_data:
        return own_data_sets(data)
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
    return None


def dataset_paths(data: DataSource, output_dir: Path, recipe: Dict[str, Any],
                  own_data: Optional[OwnData] = None) -> Dict[str, Path]:
    """Where the training and validation data are; generates the synthetic set (`recipe`: the arguments of
    `generate_synthetic_coco`) when no data path was given, once per recipe. `own_data`: the sets of
    `data.train_data` as `check_data_paths` read them (None: read here)."""
    if data.coco_root:
        return coco_layout(Path(data.coco_root))
    if data.train_data:
        return write_own_data(data, Path(output_dir) / "data", own_data)
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


def check_data_flags(data: DataSource) -> None:
    """InputError for data flags that do not go together (each named)."""
    others = [f"--{key.replace('_', '-')}" for key in ("coco_root", *SPLIT_KEYS) if getattr(data, key)]
    if data.train_data and others:
        raise InputError(f"--train-data and {others[0]} both name the training data: give one of them")
    for key in OWN_DATA_KEYS[1:]:
        if getattr(data, key) is not None and not data.train_data:
            raise InputError(f"--{key.replace('_', '-')} goes with --train-data, which is not given")
    if data.val_data and data.val_split is not None:
        raise InputError("--val-split and --val-data both say what to validate on: give one of them")


def own_data_sets(data: DataSource) -> Tuple[LabelledData, LabelledData, List[str]]:
    """The training and validation sets of `data.train_data` (and `data.val_data`), with one category list.

    `val_data` given: train_data's "train" split (or all of it) and val_data's "val" split (or all of it).
    Otherwise: train_data's own "train" and "val" splits when it has both, else `val_split` (default 0.2) of its
    "train" split (or of all of it), drawn with `split_seed`.

    Returns:
        (train, val, notes): the sets, and what was read and chosen, one line each, for the log.
    Raises:
        InputError: an unreadable or malformed set (naming the file and line), --val-split where the set has its
            own train and val splits, too few images to split.
    """
    source = read_dataset(data.train_data, data.data_format)
    notes = list(source.notes)
    base = select_split(source, "train") if "train" in source.splits else source
    if data.val_data:
        val_source = read_dataset(data.val_data, data.data_format)
        notes += val_source.notes
        train, val = base, select_split(val_source, "val") if "val" in val_source.splits else val_source
    elif {"train", "val"} <= set(source.splits):
        if data.val_split is not None:
            raise InputError(f"--val-split: {data.train_data} has its own train and val splits; leave --val-split "
                             "out to use them (or give --val-data)")
        train, val = base, select_split(source, "val")
        notes.append(f"{data.train_data}: its own train and val splits")
    else:
        fraction = DEFAULT_VAL_SPLIT if data.val_split is None else data.val_split
        train, val = split_by_fraction(base, fraction, data.split_seed)
        notes.append(f"{data.train_data} has no val split: " + val.notes[-1]
                     + (" (the default; --val-split F to change it)" if data.val_split is None else ""))
    train.coco, val.coco, united = unite_categories(train.coco, val.coco)
    if united:
        notes.append(united)
    return train, val, notes


def unite_categories(train: dict, val: dict) -> Tuple[dict, dict, str]:
    """The two COCO dicts with one category list: the training set's categories in id order, then the
    validation set's other names, numbered from 1, every annotation's category_id mapped by name (so a class
    named in both sets is one class, whatever its id in each). Unchanged when both lists are already equal.

    Returns:
        (train, val, note): the dicts (new ones when renumbered) and a line saying what changed ("" when nothing).
    """
    if train["categories"] == val["categories"]:
        return train, val, ""
    names: List[str] = []
    for categories in (train["categories"], val["categories"]):
        names += [c["name"] for c in sorted(categories, key=lambda c: c["id"]) if c["name"] not in names]
    new_id = {name: index + 1 for index, name in enumerate(names)}

    def renumbered(coco: dict) -> dict:
        return renumber_categories(coco, new_id, extra=names)

    only_val = [name for name in names if name not in {c["name"] for c in train["categories"]}]
    note = (f"the training and validation categories are united by name: {len(names)} categories"
            + (f" ({', '.join(only_val)} only in the validation set)" if only_val else ""))
    return renumbered(train), renumbered(val), note


def write_own_data(data: DataSource, folder: Path, own_data: Optional[OwnData] = None) -> Dict[str, Path]:
    """Read `data.train_data` (and `val_data`; `own_data`: already read), write them as `folder`/train.json and
    val.json (rank 0; the other ranks wait) and return the paths of the usual four."""
    train, val, notes = own_data if own_data is not None else own_data_sets(data)
    paths = {"train_images": train.images_root, "train_annotations": folder / "train.json",
             "val_images": val.images_root, "val_annotations": folder / "val.json"}

    def write() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for labelled, key in ((train, "train_annotations"), (val, "val_annotations")):
            temporary = paths[key].with_name(paths[key].name + ".tmp")
            temporary.write_text(json.dumps(labelled.coco, indent=1), encoding="utf-8")
            temporary.replace(paths[key])

    distributed.run_on_main(write)
    for note in notes:
        distributed.log(note)
    distributed.log(f"training on {len(train.coco['images'])} images, validating on {len(val.coco['images'])}: "
                    f"written as COCO files to {folder}")
    return paths


def build_datasets(paths: Dict[str, Path], data: DataSource, seed: int,
                   masks: bool = False, cache_images: bool = False) -> Tuple[CocoDetection, CocoDetection]:
    """The training and validation sets, every image file checked (`data.check_images`) before the first iteration.
    `masks`: the training targets hold instance masks (Mask R-CNN), every training segmentation checked now; the
    validation set's come from its annotation file at evaluation. `cache_images`: both sets keep their images
    decoded after the first read (CocoDetection).

    Raises:
        ValueError: no usable box to train on, a missing or malformed segmentation (masks), or the two sets'
            categories differ (named).
    """
    train_set = CocoDetection(paths["train_images"], paths["train_annotations"], train=True,
                              skip_bad_images=data.skip_bad_images, seed=seed, masks=masks, cache_images=cache_images)
    val_set = CocoDetection(paths["val_images"], paths["val_annotations"], train=False,
                            skip_bad_images=data.skip_bad_images, cache_images=cache_images)
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


def image_cache_line(train_set: CocoDetection, val_set: CocoDetection, workers: int) -> str:
    """Turn the two sets' `cache_images` off when their decoded images would not fit in a quarter of this machine's
    memory (once per loading process: the training process and each worker); the words for the log either way.

    `--cache-images` is a preset default of the CPU demos, whose 600 images decode to 0.15 GB, and those presets
    also train on people's own folders, where 20,000 photos would decode to 100 GB or more.
    """
    per_process = train_set.decoded_bytes() + val_set.decoded_bytes()
    processes = max(1, workers)
    budget = physical_memory() // 4
    if per_process * processes <= budget:
        return f"kept decoded after their first read ({per_process / 1e9:.2f} GB per process)"
    for dataset in (train_set, val_set):
        dataset.cache_images = False
    return (f"read from disk every time: decoded they would take {per_process * processes / 1e9:.1f} GB, over a "
            f"quarter of this machine's {4 * budget / 1e9:.0f} GB (--cache-images)")


def physical_memory() -> int:
    """Bytes of physical memory (os.sysconf); 8 GiB where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 8 << 30


def training_loader(dataset: CocoDetection, *, batch_size: int, workers: int, seed: int,
                    start_iter: int) -> DataLoader:
    """An endless loader; `start_batch` skips the batches already used, so a resumed run sees the same data."""
    rank, world = distributed.get_rank(), distributed.get_world_size()
    # (index, epoch) keys: the dataset seeds each flip from them, whatever the number of workers.
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed, rank=rank, world_size=world, with_epoch=True)
    batches = GroupedBatchSampler(sampler, dataset.aspect_ratio_groups(), batch_size, start_batch=start_iter)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed + rank))
