"""Where one training iteration of a preset goes: data, forward per stage, loss read, backward, optimizer, host
syncs, and the op time by category under torch.profiler.

    python scripts/profile_training.py --preset cpu-demo                          # the preset's speed settings
    python scripts/profile_training.py --preset cpu-demo --amp none --threads 1   # the portable fp32 path
    python scripts/profile_training.py --preset fcos-cpu-demo --markdown          # README-ready tables
    python scripts/profile_training.py --weights runs/demo/checkpoint_0000400.pt --json runs/profile.json

The flags: `--help`; what is measured and how: benchmarks/training_profile.py.
"""
import sys

from benchmarks.training_profile import main

if __name__ == "__main__":
    sys.exit(main())
