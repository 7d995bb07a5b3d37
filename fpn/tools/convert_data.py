"""`python -m fpn.data.convert SRC OUT.json`: write the COCO instances JSON of a labelled image set in any format fpn
reads (COCO JSON, YOLO, Pascal VOC, LabelMe), to look at what training will read or to use it elsewhere.

    python -m fpn.data.convert datasets/shapes shapes.json                   # format detected
    python -m fpn.data.convert datasets/VOC2007 voc_val.json --split val     # one split of the source
    python -m fpn.data.convert labelled/ out.json --format labelme

The file is written with indentation and in a stable order (images by file name, ids from 1 as read), and one
paragraph says what was read: the format, the images, the annotations per category, crowd (VOC difficult)
regions, and the folder every `file_name` is relative to. Exit codes: 0 written, 2 an input error (one line naming
the file and line), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from fpn.data.formats import FORMATS, LabelledData, read_dataset, select_split
from fpn.tools.cli import ArgumentParser, run_cli

PROG = "python -m fpn.data.convert"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, tool="convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SRC", help="the data set: a folder, a COCO .json or a YOLO data YAML")
    parser.add_argument("output", metavar="OUT.json", help="the COCO instances JSON to write")
    parser.add_argument("--format", choices=FORMATS, default=None, help="the source's format (default: detected)")
    parser.add_argument("--split", metavar="NAME", help="only the source's split NAME (e.g. train, val)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (0 written, 2 usage or input error, 130 interrupted)."""
    return run_cli(_main, argv, prog="convert")


def _main(argv: Optional[Sequence[str]]) -> int:
    args = parse_args(argv)
    data = read_dataset(args.source, args.format)
    if args.split:
        data = select_split(data, args.split)
    output = Path(args.output)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(json.dumps(data.coco, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, output)  # a reader never sees half a file
    print(summary(data, output))
    return 0


def summary(data: LabelledData, output: Optional[Path] = None) -> str:
    """One paragraph on what `data` holds (and where it was written)."""
    coco = data.coco
    names = {category["id"]: category["name"] for category in coco["categories"]}
    per_category = Counter(ann["category_id"] for ann in coco["annotations"] if not ann.get("iscrowd", 0))
    crowd = sum(1 for ann in coco["annotations"] if ann.get("iscrowd", 0))
    with_objects = len({ann["image_id"] for ann in coco["annotations"]})
    counts = ", ".join(f"{names.get(cat_id, cat_id)} {per_category[cat_id]}" for cat_id in sorted(names))
    splits = "; splits: " + ", ".join(f"{name} {len(ids)}" for name, ids in sorted(data.splits.items())) \
        if data.splits else ""
    parts = [
        f"{data.data_format} data: {len(coco['images'])} images ({len(coco['images']) - with_objects} without "
        f"objects){splits}",
        f"{len(coco['annotations'])} annotations, per category: {counts or 'none'}",
        f"{crowd} crowd / difficult regions (left out of training, ignored by COCO evaluation)",
        f"file_name is relative to {data.images_root}",
    ]
    if output is not None:
        parts.append(f"written to {output}")
    return "; ".join(parts) + "." + "".join(f" Note: {note}." for note in data.notes)
