"""`python scripts/plot_metrics.py runs/demo/metrics.jsonl [--output-dir DIR]`: losses.png, lr.png and ap.png of a
training run (fpn.engine.plots); needs matplotlib (`pip install -e ".[viz]"`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fpn.engine.plots import plot_metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="plot_metrics.py",
                                     description="Plot losses, learning rate and APs from a metrics.jsonl.")
    parser.add_argument("metrics_file", help="the run's metrics.jsonl")
    parser.add_argument("--output-dir", default=None, help="folder for the PNGs (default: the file's folder)")
    args = parser.parse_args(argv)
    output_dir = args.output_dir if args.output_dir is not None else Path(args.metrics_file).parent
    try:
        paths = plot_metrics(args.metrics_file, output_dir)
    except (ImportError, OSError, ValueError) as err:  # no matplotlib, a missing or malformed file: input errors
        print(f"plot_metrics.py: error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0

