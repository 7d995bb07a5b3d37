"""The paper's ablations (Tables 1-3, rows (a)-(f)), trained and evaluated, ours beside the paper's.

    python scripts/ablation.py
    python scripts/ablation.py --quick --output-dir runs/ablation_quick

The flags, the examples and the exit codes: `--help`, or fpn/tools/ablation.py.
"""
import sys

from fpn.tools.ablation import main

if __name__ == "__main__":
    sys.exit(main())
