"""Detect objects in images with a trained detector; see `fpn/predict.py` for the options and the output schema.

    python scripts/predict.py photos/ --weights runs/demo/model_final.pth --output-dir runs/demo/predictions
"""
import sys

from fpn.predict import main

if __name__ == "__main__":
    sys.exit(main())
