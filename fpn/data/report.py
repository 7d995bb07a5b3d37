"""`python -m fpn.data.report SRC`: describe a labelled image set for the model about to train on it (the tool and
its options: fpn/tools/data_report.py; the numbers: fpn/data/statistics.py; the picture: fpn/engine/dataset_plot.py)."""
import sys

from fpn.tools.data_report import main

if __name__ == "__main__":
    sys.exit(main())
