"""Run a detector over image files: find the images named by files, folders and globs, detect, draw, and turn the
detections into COCO-style results entries (the schema is in fpn/tools/predict.py, `python -m fpn.predict`'s
tool); write a run's files into a staging folder that appears only when the run completes. A Mask R-CNN's entries
also hold each detection's `segmentation` (fpn/deploy/mask_rle.py), and its pictures the masks."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from tqdm import tqdm

from fpn.io.loading import is_training_checkpoint
from fpn.detectors.tiling import Tiling, detection_limits, predict_tiled
from fpn.data.image_io import load_rgb_image, pil_to_tensor01
from fpn.deploy.mask_rle import binary_masks, mask_rles
from fpn.deploy.visualize import draw_detections
from fpn.io.weights_file import read_weights

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


RESULTS_FILE = "detections.json"


@dataclass
class PredictionRun:
    """What `predict_files` did: the results entries, the pictures, per input that failed `(name, reason)`, and
    per label missing from the label map the number of detections left out."""

    results: List[dict] = field(default_factory=list)
    pictures: List[Path] = field(default_factory=list)
    failures: List[Tuple[str, str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)



def resolve_inputs(inputs: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Expand files, folders and glob patterns into image paths, in the given order, without duplicates.

    Args:
        inputs: command-line arguments: a file (taken whatever its extension), a folder (its files with an image
            extension, sorted, not recursing) or a glob pattern (sorted matches with an image extension).

    Returns:
        `(paths, failures)`: the files to read, and `(argument, reason)` for each argument that names nothing:
        a missing path, a glob matching no image, a folder without images.
    """
    paths: List[Path] = []
    failures: List[Tuple[str, str]] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _is_image_name(p))
            if not found:
                failures.append((arg, f"folder contains no image files ({', '.join(IMAGE_EXTENSIONS)})"))
        elif path.is_file():
            found = [path]
        elif glob.has_magic(arg):
            found = [Path(p) for p in sorted(glob.glob(arg, recursive=True)) if _is_image_name(Path(p))]
            if not found:
                failures.append((arg, "glob pattern matches no image files"))
        else:
            found = []
            failures.append((arg, "no such file or directory"))
        paths.extend(found)
    unique = list(dict.fromkeys(paths))  # keeps the first occurrence's position
    return unique, failures


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_ids_for(paths: Sequence[Path]) -> List[int]:
    """COCO image ids: the file names' numbers when all are distinct numbers, else positions 0..len-1."""
    stems = [p.stem for p in paths]
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(paths)))


def detections_to_results(
    detection: Mapping[str, torch.Tensor],
    image_id: int,
    file_name: str,
    class_names: Mapping[int, str],
    label_to_category: Optional[Mapping[int, int]] = None,
) -> List[dict]:
    """One image's detections as results entries (the schema in the module docstring).

    Args:
        detection: `boxes` (D, 4) float xyxy absolute pixels, `scores` (D,), `labels` (D,) int64; a Mask R-CNN's
            also `masks` (D, H, W) bool (`binary_masks` of the model's), written as `segmentation`.
        image_id: written as `image_id`.
        file_name: written as `file_name`.
        class_names: model label -> name, written as `category_name` (the label's number when missing).
        label_to_category: model label -> dataset category id; with it entries have `category_id`, without it
            `label`. A detected label missing from it raises a ValueError.

    Returns:
        D dicts, in the detection order, with bbox [x, y, w, h] rounded to 0.01 px and score to 1e-5, and with
        masks `segmentation` (COCO compressed RLE, `mask_rles`).
    """
    boxes = detection["boxes"].detach().to("cpu", torch.float64)  # (D, 4) xyxy
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # (D, 4) xyxy -> xywh
    rles = mask_rles(detection["masks"]) if "masks" in detection else [None] * len(boxes)
    entries = []
    for box, score, label, rle in zip(xywh.tolist(), detection["scores"].tolist(), detection["labels"].tolist(),
                                      rles):
        entry: Dict[str, object] = {"image_id": image_id, "file_name": file_name}
        if label_to_category is not None:
            if int(label) not in label_to_category:
                raise ValueError(f"label {int(label)} has no category id in the label map {dict(label_to_category)}")
            entry["category_id"] = int(label_to_category[int(label)])
        else:
            entry["label"] = int(label)
        entry["category_name"] = class_names.get(int(label), str(int(label)))
        entry["bbox"] = [round(v, 2) for v in box]
        entry["score"] = round(float(score), 5)
        if rle is not None:
            entry["segmentation"] = rle
        entries.append(entry)
    return entries


def known_labels_only(detection: Mapping[str, torch.Tensor], label_to_category: Optional[Mapping[int, int]],
                      dropped: Counter) -> Dict[str, torch.Tensor]:
    """The detections whose label `label_to_category` maps, the others counted in `dropped` per label.

    Args:
        detection: `boxes` (D, 4), `scores` (D,), `labels` (D,) int64 (and `masks` (D, H, W)), on the CPU.
        label_to_category: model label -> dataset category id; None: every label is kept.
        dropped: {label: detections left out}, updated in place.
    Returns:
        the same dict with the (K,) kept detections, K <= D, in their order.
    """
    if label_to_category is None:
        return dict(detection)
    known = torch.tensor(sorted(label_to_category), dtype=detection["labels"].dtype)
    keep = torch.isin(detection["labels"], known)  # (D,) bool
    dropped.update(detection["labels"][~keep].tolist())
    return {name: value[keep] for name, value in detection.items()}


def picture_path_for(image_path: Path, output_dir: Path, taken: set) -> Path:
    """Where the drawn picture of `image_path` goes: its name in `output_dir` (PNG unless the input is a JPEG),
    with a `-1`, `-2`, ... suffix when that name is taken or would overwrite the input itself."""
    suffix = ".jpg" if image_path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    candidate = output_dir / f"{image_path.stem}{suffix}"
    n = 0
    while candidate in taken or candidate.resolve() == image_path.resolve():
        n += 1
        candidate = output_dir / f"{image_path.stem}-{n}{suffix}"
    taken.add(candidate)
    return candidate


def predict_files(
    model: nn.Module,
    paths: Sequence[Path],
    class_names: Mapping[int, str],
    output_dir: Path,
    *,
    label_to_category: Optional[Mapping[int, int]] = None,
    score_threshold: float = 0.5,
    batch_size: int = 1,
    progress: bool = True,
    write_dir: Optional[Path] = None,
    tiling: Optional[Tiling] = None,
) -> PredictionRun:
    """Detect objects in every image file, write its picture with boxes to `output_dir` and collect results.

    Args:
        model: a detector with torchvision's inference contract (`FasterRCNNFPN`); run in eval mode on the device
            of its parameters. A model returning `masks` (Mask R-CNN) gets each detection's `segmentation` in the
            results and its mask drawn under its box.
        paths: image files; one that cannot be read is recorded in `failures` and skipped.
        class_names: model label -> name, for the pictures and `category_name`.
        output_dir: created if needed; receives one picture per readable image.
        label_to_category: see `detections_to_results`; a detection of a label it lacks is left out of the
            results and the picture and counted in `dropped`.
        score_threshold: minimum score of a box drawn on the pictures (the results keep every detection).
        batch_size: images per forward pass.
        progress: show a tqdm bar on stderr.
        write_dir: write the pictures here instead, named as they will be in `output_dir` (`staged_output`).
        tiling: cut each image into overlapping tiles and merge their detections (`fpn.detectors.tiling`,
            `model.predict(..., tile=)`); `batch_size` images are tiled together. None: whole images only.

    Returns:
        A `PredictionRun` with the results entries, the pictures (their paths in `output_dir`), the failures
        and the detections left out.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    write_dir = output_dir if write_dir is None else write_dir
    write_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = next(model.parameters()).device
    ids = image_ids_for(paths)
    run, taken = PredictionRun(), set()
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        batch = []  # (path, image id, PIL image) of the readable images of this batch
        for path, image_id in zip(paths[start:start + batch_size], ids[start:start + batch_size]):
            try:
                batch.append((path, image_id, load_rgb_image(path)))
            except (OSError, ValueError) as err:
                run.failures.append((str(path), str(err)))
                bar.write(f"predict: error: {err}", file=sys.stderr)
        if batch:
            tensors = [pil_to_tensor01(image).to(device) for _, _, image in batch]
            with torch.no_grad():
                if tiling is None:
                    detections = model(tensors)
                else:
                    nms_thresh, detections_per_img = detection_limits(model.config)
                    detections = predict_tiled(model, tensors, tiling, nms_thresh=nms_thresh,
                                               detections_per_img=detections_per_img)
            for (path, image_id, image), detection in zip(batch, detections):
                detection = known_labels_only(
                    {k: (binary_masks(v) if k == "masks" else v).cpu() for k, v in detection.items()},
                    label_to_category, run.dropped)
                run.results += detections_to_results(detection, image_id, str(path), class_names, label_to_category)
                picture = draw_detections(image, detection["boxes"], detection["labels"], detection["scores"],
                                          class_names, score_threshold, masks=detection.get("masks"))
                out_path = picture_path_for(path, output_dir, taken)
                picture.save(write_dir / out_path.name, **({"quality": 95} if out_path.suffix == ".jpg" else {}))
                run.pictures.append(out_path)
        bar.update(min(batch_size, len(paths) - start))
    bar.close()
    return run


@contextlib.contextmanager
def staged_output(output_dir: Path) -> Iterator[Path]:
    """A new hidden folder beside `output_dir` to write a run's files into, moved into `output_dir` (created if
    needed; same-named files replaced) when the block ends without an error.

    On an error or Ctrl-C inside the block the folder is removed, with the parent folders made for it, and
    `output_dir` is as it was: never pictures without their detections.json, nor a half-written run.

    Raises:
        ValueError: `output_dir` exists and is not a folder.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output folder {output_dir} is a file")
    made = [folder for folder in output_dir.parents if not folder.exists()]  # deepest first
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run of the same process id
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if output_dir.is_dir():
        for path in staging.iterdir():
            os.replace(path, output_dir / path.name)
        staging.rmdir()
    else:
        os.replace(staging, output_dir)



def read_label_map(weights: Union[str, Path], num_classes: int) -> Optional[Dict[int, int]]:
    """The label -> dataset category id map of a weights file, or None when it has none.

    Our training checkpoints store `label_to_category`; a torchvision COCO detector's labels already are COCO
    category ids (91 outputs, ids with gaps), so its map is the identity over its `num_classes` labels.
    A file that cannot be read raises `InputError` naming it (see `fpn.io.weights_file.read_weights`).
    """
    # memory-mapped: only the small entries are actually read
    return label_map_of(read_weights(weights, "weights file", mmap=True), num_classes)


def label_map_of(weights: object, num_classes: int) -> Optional[Dict[int, int]]:
    """`read_label_map` of the already loaded contents of a weights file."""
    if not is_training_checkpoint(weights):
        return {label: label for label in range(num_classes)}
    mapping = weights.get("label_to_category") or {}
    return {int(k): int(v) for k, v in mapping.items()} or None
