"""Evaluate a detector checkpoint on a COCO-format set: COCO box AP table (and mask AP of a Mask R-CNN), results
JSON and metrics JSON; with --proposals, the average recall of its region proposals instead.

One device:

    python scripts/evaluate.py runs/demo/checkpoint_0000800.pt --coco-root runs/demo/synthetic \\
        --output-dir runs/demo/eval
    python scripts/evaluate.py fasterrcnn_resnet50_fpn_coco-258fb6c6.pth --coco-root /data/coco

Several GPUs (the images are split over the processes, the detections gathered on rank 0):

    torchrun --nproc_per_node=8 scripts/evaluate.py CHECKPOINT --coco-root /data/coco

CHECKPOINT is one of our training checkpoints or a torchvision `fasterrcnn_resnet50_fpn` file (whose labels are
the COCO category ids). Writes OUTPUT_DIR/{PREFIX}_results.json (COCO results format) and {PREFIX}_metrics.json.

Your own labelled folder, in any format train.py's --train-data reads (YOLO, Pascal VOC, LabelMe, COCO json):

    python scripts/evaluate.py runs/mine/best.pt --data datasets/mine            # its val split, or all of it
    python scripts/evaluate.py runs/mine/best.pt --data VOCdevkit/VOC2007 --split test

The folder is read as training reads it, its classes matched to the checkpoint's by name, and written as
OUTPUT_DIR/{PREFIX}_data.json (the COCO file the scores are computed against).

Per class: below the summary table, one row per class (ground-truth instances, AP, AP50, AP75; mask AP and mask
AP50 of a Mask R-CNN), the same numbers under "per_class" in the metrics JSON (null for a class without ground
truth in the images evaluated). OUTPUT_DIR also gets pr_curves.png (each class's precision-recall curve at IoU 0.5
and 0.5:0.95), confusion.png and confusion.json (the confusion matrix at IoU 0.5 of the detections scoring at
least --confusion-threshold: rows the ground truth, columns the prediction, a background column for the missed
objects and a background row for the false positives; these three names take no PREFIX); --no-curves leaves them
out. The pictures need matplotlib (pip install -e ".[viz]"); without it one line says so and confusion.json is still
written.

Mask R-CNN: the table has two rows, box and mask; the metrics JSON has the box keys (AP, AP50, AP75, APs, APm,
APl) and mask_AP, mask_AP50, ... of COCOeval's iouType "segm"; each result also holds its `segmentation` (the mask
above 0.5 as COCO compressed RLE). The ground-truth masks are the annotation file's `segmentation`s: a file
whose annotations lack them (a box-only set) is evaluated for box AP only, after one warning line naming the
first annotation without one.

Batching: the images of a batch are zero-padded to a common size, and the padding enters the GroupNorm
statistics, so the batch composition changes the detections a little (on a CPU the thread count does too).
--batch-size, --amp and --threads therefore default to the training's own evaluation settings, stored in our
checkpoints (its --eval-batch-size, --amp and --threads): the same checkpoint on the same validation set, with as
many processes as the training, gives exactly the AP of the training's final evaluation. The line "evaluating
with ..." says which were used. A torchvision file gets batch size 2, no mixed precision, torch's threads.

Categories: before any inference the model's categories are compared with the annotation file's. A model
predicting categories the file lacks (another label set) is an error; so is a file with categories the model has
no output for (their AP would be 0, lowering the mean silently) unless --allow-missing-categories is given.

Proposals (--proposals): the class-agnostic COCO average recall of the RPN's proposals, Table 1 of Lin et al.
(2017): AR100, AR1k and AR1k of small, medium and large boxes (`fpn.engine.proposal_eval`). An RPN-only checkpoint is
evaluated as it is; of a full detector (ours or torchvision's) the same model is built with rpn_only = True and
given its backbone, FPN and RPN weights, so the proposals are the ones its RoI heads would see. The categories are
not compared (proposals have none). Writes OUTPUT_DIR/{PREFIX}_metrics.json, PREFIX "proposals" by default; AR1k
counts the model's config.rpn.post_nms_top_n_test proposals per image when that is fewer than 1000.

    python scripts/evaluate.py runs/demo/checkpoint_0000800.pt --coco-root runs/demo/synthetic --proposals

Inference-optimized model (--fast): evaluate `fpn.deploy.inference.optimize_for_inference`'s copy of the detector, as
`python -m fpn.predict --fast` runs it (normalisations folded, channels-last; `--fast-dtype bf16` or fp16 for the
convolutions and linear layers), to see what it costs in AP. --fast-dtype replaces --amp.

    python scripts/evaluate.py runs/demo/checkpoint_0000800.pt --coco-root runs/demo/synthetic --fast --fast-dtype bf16

Unreadable images: every image file is checked (its header, and its size against the annotations) before any
inference. A bad file is an error naming it, unless --skip-bad-images is given: then the bad files are left out
of the evaluation (the AP is that of the other images), with a warning naming a few and counting them all; a file
whose pixel data turns out corrupt only when decoded is skipped too, and counted as not evaluated.

Exit codes: 0 done; 2 a usage or input error (bad flag, missing or unreadable checkpoint or annotation file,
categories that do not match), one line on stderr (--debug shows the traceback); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from fpn.engine import distributed
from fpn.io.loading import is_training_checkpoint, load_detector
from fpn.tools.cli import ArgumentParser, run_cli
from fpn.errors import InputError
from fpn.data.coco import CocoDetection
from fpn.data.formats import FORMATS, read_dataset, select_split
from fpn.data.formats.common import renumber_categories
from fpn.data.file_check import check_image_files, handle_bad_images
from fpn.device import select_device
from fpn.engine.loop import AMP_DTYPES, autocast_factory
from fpn.engine.confusion import SCORE_THRESHOLD
from fpn.engine.evaluation import check_categories, evaluate_coco, format_metrics
from fpn.engine.mask_eval import segmentation_problem_in
from fpn.deploy.predictions import label_map_of
from fpn.tools.predict import FAST_DTYPES, fast_model
from fpn.detectors.build import arch_of
from fpn.engine.proposal_eval import evaluate_proposals, format_recall, rpn_only_model
from fpn.io.weights_file import read_weights

TORCHVISION_BATCHING = (2, "none")  # (batch size, amp) for files that do not say how they were evaluated


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="scripts/evaluate.py", tool="evaluate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="our training checkpoint or a torchvision detector file")
    parser.add_argument("--coco-root", help="DIR with val2017/ and annotations/instances_val2017.json")
    parser.add_argument("--images", help="images folder")
    parser.add_argument("--annotations", help="COCO json of those images")
    parser.add_argument("--data", help="a labelled folder or file in any format train.py's --train-data reads "
                                       "(YOLO, Pascal VOC, LabelMe, COCO json): its val split when it has one")
    parser.add_argument("--data-format", choices=FORMATS, help="the format of --data (default: detected)")
    parser.add_argument("--split", help="with --data: the split to evaluate on (default val when there is one, "
                                        "else all the images)")
    parser.add_argument("--output-dir", default=None, help="where the JSON files go (default: the checkpoint's dir)")
    parser.add_argument("--prefix", default=None,
                        help="file name prefix of the JSON files (default: evaluate; proposals with --proposals)")
    parser.add_argument("--proposals", action="store_true",
                        help="evaluate the average recall of the RPN's proposals instead of the box AP")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: the training's --eval-batch-size, stored in our "
                             "checkpoints, so the padding and the AP are the training's; 2 for a torchvision file)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--amp", default=None, choices=sorted(AMP_DTYPES),
                        help="mixed precision (default: the training's --amp; none for a torchvision file)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: the training's --threads when it set one, else torch's default; "
                             "on a CPU the thread count changes the arithmetic's order, and the scores a little)")
    parser.add_argument("--fast", action="store_true",
                        help="evaluate the inference-optimized copy of the model "
                             "(fpn.deploy.inference.optimize_for_inference)")
    parser.add_argument("--fast-dtype", choices=sorted(FAST_DTYPES), default="fp32",
                        help="with --fast: the dtype of the convolutions and linear layers (default fp32)")
    parser.add_argument("--no-curves", action="store_true",
                        help="do not write pr_curves.png, confusion.png and confusion.json")
    parser.add_argument("--confusion-threshold", type=float, default=SCORE_THRESHOLD,
                        help=f"the score a detection needs to enter the confusion matrix (default {SCORE_THRESHOLD}, "
                             "the threshold at which predict draws boxes)")
    parser.add_argument("--allow-missing-categories", action="store_true",
                        help="evaluate even when the data has categories the model cannot predict (AP 0 for them)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave unreadable image files out of the evaluation, with a warning counting them "
                             "(default: a bad file is an error naming it)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    args.prefix = args.prefix or ("proposals" if args.proposals else "evaluate")
    if args.data and (args.coco_root or args.images or args.annotations):
        raise InputError("--data and --coco-root / --images / --annotations both name the data: give one of them")
    if (args.data_format or args.split) and not args.data:
        raise InputError("--data-format and --split go with --data, which is not given")
    if args.data:
        return args  # read (and checked) by own_data_file, once the checkpoint is known
    if args.coco_root:
        args.images = args.images or str(Path(args.coco_root) / "val2017")
        args.annotations = args.annotations or str(Path(args.coco_root) / "annotations/instances_val2017.json")
    if not (args.images and args.annotations):
        raise InputError("give --coco-root, or both --images and --annotations")
    if not Path(args.images).is_dir():
        raise InputError(f"images folder {args.images}: no such directory")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 0:
        raise InputError(f"--threads must be >= 0, got {args.threads}")
    if not 0.0 <= args.confusion_threshold <= 1.0:
        raise InputError(f"--confusion-threshold must be in [0, 1], got {args.confusion_threshold}")
    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}")
    if args.fast_dtype != "fp32" and not args.fast:
        raise InputError(f"--fast-dtype {args.fast_dtype} needs --fast")
    if args.fast and args.amp not in (None, "none"):
        raise InputError(f"--amp {args.amp} and --fast: give the precision of the optimized model as --fast-dtype")
    return args


@dataclass(frozen=True)
class Batching:
    """How the images go through the model: what decides the padding and the arithmetic, hence the scores."""

    batch_size: int  # images per forward pass
    amp: str  # mixed precision: none, bf16 or fp16
    threads: int  # CPU threads; 0: torch's default
    described: str  # "batch size 4 (the training's --eval-batch-size), amp none (...), threads 1 (...)"


def evaluation_batching(weights: Any, args: argparse.Namespace) -> Batching:
    """The flags' values, or where they were not given the training's own (stored in our checkpoints' `args`).

    Args:
        weights: the loaded contents of the checkpoint file.
        args: the parsed command line (`batch_size`, `amp`, `threads`; None where not given).
    Returns:
        the batching; a file without training arguments (torchvision's) gets `TORCHVISION_BATCHING`.
    """
    trained = weights.get("args") if is_training_checkpoint(weights) else None
    trained = trained if isinstance(trained, dict) else {}
    chosen = {}
    for name, stored, fallback, valid in (
        ("batch_size", "eval_batch_size", TORCHVISION_BATCHING[0], lambda v: isinstance(v, int) and v >= 1),
        ("amp", "amp", TORCHVISION_BATCHING[1], lambda v: v in AMP_DTYPES),
        ("threads", "threads", 0, lambda v: isinstance(v, int) and v >= 0),
    ):
        flag = "--" + name.replace("_", "-")
        if name == "amp" and getattr(args, "fast", False):
            chosen[name] = ("none", f"--fast-dtype {args.fast_dtype} instead")
        elif getattr(args, name) is not None:
            chosen[name] = (getattr(args, name), flag)
        elif valid(trained.get(stored)):
            chosen[name] = (trained[stored], f"the training's --{stored.replace('_', '-')}")
        else:
            chosen[name] = (fallback, "the checkpoint does not say")
    described = ", ".join(f"{name.replace('_', ' ')} {value} ({source})" for name, (value, source) in chosen.items())
    return Batching(**{name: value for name, (value, _) in chosen.items()}, described=described)


def label_map(weights: Any, num_classes: int, class_names: Mapping[int, str], dataset: CocoDetection, *,
              checkpoint: str, allow_missing: bool = False) -> Tuple[Dict[int, int], Optional[str]]:
    """The model's {label: COCO category id}, checked against the data set's categories (`check_categories`).

    Args:
        weights: the loaded contents of the checkpoint file: our checkpoints store the map; a torchvision
            detector's labels are the COCO category ids themselves (the identity; its unused "N/A" ids are not
            counted as categories it predicts).
        num_classes: the model's outputs, background included.
        class_names: the model's {label: name}.
        dataset: the evaluation set.
        checkpoint: the file's path, for the messages.
        allow_missing: see `check_categories`.
    Returns:
        (the map without the background, a warning line when `allow_missing` let missing categories through).
    """
    mapping = label_map_of(weights, num_classes)
    if not mapping:
        raise InputError(f"checkpoint {checkpoint} has no label_to_category map: its labels cannot be matched "
                         f"to the categories of {dataset.annotations_file}")
    mapping = {label: category for label, category in mapping.items() if label != 0}
    predicted = {category: class_names.get(label, str(category)) for label, category in mapping.items()
                 if class_names.get(label) != "N/A"}
    data = {category: dataset.class_names[label] for label, category in dataset.label_to_category.items()}
    warning = check_categories(predicted, data, model_name=str(checkpoint), data_name=str(dataset.annotations_file),
                               allow_missing=allow_missing)
    return mapping, warning


def own_data_file(args: argparse.Namespace, weights: Any, output_dir: Path) -> Tuple[str, str]:
    """--data: the folder read (`fpn.data.formats.read_dataset`), its split taken, its categories given the
    checkpoint's category ids by name (a class named as in training is that class, whatever the order its format
    numbers classes in) and the checkpoint's other categories added (a VOC or LabelMe folder lists only the names
    its labels use; COCOeval leaves a category without ground truth out of the mean), written as
    OUTPUT_DIR/{PREFIX}_data.json. Returns (images folder, that file)."""
    labelled = read_dataset(args.data, args.data_format)
    split = args.split or ("val" if "val" in labelled.splits else None)
    if split is not None:
        labelled = select_split(labelled, split)
    trained = {}  # name -> the checkpoint's category id
    if is_training_checkpoint(weights) and isinstance(weights.get("class_names"), dict):
        names = {int(label): str(name) for label, name in weights["class_names"].items()}
        trained = {names[label]: category for label, category in (label_map_of(weights, 0) or {}).items()
                   if label in names}
    spare = iter(range(max([*trained.values(), 0]) + 1, 1 << 31))  # ids for names the model does not know
    ids = {**{c["name"]: next(spare) for c in labelled.coco["categories"] if c["name"] not in trained}, **trained}
    coco = renumber_categories(labelled.coco, ids, extra=list(trained))
    path = output_dir / f"{args.prefix}_data.json"
    output_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # each process of a torchrun writes its own
    temporary.write_text(json.dumps(coco), encoding="utf-8")
    os.replace(temporary, path)  # the same content from every process: a reader never sees half a file
    distributed.log(f"--data {args.data}: {labelled.data_format}, {len(coco['images'])} images"
                    f"{f' (split {split})' if split else ''}, written as {path}")
    return str(labelled.images_root), str(path)


def drop_bad_images(dataset: CocoDetection) -> str:
    """Check every image file's header and size (rank 0 reads them) and apply the data set's policy: an
    InputError naming the bad files, or with `skip_bad_images` drop them with one warning.

    Returns:
        "" when every file is fine, else ", <N> unreadable left out" for the summary line.
    """
    bad = distributed.run_on_main(lambda: check_image_files(dataset))
    handle_bad_images(dataset, bad)  # raises unless dataset.skip_bad_images; the same on every rank
    return f", {len(bad)} unreadable left out" if bad else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (0 done, 2 usage or input error, 130 interrupted)."""
    return run_cli(evaluate_command, argv, prog="evaluate.py")


def evaluate_command(argv: Optional[Sequence[str]] = None) -> int:
    """`main` without the error handling: input errors propagate as `InputError`/`OSError`."""
    args = parse_args(argv)
    weights = read_weights(args.checkpoint, "checkpoint", mmap=True)  # memory-mapped: the label map and args
    output_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).resolve().parent
    if args.data:
        args.images, args.annotations = own_data_file(args, weights, output_dir)
    # masks=False: COCOeval reads the ground-truth masks from the annotation file, the samples need none
    dataset = CocoDetection(args.images, args.annotations, train=False, skip_bad_images=args.skip_bad_images,
                            masks=False)
    batching = evaluation_batching(weights, args)
    if batching.threads:
        torch.set_num_threads(batching.threads)
    with distributed.distributed_session(select_device(args.device)) as device:
        skipped = drop_bad_images(dataset)
        model, class_names = load_detector(args.checkpoint, device)
        if args.proposals:
            return proposals_command(model, dataset, batching, device, args)
        if args.fast:
            model = fast_model(model, FAST_DTYPES[args.fast_dtype])
        mapping, warning = label_map(weights, model.num_classes, class_names, dataset, checkpoint=args.checkpoint,
                                     allow_missing=args.allow_missing_categories)
        if warning and distributed.is_main_process():
            print(f"evaluate.py: warning: {warning}", file=sys.stderr, flush=True)
        mask_ap = mask_ap_possible(model, dataset)
        distributed.log(f"evaluating with {batching.described}")
        bar = tqdm(total=len(dataset), desc="evaluate", disable=not distributed.is_main_process())
        metrics = evaluate_coco(
            model, dataset, device=device, output_dir=output_dir, prefix=args.prefix, label_to_category=mapping,
            mask_ap=mask_ap, curves=not args.no_curves, confusion_threshold=args.confusion_threshold,
            batch_size=batching.batch_size, num_workers=args.workers,
            autocast=autocast_factory(device, batching.amp),
            progress=lambda n: bar.update(n * distributed.get_world_size()),
        )
        bar.close()
        distributed.log(f"{args.checkpoint} on {args.annotations} ({len(dataset)} images{skipped}):\n"
                        f"{format_metrics(metrics)}")
        distributed.log(f"results: {output_dir / (args.prefix + '_results.json')}")
    return 0


def mask_ap_possible(model: torch.nn.Module, dataset: CocoDetection) -> bool:
    """Whether the mask AP of `model` can be scored on `dataset`: False for a model without masks, and for an
    annotation file whose segmentations cannot be scored, after one warning line naming why (before any inference,
    so the box AP still comes)."""
    if arch_of(model) != "mask_rcnn":
        return False
    problem = segmentation_problem_in(dataset.coco, dataset.image_ids)
    if problem and distributed.is_main_process():
        print(f"evaluate.py: warning: {dataset.annotations_file}: {problem}: the masks cannot be scored, box AP only",
              file=sys.stderr, flush=True)
    return problem is None


def proposals_command(model: torch.nn.Module, dataset: CocoDetection, batching: Batching, device: torch.device,
                      args: argparse.Namespace) -> int:
    """--proposals: the average recall of the proposals of `model`'s RPN (its RPN-only twin for a full detector)."""
    if arch_of(model) == "fcos":
        raise InputError(f"--proposals: {args.checkpoint} holds a {arch_of(model)} detector, which is one-stage: "
                         "it has no region proposals to score (evaluate its boxes without --proposals)")
    proposer = rpn_only_model(model)
    if args.fast:
        proposer = fast_model(proposer, FAST_DTYPES[args.fast_dtype])
    per_image = proposer.config.rpn.post_nms_top_n_test
    distributed.log(f"evaluating proposals ({per_image} per image at most) with {batching.described}")
    output_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).resolve().parent
    bar = tqdm(total=len(dataset), desc="proposals", disable=not distributed.is_main_process())
    metrics = evaluate_proposals(
        proposer, dataset, device=device, output_dir=output_dir, prefix=args.prefix,
        batch_size=batching.batch_size, num_workers=args.workers, autocast=autocast_factory(device, batching.amp),
        progress=lambda n: bar.update(n * distributed.get_world_size()),
    )
    bar.close()
    distributed.log(f"{args.checkpoint} proposals on {args.annotations} ({len(dataset)} images):\n"
                    f"{format_recall(metrics)}")
    distributed.log(f"metrics: {output_dir / (args.prefix + '_metrics.json')}")
    return 0

