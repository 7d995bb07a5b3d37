"""Evaluate a detector checkpoint on a COCO-format set: COCO box AP table, results JSON and metrics JSON.

One device:

    python scripts/evaluate.py runs/demo/checkpoint_0001200.pt --images runs/demo/synthetic/val2017 \\
        --annotations runs/demo/synthetic/annotations/instances_val2017.json --output-dir runs/demo/eval
    python scripts/evaluate.py fasterrcnn_resnet50_fpn_coco-258fb6c6.pth --coco-root /data/coco

Several GPUs (the images are split over the processes, the detections gathered on rank 0):

    torchrun --nproc_per_node=8 scripts/evaluate.py CHECKPOINT --coco-root /data/coco

CHECKPOINT is one of our training checkpoints or a torchvision `fasterrcnn_resnet50_fpn` file (whose labels are
the COCO category ids). Writes OUTPUT_DIR/{PREFIX}_results.json (COCO results format) and {PREFIX}_metrics.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from fpn import distributed
from fpn.checkpoint import is_training_checkpoint, load_detector
from fpn.data.coco import CocoDetection
from fpn.engine import autocast_factory, select_device
from fpn.evaluation import evaluate_coco, format_metrics


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="our training checkpoint or a torchvision detector file")
    parser.add_argument("--coco-root", help="DIR with val2017/ and annotations/instances_val2017.json")
    parser.add_argument("--images", help="images folder")
    parser.add_argument("--annotations", help="COCO json of those images")
    parser.add_argument("--output-dir", default=None, help="where the JSON files go (default: the checkpoint's dir)")
    parser.add_argument("--prefix", default="evaluate", help="file name prefix of the JSON files")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"), help="mixed precision")
    args = parser.parse_args(argv)
    if args.coco_root:
        args.images = args.images or str(Path(args.coco_root) / "val2017")
        args.annotations = args.annotations or str(Path(args.coco_root) / "annotations/instances_val2017.json")
    if not (args.images and args.annotations):
        parser.error("give --coco-root, or both --images and --annotations")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def label_map(checkpoint: Path, num_classes: int, dataset: CocoDetection) -> dict:
    """The model's {label: COCO category id}: stored in our checkpoints; the identity for torchvision files."""
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not is_training_checkpoint(obj):  # torchvision's COCO detectors predict the COCO category id itself
        return {label: label for label in range(1, num_classes)}
    mapping = {int(k): int(v) for k, v in obj["label_to_category"].items()}
    unknown = sorted(set(mapping.values()) - set(dataset.label_to_category.values()))
    if unknown:
        raise ValueError(f"{checkpoint} predicts category ids {unknown} that {dataset.annotations_file} does not have")
    return mapping


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with distributed.distributed_session(select_device(args.device)) as device:
        model, _ = load_detector(args.checkpoint, device)
        dataset = CocoDetection(args.images, args.annotations, train=False)
        output_dir = Path(args.output_dir) if args.output_dir else Path(args.checkpoint).resolve().parent
        bar = tqdm(total=len(dataset), desc="evaluate", disable=not distributed.is_main_process())
        metrics = evaluate_coco(
            model, dataset, device=device, output_dir=output_dir, prefix=args.prefix,
            label_to_category=label_map(Path(args.checkpoint), model.num_classes, dataset), batch_size=args.batch_size,
            num_workers=args.workers, autocast=autocast_factory(device, args.amp),
            progress=lambda n: bar.update(n * distributed.get_world_size()),
        )
        bar.close()
        distributed.log(f"{args.checkpoint} on {args.annotations} ({len(dataset)} images):\n{format_metrics(metrics)}")
        distributed.log(f"results: {output_dir / (args.prefix + '_results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
