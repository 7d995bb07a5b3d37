"""Detect objects in images with a trained detector; see `fpn/tools/predict.py` for the options and the output schema.

    python scripts/predict.py photos/ --weights runs/demo/checkpoint_0000800.pt \\
        --output-dir runs/predict/demo
"""
import sys

from fpn.tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
