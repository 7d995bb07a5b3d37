"""Benchmark fpn's pure-PyTorch NMS and RoIAlign against torchvision's compiled kernels, in the same run.

The command line of scripts/bench_ops.py. NMS: the workloads of benchmarks/ops_workloads.py. RoIAlign:
MultiScaleRoIAlign 7 x 7, sampling_ratio 2, of 512 / 2048 proposal-like RoIs over 256-channel P2..P5 of an
800 x 1344 image, forward and backward, in float32 and under bf16 autocast (torchvision computes in float32 there
and returns bf16).

Each time is the median of --repeats runs after --warmup runs, ours and torchvision's alternating so that load
from other processes hits both alike. Peak memory is the peak of tensor memory a call allocates above what
existed before it (CPU: the profiler's allocation events; CUDA: max_memory_allocated). torch runs
single-threaded by default because torchvision's CPU kernels are serial: the comparison is kernel against kernel.
"""
import argparse
import sys
from collections import OrderedDict

import torch

from benchmarks.measure import peak_mib, timed_pair
from benchmarks.ops_workloads import IMAGE, nms_cases, proposal_boxes
from benchmarks.reference import missing_reference_message, torchvision
from benchmarks.report import write_json
from fpn.ops import MultiScaleRoIAlign, batched_nms, nms

LEVELS = ("p2", "p3", "p4", "p5")


def bench_nms(cases, device, warmup, repeats):
    rows = []
    for name, size, boxes, scores, idxs, threshold in cases:
        boxes, scores = boxes.to(device), scores.to(device)
        if idxs is None:
            ours = lambda: nms(boxes, scores, threshold)  # noqa: E731
            theirs = lambda: torchvision.ops.nms(boxes, scores, threshold)  # noqa: E731
        else:
            idxs = idxs.to(device)
            ours = lambda: batched_nms(boxes, scores, idxs, threshold)  # noqa: E731
            theirs = lambda: torchvision.ops.batched_nms(boxes, scores, idxs, threshold)  # noqa: E731
        if not torch.equal(ours().cpu(), theirs().cpu()):
            raise RuntimeError(f"nms keeps other boxes than torchvision on {name}, {size}")
        ms = timed_pair(ours, theirs, device, warmup, repeats)
        mib = peak_mib(ours, device), peak_mib(theirs, device)
        rows.append((f"nms: {name}", size, device.type, *ms, *mib))
    return rows


def bench_roi_align(counts, device, warmup, repeats, channels, image, precisions):
    g = torch.Generator().manual_seed(0)
    features = OrderedDict(
        (name, torch.randn(1, channels, image[0] // 2**k, image[1] // 2**k, generator=g).to(device))
        for name, k in zip(LEVELS, range(2, 6))
    )
    ours_pool = MultiScaleRoIAlign(list(LEVELS), 7, 2)
    ref_pool = torchvision.ops.MultiScaleRoIAlign(list(LEVELS), 7, 2)
    rows = []
    for precision in precisions:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        maps = OrderedDict((k, v.to(torch.bfloat16) if precision == "bf16" else v) for k, v in features.items())
        for count in counts:
            boxes = [proposal_boxes(count, seed=count, image=image, per_object=4).to(device)]

            def forward(pool, leaves):
                with autocast:
                    return pool(leaves, boxes, [image])

            tolerance = 1e-4 if precision == "fp32" else 0.05
            torch.testing.assert_close(forward(ours_pool, maps).float(), forward(ref_pool, maps).float(),
                                       rtol=tolerance, atol=tolerance)
            fwd = [lambda pool=pool: forward(pool, maps) for pool in (ours_pool, ref_pool)]
            bwd = [lambda pool=pool: _prepare_backward(forward, pool, maps) for pool in (ours_pool, ref_pool)]
            for label, (ours, theirs) in (("forward", fwd), ("backward", bwd)):
                ms = timed_pair(ours, theirs, device, warmup, repeats)
                mib = peak_mib(ours, device), peak_mib(theirs, device)
                rows.append((f"MultiScaleRoIAlign {label} {precision}", f"{count} RoIs", device.type, *ms, *mib))
    return rows


def _prepare_backward(forward, pool, maps):
    leaves = OrderedDict((k, v.detach().requires_grad_()) for k, v in maps.items())
    out = forward(pool, leaves)
    return lambda: out.backward(torch.ones_like(out))


def markdown(rows) -> str:
    lines = ["| op | size | device | ours ms | torchvision ms | ours / tv | ours peak MiB | torchvision peak MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for op, size, device, ours, ref, ours_mib, ref_mib in rows:
        lines.append(f"| {op} | {size} | {device} | {ours:.2f} | {ref:.2f} | {ours / ref:.2f} | {ours_mib:.1f} "
                     f"| {ref_mib:.1f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the median is reported")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if torchvision is None:
        print(missing_reference_message("bench_ops.py"), file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        roi_counts, channels, image, precisions = (16,), 16, (128, 192), ("fp32",)
        warmup, repeats = 1, 1
    else:
        roi_counts, channels, image, precisions = (512, 2048), 256, IMAGE, ("fp32", "bf16")
        warmup, repeats = args.warmup, args.repeats
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        rows += bench_nms(nms_cases(args.quick), device, warmup, repeats)
        rows += bench_roi_align(roi_counts, device, warmup, repeats, channels, image, precisions)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} CPU threads, median of {repeats} after {warmup} warm-up")
    print(markdown(rows))
    if args.json:
        keys = ("op", "size", "device", "ours_ms", "torchvision_ms", "ours_peak_mib", "torchvision_peak_mib")
        write_json(args.json, {"threads": torch.get_num_threads(), "rows": [dict(zip(keys, r)) for r in rows]},
                   indent=1)
    return 0
