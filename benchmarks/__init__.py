"""The benchmarks that measure fpn against torchvision, the reference it reimplements, in the same run.

    detector.py      FasterRCNNFPN (or MaskRCNNFPN) next to torchvision's (scripts/benchmark.py)
    ops.py           our pure-PyTorch NMS and RoIAlign next to torchvision's compiled kernels (scripts/bench_ops.py)

The detector benchmark's parts, one concept a file: models.py (the two models with the same weights, and their
inputs), measure.py (timing and peak memory, for both benchmarks), side_by_side.py (inference and a training step
at one device and precision), deploy.py (every inference path, --deploy), profiling.py (where the time goes,
--profile), mask_memory.py (Mask R-CNN training memory at COCO scale, --mask-memory), tiling.py (small objects
in large images, whole against tiled inference, --tiling), report.py (the machine, the
Markdown tables, the printed report). ops_workloads.py holds the NMS boxes
and RoIs that ops.py times; reference.py imports torchvision, or says in one line how to install it.

This package sits beside fpn/, not inside it, because every benchmark imports torchvision and fpn/ never does
(torchvision is the reference, installed by the "test" extra only). scripts/benchmark.py and scripts/bench_ops.py
are its doors: argument parsing lives here, so a notebook or a test can call `main(argv)` as the scripts do.
"""
