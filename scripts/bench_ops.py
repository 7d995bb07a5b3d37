"""Benchmark fpn's pure-PyTorch NMS and RoIAlign against torchvision's compiled kernels, in the same run.

    python scripts/bench_ops.py                   # CPU (and CUDA when available), prints a Markdown table
    python scripts/bench_ops.py --threads 0       # torch's default CPU threads instead of one
    python scripts/bench_ops.py --quick           # tiny sizes, one repeat: a smoke test
    python scripts/bench_ops.py --json runs/ops.json   # also save the rows

The flags: `--help`; the workloads and how they are timed: benchmarks/ops.py. Needs torchvision, the reference
(the "test" extra); without it, exits 2 with one line saying how to install it.
"""
import sys

from benchmarks.ops import main

if __name__ == "__main__":
    sys.exit(main())
