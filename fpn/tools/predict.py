"""Run a trained detector on image files: a COCO-style results JSON plus one picture per image with its boxes
(and a Mask R-CNN's masks).

    python -m fpn.predict photos/ extra/*.jpg one.png --weights runs/demo/checkpoint_0000800.pt \\
        --output-dir runs/predict/demo

Inputs are files, folders (their image files, not recursing) and glob patterns (`**` recurses). A path that does
not exist, a glob matching nothing or an unreadable image is reported by name, the other images are still
processed, and the exit code is 1 at the end with a summary of what failed. Weights that cannot be loaded
(missing, empty, truncated, not a torch file, a pickle that would run code, neither our checkpoint nor a
torchvision detector), no readable input and bad flag values end the run at once: one line `predict: error: ...`
naming the file and the reason, exit code 2 (`--debug` shows the traceback instead).

`--fast` runs the inference-optimized copy of the model (`fpn.deploy.inference.optimize_for_inference`: normalisations
folded into the convolutions, channels-last; the same detections in fp32) and prints one line saying what it did;
`--fast-dtype bf16` also runs the convolutions and linear layers in bf16 (close, not identical, detections).

`--tile SIZE` finds small objects in large images: each image is also cut into SIZE x SIZE tiles overlapping by
`--overlap` (default 0.25), each tile run as an image of its own (so upsampled to the model's input size), and the
detections merged with the whole image's by per-class NMS (fpn/detectors/tiling.py; `model.predict(images,
tile=SIZE, overlap=F)` in Python). `--tile-batch` tiles go through the model at once; `--no-tile-whole` skips the
whole-image pass.

`<output-dir>/detections.json` (default `runs/predict/detections.json`) is a list with one entry per detection:

    {"image_id": 397133, "file_name": "val2017/000000397133.jpg", "category_id": 1, "category_name": "person",
     "bbox": [x, y, w, h], "score": 0.98}

- `bbox` is [x, y, width, height] in pixels of the image as stored on disk (after its EXIF rotation), COCO's box
  convention; `score` is the model's confidence.
- `image_id` is the file name's number when every input is named by a number (as COCO's `000000397133.jpg`), so
  the file can go straight to COCO's evaluation; otherwise the image's 0-based position in the input list.
- `category_id` is the dataset's category id when the weights carry a label map (torchvision's COCO weights, our
  checkpoints of a COCO training); otherwise the entry has `label`, the model's own class index, instead.
- A Mask R-CNN's entries also have `segmentation`, the detection's mask (the model's probabilities above 0.5) as
  COCO's compressed RLE, `{"size": [height, width], "counts": "..."}` (`pycocotools.mask.decode` reads it), as
  in COCO's results format; its pictures fill each drawn detection's mask, translucent, in the box's colour.
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
import json
import os
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from fpn.detectors.build import is_rpn_only
from fpn.detectors.tiling import Tiling
from fpn.device import select_device
from fpn.io.loading import load_detector
from fpn.tools.cli import ArgumentParser, run_cli
from fpn.errors import InputError
from fpn.deploy.inference import optimize_for_inference
from fpn.deploy.predictions import RESULTS_FILE, predict_files, read_label_map, resolve_inputs, staged_output

FAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --fast-dtype




def warn_dropped(dropped: Mapping[int, int], label_to_category: Mapping[int, int]) -> None:
    """One `predict: warning:` line on stderr naming the labels the label map lacks and the detections left out."""
    if not sum(dropped.values()):
        return
    counts = ", ".join(f"label {label}: {count}" for label, count in sorted(dropped.items()))
    print(f"predict: warning: left out {sum(dropped.values())} detection(s) whose label has no category in the "
          f"weights' label map ({counts}; known labels: {sorted(label_to_category)})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m fpn.predict", tool="predict",
        description="Detect objects in images; write detections.json (COCO results) and pictures with boxes.",
        epilog="Exit codes: 0 done, 1 some inputs failed (named at the end), 2 usage or input error (bad flag, "
               "no image, weights that cannot be loaded), 130 interrupted.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders (not recursive) and glob patterns")
    parser.add_argument("--weights", required=True,
                        help="our checkpoint (any detector), or a torchvision detector state-dict file "
                             "(fasterrcnn_resnet50_fpn, _v2, mobilenet_v3_large_fpn, maskrcnn_resnet50_fpn, _v2, "
                             "fcos_resnet50_fpn)")
    parser.add_argument("--output-dir", default="runs/predict", help="where detections.json and pictures go")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="minimum score of a drawn box; the JSON keeps every detection of the model")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--fast", action="store_true",
                        help="run the inference-optimized copy of the model (norms folded into the convolutions, "
                             "channels-last; same detections in fp32), see fpn/deploy/inference.py")
    parser.add_argument("--fast-dtype", choices=sorted(FAST_DTYPES), default="fp32",
                        help="with --fast: the dtype of the convolutions and linear layers (bf16: close, not equal, "
                             "detections; fp16: GPU only)")
    parser.add_argument("--tile", type=int, default=None, metavar="SIZE",
                        help="small objects in large images: also run SIZE x SIZE tiles of each image (each resized "
                             "to the model's input size like an image) and merge their detections by per-class NMS "
                             "(>= 32; an image no larger than a tile is run whole)")
    parser.add_argument("--overlap", type=float, default=None, metavar="F",
                        help="with --tile: fraction of a tile shared with its neighbour, in [0, 1) (default 0.25); "
                             "must exceed the largest object wanted whole from the tiles")
    parser.add_argument("--tile-batch", type=int, default=None, metavar="N",
                        help="with --tile: tiles per forward pass (default 4)")
    parser.add_argument("--no-tile-whole", action="store_true",
                        help="with --tile: run the tiles only, not the whole (downscaled) image too")
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


def tiling_from(args: argparse.Namespace) -> Optional[Tiling]:
    """The `Tiling` of --tile, --overlap, --tile-batch and --no-tile-whole (None without --tile); a bad value or a
    tiling flag without --tile is an `InputError` naming the flag."""
    if args.tile is None:
        given = [flag for flag, value in (("--overlap", args.overlap), ("--tile-batch", args.tile_batch),
                                          ("--no-tile-whole", args.no_tile_whole or None)) if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} needs --tile SIZE")
        return None
    options = {"overlap": args.overlap, "batch": args.tile_batch}
    try:
        return Tiling(args.tile, whole=not args.no_tile_whole,
                      **{name: value for name, value in options.items() if value is not None})
    except InputError as err:  # "tile must be ...", "overlap ...", "tile_batch ...": the flag's name instead
        raise InputError(f"--{str(err).replace('tile_batch', 'tile-batch')}") from None


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
    tiling = tiling_from(args)
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
            tiling=tiling,
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
