"""Plot a training run's metrics.jsonl: loss terms, learning rate and evaluation APs against the iteration.

    python scripts/plot_metrics.py runs/demo/metrics.jsonl                  # PNGs next to the file
    python scripts/plot_metrics.py runs/demo/metrics.jsonl --output-dir plots/

The tool is fpn/tools/plot_metrics.py, the plotting fpn/engine/plots.py (`from fpn.engine.plots import plot_metrics`).
"""
import sys

from fpn.tools.plot_metrics import main

if __name__ == "__main__":
    sys.exit(main())
