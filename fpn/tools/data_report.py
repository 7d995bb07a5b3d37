"""`python -m fpn.data.report SRC`: describe a labelled image set for the model about to train on it: images,
instances per class, box sizes and objects per image at the model's input scale, the pyramid level each box maps
to, and the best IoU each box reaches with an RPN anchor (the boxes below the RPN's positive threshold are named).

    python -m fpn.data.report datasets/shapes                            # format detected; the paper's model
    python -m fpn.data.report instances_train2017.json --preset 1x --output runs/coco_report
    python -m fpn.data.report labelled/ --preset cpu-demo --arch fcos --input.min-size 320

SRC is any set `fpn.data.formats.read_dataset` reads (COCO JSON, YOLO, Pascal VOC, LabelMe). The model is the
preset's (default `paper`: torchvision's fasterrcnn_resnet50_fpn settings, 800 px, anchors 32..512, which is also
what fine-tuning from torchvision's weights trains), with `--arch` and any model flag of train.py
(`--anchors.sizes 16,32,64,128,256`). Prints the table and writes OUTPUT/dataset_report.json and
OUTPUT/dataset.png (the picture needs matplotlib; without it one line says what to install). Exit codes: 0 done,
2 a usage or input error (one line naming the file or value), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from fpn.data.formats import FORMATS, read_dataset, select_split
from fpn.data.statistics import describe_dataset
from fpn.detectors.build import ARCHITECTURES, arch_of, convert_config
from fpn.engine.dataset_plot import PLOT_FILE, REPORT_FILE, write_dataset_report
from fpn.engine.presets import PRESETS, get_preset
from fpn.errors import InputError
from fpn.tools.cli import ArgumentParser, run_cli
from fpn.tools.config_flags import add_config_flags, apply_config_flags, arch_in, preset_name_in

PROG = "python -m fpn.data.report"
DEFAULT_PRESET = "paper"  # torchvision's detector settings: what a model for real photographs trains at


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    shown = get_preset(preset_name_in(argv, default=DEFAULT_PRESET)).model
    shown = convert_config(shown, arch_in(argv, default=arch_of(shown)))
    parser = ArgumentParser(prog=PROG, tool="report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SRC", help="the data set: a folder, a COCO .json or a YOLO data YAML")
    parser.add_argument("--data-format", choices=FORMATS, default=None, help="the source's format (default: detected)")
    parser.add_argument("--split", metavar="NAME", help="only the source's split NAME (e.g. train, val)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, metavar="NAME",
                        help=f"the model's config comes from this training preset: {', '.join(PRESETS)} "
                             f"(default {DEFAULT_PRESET})")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None,
                        help="the detector (default the preset's); another keeps its backbone, FPN and input sections")
    parser.add_argument("--output", metavar="DIR", default="runs/data_report",
                        help=f"where {REPORT_FILE} and {PLOT_FILE} go (created)")
    parser.add_argument("--max-images", type=int, default=None, help="describe only the first N images")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    add_config_flags(parser, shown)
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    return args


def read_labels(source: str, data_format: Optional[str], split: Optional[str]) -> dict:
    """The COCO instances dict of `source`: a COCO .json file is read as it is (the report needs no image files),
    anything else through `read_dataset` (and `select_split` with `split`)."""
    path = Path(source)
    if path.suffix.lower() == ".json" and path.is_file() and data_format in (None, "coco") and not split:
        try:
            return json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a UTF-8 text file") from None
    data = read_dataset(path, data_format)
    return (select_split(data, split) if split else data).coco


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (0 done, 2 usage or input error, 130 interrupted)."""
    return run_cli(_main, argv, prog="report")


def _main(argv: Optional[Sequence[str]]) -> int:
    args = parse_args(argv)
    model = get_preset(args.preset).model
    config = apply_config_flags(convert_config(model, args.arch or arch_of(model)), args)
    report = describe_dataset(read_labels(args.source, args.data_format, args.split), config,
                              max_images=args.max_images)
    print(report.text())
    written, missing = write_dataset_report(report, args.output)
    if missing:
        print(f"report: {missing}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
