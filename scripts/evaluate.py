"""COCO box AP (or, with --proposals, the RPN's proposal recall) of a checkpoint or torchvision file.

    python scripts/evaluate.py runs/demo/checkpoint_0000800.pt --coco-root runs/demo/synthetic

The flags, the examples and the exit codes: `--help`, or fpn/tools/evaluate.py.
"""
import sys

from fpn.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
