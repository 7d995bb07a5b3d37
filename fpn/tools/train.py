"""Train Faster R-CNN + FPN on a COCO-format data set, with periodic checkpoints and COCO evaluation.

One device (GPU if there is one, else Apple MPS, else CPU):

    python scripts/train.py --preset cpu-demo --output-dir runs/demo          # synthetic shapes, ~3 min on 2 CPU cores
    python scripts/train.py --preset 1x --coco-root /data/coco --backbone-weights resnet50.pth --output-dir runs/r50
    python scripts/train.py --preset cpu-demo --train-data datasets/mine --output-dir runs/mine  # YOLO, VOC, LabelMe, COCO

One machine, 8 GPUs (one process each; --batch-size is per process, so 8 x 2 = 16 images per iteration):

    torchrun --nproc_per_node=8 scripts/train.py --preset paper --coco-root /data/coco \\
        --backbone-weights resnet50.pth --output-dir runs/paper

Two machines of 8 GPUs (run on each, --node_rank=0 on the one whose address is --master_addr, 1 on the other):

    torchrun --nnodes=2 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 --nproc_per_node=8 \\
        scripts/train.py --preset 1x --batch-size 1 --coco-root /data/coco --output-dir runs/r50

Continue an interrupted run from its last checkpoint, at the same iteration: add `--resume` (same output dir).
Every field of the model config has a flag (`--backbone.depth 18`, `--input.train-min-sizes 640,800`); the
preset gives the defaults and explicit flags override them. Without data flags the synthetic shapes set is
generated (into OUTPUT_DIR/synthetic or --synthetic-dir) and used. Writes to the output dir: checkpoints,
metrics.jsonl, eval_*_metrics.json / eval_*_results.json (COCO results), detections.png and the loss/AP plots.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Optional, Sequence

from fpn.tools.cli import EXIT_FAILED, ArgumentParser, Interrupted, run_cli
from fpn.detectors.build import ARCHITECTURES, arch_of, convert_config
from fpn.engine.presets import PRESETS, describe_presets, get_preset
from fpn.tools.config_flags import (
    add_config_flags, add_preset_flags, apply_config_flags, apply_preset_flags, arch_in, preset_name_in,
)
from fpn.engine.hardware import AMP_CHOICES
from fpn.engine.trainer import TrainingJob, run_training
from fpn.engine.training_data import DEFAULT_VAL_SPLIT, DataSource
from fpn.data.formats import FORMATS
from fpn.errors import TrainingInterrupted, TrainingStopped


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; preset values fill every training and model field that was not given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    shown_name = preset_name_in(argv, default="cpu-demo")  # whose values --help shows as the defaults
    shown = get_preset(shown_name)
    shown.model = convert_config(shown.model, arch_in(argv, default=arch_of(shown.model)))
    parser = ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="presets (--preset NAME):\n" + textwrap.indent(describe_presets(), "  "))
    parser.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                        help=f"defaults for everything (required): {', '.join(PRESETS)}; each is described at "
                             "the end of --help, and defined in fpn/engine/presets.py")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None,
                        help="the detector: faster_rcnn (two-stage) or fcos (one-stage, anchor-free); default the "
                             "preset's. Another one than the preset's keeps its backbone, FPN and input sections")
    parser.add_argument("--output-dir", default="runs/train", help="checkpoints, metrics and pictures go here")
    parser.add_argument("--coco-root", help="DIR with train2017/, val2017/, annotations/instances_{train,val}2017.json")
    parser.add_argument("--train-images", help="training images folder")
    parser.add_argument("--train-annotations", help="training COCO json")
    parser.add_argument("--val-images", help="validation images folder")
    parser.add_argument("--val-annotations", help="validation COCO json")
    parser.add_argument("--train-data", metavar="PATH",
                        help="training data in any label format: a YOLO folder or data YAML, a Pascal VOC folder, "
                             "a LabelMe folder or a COCO JSON (format detected; see python -m fpn.data.convert)")
    parser.add_argument("--val-data", metavar="PATH", help="validation data in any label format (default: "
                        "--train-data's own val split, else --val-split of it)")
    parser.add_argument("--data-format", choices=FORMATS, help="the format of --train-data / --val-data "
                        "(default: detected from what is on disk)")
    parser.add_argument("--val-split", type=float, metavar="F", help="the fraction of --train-data's images kept "
                        f"for validation when it has no val split of its own (default {DEFAULT_VAL_SPLIT})")
    parser.add_argument("--split-seed", type=int, default=0, metavar="N", help="seed of the --val-split draw "
                        "(apart from --seed, so another --seed keeps the same split)")
    parser.add_argument("--synthetic-dir", help="where to generate the synthetic set (default OUTPUT_DIR/synthetic)")
    parser.add_argument("--skip-bad-images", action="store_true", help="warn and skip unreadable images")
    parser.add_argument("--check-images", choices=("header", "decode", "off"), default="header",
                        help="before training, check every image file: exists and its header reads (header, ~0.1 "
                             "s per 1000 images), or also decodes (decode, ~4 s per 1000; finds truncated files)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument("--init-from", help="initial weights: one of our checkpoints or a torchvision detector file")
    parser.add_argument("--backbone-weights", help="ImageNet ResNet checkpoint (torchvision layout) for the backbone")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights init, data order and augmentation")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    add_preset_flags(parser, shown, name=shown_name, chosen=preset_name_in(argv, default="") == shown_name)
    add_config_flags(parser, shown.model)
    args = parser.parse_args(argv)
    if args.preset is None:
        names = list(PRESETS)
        parser.error(f"choose a --preset: {', '.join(names[:-1])} or {names[-1]}")
    check_preset_fits_data(parser, args)

    chosen = apply_preset_flags(get_preset(args.preset), args)
    if chosen.amp not in AMP_CHOICES:
        parser.error(f"--amp must be {', '.join(AMP_CHOICES[:-1])} or {AMP_CHOICES[-1]}, got {chosen.amp!r}")
    for name in ("iters", "batch_size", "checkpoint_every", "log_every"):
        if getattr(chosen, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(chosen, name)}")
    if chosen.keep_checkpoints < 0 or chosen.dist_timeout_min <= 0:
        parser.error("--keep-checkpoints must be >= 0 and --dist-timeout-min > 0")
    return args


COCO_PRESETS = ("paper", "1x")  # full-size ResNet-50 schedules; the other presets bring a synthetic set


def check_preset_fits_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A COCO preset without data would train ResNet-50 at 800 px on the synthetic set: a mistake, said early.

    (A small CPU preset with data flags is a legitimate choice: the small model on a small set.)
    """
    has_data = any([args.coco_root, args.train_images, args.train_annotations, args.val_images,
                    args.val_annotations, args.train_data])
    if args.preset in COCO_PRESETS and not has_data:
        parser.error(f"--preset {args.preset} trains ResNet-50 at 800 px on COCO: give --coco-root DIR (or "
                     "--train-images/--train-annotations/--val-images/--val-annotations, or --train-data PATH); "
                     "for the synthetic demo choose --preset cpu-demo")


def training_job(args: argparse.Namespace) -> TrainingJob:
    """The typed job of the parsed command line: the preset with the flags typed applied, data and run options."""
    preset = apply_preset_flags(get_preset(args.preset), args)
    preset.model = apply_config_flags(convert_config(preset.model, args.arch or arch_of(preset.model)), args)
    if args.backbone_weights:
        preset.model.backbone.weights = args.backbone_weights
    data = DataSource(coco_root=args.coco_root, train_images=args.train_images,
                      train_annotations=args.train_annotations, val_images=args.val_images,
                      val_annotations=args.val_annotations, synthetic_dir=args.synthetic_dir,
                      skip_bad_images=args.skip_bad_images, check_images=args.check_images,
                      train_data=args.train_data, val_data=args.val_data, data_format=args.data_format,
                      val_split=args.val_split, split_seed=args.split_seed)
    return TrainingJob(preset=preset, output_dir=args.output_dir, data=data, resume=args.resume,
                       init_from=args.init_from, device=args.device, seed=args.seed, preset_name=args.preset)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; exit code 0 done, 1 stopped part-way (said how to resume), 2 usage/input error, 130 Ctrl-C."""
    return run_cli(_main, argv, prog="train.py", quiet=lambda: os.environ.get("RANK", "0") != "0")


def _main(argv: Optional[Sequence[str]]) -> int:
    job = training_job(parse_args(argv))
    try:
        run_training(job)
    except TrainingStopped as stop:
        if stop.report:  # one process of a multi-process run says it
            print(f"train.py: error: {stop}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except TrainingInterrupted as stop:
        raise Interrupted(str(stop)) from None
    return 0
