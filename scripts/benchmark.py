"""Speed and memory of fpn's detectors next to torchvision's: same weights, same inputs, one run.

    python scripts/benchmark.py                                # CPU (+ CUDA when present), fp32, 800x1333 inputs
    python scripts/benchmark.py --amp --json runs/benchmark.json    # + bf16 autocast (CPU: also channels_last)
    python scripts/benchmark.py --profile                      # + where the time goes (stages, top operators)
    python scripts/benchmark.py --deploy                       # + every inference path, vs torchvision's best
    python scripts/benchmark.py --quick --json /tmp/b.json     # 256x320, batch 2, one repeat: a smoke test
    python scripts/benchmark.py --arch mask_rcnn               # MaskRCNNFPN vs maskrcnn_resnet50_fpn, same table
    python scripts/benchmark.py --mask-memory --json runs/mask_memory.json  # Mask R-CNN training at COCO scale:
                                                               # 50 instances per image, memory of the mask targets
    python scripts/benchmark.py --tiling --json runs/tiling.json  # small objects in a large image: whole vs tiled
    python scripts/benchmark.py --learning --json runs/learning.json  # the CPU demo's AP per training minute at
                                                               # 2, 4, 8 min: this release's recipe vs the previous
    python scripts/benchmark.py --learning --quick             # the same, 20 iterations per recipe: a smoke test

The flags: `--help`; what is measured and how: benchmarks/ (benchmarks/detector.py first). Needs torchvision,
the reference (the "test" extra); without it, exits 2 with one line saying how to install it (--learning, which
trains with scripts/train.py alone, runs without it).
"""
import sys

from benchmarks.detector import main

if __name__ == "__main__":
    sys.exit(main())
