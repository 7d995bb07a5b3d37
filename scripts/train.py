"""Train a detector (Faster R-CNN or FCOS on the pyramid) with checkpoints, resume and COCO evaluation.

    python scripts/train.py --preset cpu-demo --output-dir runs/demo
    torchrun --nproc_per_node=8 scripts/train.py --preset paper --coco-root /data/coco --backbone-weights resnet50.pth

The flags, the examples and the exit codes: `--help`, or fpn/tools/train.py.
"""
import sys

from fpn.tools.train import main

if __name__ == "__main__":
    sys.exit(main())
