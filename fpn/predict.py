"""Run a trained detector on image files: a COCO-style results JSON plus one picture per image with its boxes.

    python -m fpn.predict photos/ extra/*.jpg one.png --weights runs/demo/checkpoint_0000800.pt \\
        --output-dir runs/predict/demo

Inputs are files, folders (their image files, not recursing) and glob patterns (`**` recurses). A path that does
not exist, a glob matching nothing or an unreadable image is reported by name, the other images are still
processed, and the exit code is 1 at the end with a summary of what failed. Weights that cannot be loaded
(missing, empty, truncated, not a torch file, a pickle that would run code, neither our checkpoint nor a
torchvision detector), no readable input and bad flag values end the run at once: one line `predict: error: ...`
naming the file and the reason, exit code 2 (`--debug` shows the traceback instead).

`--fast` runs the inference-optimized copy of the model (`fpn.inference.optimize_for_inference`: normalisations
folded into the convolutions, channels-last; the same detections in fp32) and prints one line saying what it did;
`--fast-dtype bf16` also runs the convolutions and linear layers in bf16 (close, not identical, detections).

`<output-dir>/detections.json` (default `runs/predict/detections.json`) is a list with one entry per detection:

    {"image_id": 397133, "file_name": "val2017/000000397133.jpg", "category_id": 1, "category_name": "person",
     "bbox": [x, y, w, h], "score": 0.98}

- `bbox` is [x, y, width, height] in pixels of the image as stored on disk (after its EXIF rotation), COCO's box
  convention; `score` is the model's confidence.
- `image_id` is the file name's number when every input is named by a number (as COCO's `000000397133.jpg`), so
  the file can go straight to COCO's evaluation; otherwise the image's 0-based position in the input list.
- `category_id` is the dataset's category id when the weights carry a label map (torchvision's COCO weights, our
  checkpoints of a COCO training); otherwise the entry has `label`, the model's own class index, instead.
- Every detection the model returns is kept (those above its own `config.roi_heads.score_thresh`, 0.05 by
  default); `--score-threshold` (default 0.5) only decides which boxes are drawn on the pictures. A detection
  whose label the label map lacks (the background 0, or a model of another label set) has no category to write:
  it is left out of the file and the pictures, and one warning at the end names the labels and the counts.

The files appear in `<output-dir>` only when the run completes: they are written to a hidden folder beside it,
`.<name>.partial-<pid>`, and moved in at the end; a run stopped by an error or Ctrl-C removes that folder and
leaves `<output-dir>` as it was (no pictures without their detections.json).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
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

from fpn.detectors.build import is_rpn_only
from fpn.device import select_device
from fpn.io.loading import is_training_checkpoint, load_detector
from fpn.cli import ArgumentParser, run_cli
from fpn.errors import InputError
from fpn.data.image_io import load_rgb_image, pil_to_tensor01
from fpn.inference import optimize_for_inference
from fpn.visualize import draw_detections
from fpn.weights_file import read_weights

FAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --fast-dtype
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
        detection: `boxes` (D, 4) float xyxy absolute pixels, `scores` (D,), `labels` (D,) int64.
        image_id: written as `image_id`.
        file_name: written as `file_name`.
        class_names: model label -> name, written as `category_name` (the label's number when missing).
        label_to_category: model label -> dataset category id; with it entries have `category_id`, without it
            `label`. A detected label missing from it raises a ValueError.

    Returns:
        D dicts, in the detection order, with bbox [x, y, w, h] rounded to 0.01 px and score to 1e-5.
    """
    boxes = detection["boxes"].detach().to("cpu", torch.float64)  # (D, 4) xyxy
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # (D, 4) xyxy -> xywh
    entries = []
    for box, score, label in zip(xywh.tolist(), detection["scores"].tolist(), detection["labels"].tolist()):
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
        entries.append(entry)
    return entries


def known_labels_only(detection: Mapping[str, torch.Tensor], label_to_category: Optional[Mapping[int, int]],
                      dropped: Counter) -> Dict[str, torch.Tensor]:
    """The detections whose label `label_to_category` maps, the others counted in `dropped` per label.

    Args:
        detection: `boxes` (D, 4), `scores` (D,), `labels` (D,) int64, on the CPU.
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
) -> PredictionRun:
    """Detect objects in every image file, write its picture with boxes to `output_dir` and collect results.

    Args:
        model: a detector with torchvision's inference contract (`FasterRCNNFPN`); run in eval mode on the device
            of its parameters.
        paths: image files; one that cannot be read is recorded in `failures` and skipped.
        class_names: model label -> name, for the pictures and `category_name`.
        output_dir: created if needed; receives one picture per readable image.
        label_to_category: see `detections_to_results`; a detection of a label it lacks is left out of the
            results and the picture and counted in `dropped`.
        score_threshold: minimum score of a box drawn on the pictures (the results keep every detection).
        batch_size: images per forward pass.
        progress: show a tqdm bar on stderr.
        write_dir: write the pictures here instead, named as they will be in `output_dir` (`staged_output`).

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
            with torch.no_grad():
                detections = model([pil_to_tensor01(image).to(device) for _, _, image in batch])
            for (path, image_id, image), detection in zip(batch, detections):
                detection = known_labels_only({k: v.cpu() for k, v in detection.items()}, label_to_category,
                                              run.dropped)
                run.results += detections_to_results(detection, image_id, str(path), class_names, label_to_category)
                picture = draw_detections(image, detection["boxes"], detection["labels"], detection["scores"],
                                          class_names, score_threshold)
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


def warn_dropped(dropped: Mapping[int, int], label_to_category: Mapping[int, int]) -> None:
    """One `predict: warning:` line on stderr naming the labels the label map lacks and the detections left out."""
    if not sum(dropped.values()):
        return
    counts = ", ".join(f"label {label}: {count}" for label, count in sorted(dropped.items()))
    print(f"predict: warning: left out {sum(dropped.values())} detection(s) whose label has no category in the "
          f"weights' label map ({counts}; known labels: {sorted(label_to_category)})", file=sys.stderr)


def read_label_map(weights: Union[str, Path], num_classes: int) -> Optional[Dict[int, int]]:
    """The label -> dataset category id map of a weights file, or None when it has none.

    Our training checkpoints store `label_to_category`; a torchvision COCO detector's labels already are COCO
    category ids (91 outputs, ids with gaps), so its map is the identity over its `num_classes` labels.
    A file that cannot be read raises `InputError` naming it (see `fpn.weights_file.read_weights`).
    """
    # memory-mapped: only the small entries are actually read
    return label_map_of(read_weights(weights, "weights file", mmap=True), num_classes)


def label_map_of(weights: object, num_classes: int) -> Optional[Dict[int, int]]:
    """`read_label_map` of the already loaded contents of a weights file."""
    if not is_training_checkpoint(weights):
        return {label: label for label in range(num_classes)}
    mapping = weights.get("label_to_category") or {}
    return {int(k): int(v) for k, v in mapping.items()} or None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m fpn.predict", tool="predict",
        description="Detect objects in images; write detections.json (COCO results) and pictures with boxes.",
        epilog="Exit codes: 0 done, 1 some inputs failed (named at the end), 2 usage or input error (bad flag, "
               "no image, weights that cannot be loaded), 130 interrupted.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders (not recursive) and glob patterns")
    parser.add_argument("--weights", required=True,
                        help="our checkpoint, or a torchvision fasterrcnn_resnet50_fpn state-dict file")
    parser.add_argument("--output-dir", default="runs/predict", help="where detections.json and pictures go")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="minimum score of a drawn box; the JSON keeps every detection of the model")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--fast", action="store_true",
                        help="run the inference-optimized copy of the model (norms folded into the convolutions, "
                             "channels-last; same detections in fp32), see fpn/inference.py")
    parser.add_argument("--fast-dtype", choices=sorted(FAST_DTYPES), default="fp32",
                        help="with --fast: the dtype of the convolutions and linear layers (bf16: close, not equal, "
                             "detections; fp16: GPU only)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def fast_model(model: nn.Module, dtype: Optional[torch.dtype]) -> nn.Module:
    """`optimize_for_inference(model, dtype)`, saying in one line what it did; a dtype the device cannot run is an
    `InputError`."""
    try:
        fast = optimize_for_inference(model, dtype)
    except ValueError as err:
        raise InputError(f"--fast-dtype: {err}") from None
    print(f"fast: {fast.summary()}")
    return fast


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (0 all fine, 1 some input failed, 2 usage or input error: a bad
    flag value, no image, weights that cannot be loaded; 130 interrupted). Errors are one line on stderr."""
    return run_cli(predict_command, argv, prog="predict")


def predict_command(argv: Optional[Sequence[str]] = None) -> int:
    """`main` without the error handling: input errors propagate as `InputError`."""
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.score_threshold <= 1.0:
        raise InputError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths, failures = resolve_inputs(args.inputs)
    for arg, reason in failures:
        print(f"predict: error: {arg}: {reason}", file=sys.stderr)
    if not paths:
        raise InputError("no image to process")
    model, class_names = load_detector(args.weights, select_device(args.device))
    label_to_category = read_label_map(args.weights, model.num_classes)
    if args.fast:
        model = fast_model(model, FAST_DTYPES[args.fast_dtype])
    elif args.fast_dtype != "fp32":
        raise InputError(f"--fast-dtype {args.fast_dtype} needs --fast")
    if is_rpn_only(model):  # an RPN alone (paper Table 1): class-agnostic proposals, label 1 = "object"
        class_names, label_to_category = {1: "object"}, None
    output_dir = Path(args.output_dir)
    with staged_output(output_dir) as staging:
        run = predict_files(
            model, paths, class_names, output_dir,
            label_to_category=label_to_category, write_dir=staging,
            score_threshold=args.score_threshold, batch_size=args.batch_size, progress=not args.no_progress,
        )
        (staging / RESULTS_FILE).write_text(json.dumps(run.results), encoding="utf-8")
    results_path = output_dir / RESULTS_FILE
    warn_dropped(run.dropped, label_to_category or {})
    failures += run.failures
    done = len(paths) - len(run.failures)
    print(f"{done} image(s), {len(run.results)} detection(s) -> {results_path}; pictures in {output_dir}{os.sep}")
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for name, reason in failures:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
