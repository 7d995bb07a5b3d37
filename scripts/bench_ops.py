"""Benchmark fpn's pure-PyTorch NMS and RoIAlign against torchvision's compiled kernels, in the same run.

    python scripts/bench_ops.py                   # CPU (and CUDA when available), prints a Markdown table
    python scripts/bench_ops.py --threads 0       # torch's default CPU threads instead of one
    python scripts/bench_ops.py --quick           # tiny sizes, one repeat: a smoke test
    python scripts/bench_ops.py --json runs/ops.json   # also save the rows

NMS workloads, from friendly to adversarial (a trained detector's boxes cluster around objects; random boxes
flatter an NMS), IoU 0.7 unless stated:
  * proposals: 1k / 5k / 20k jittered copies of objects of 16 .. 640 px (25 boxes per object), random scores;
  * a trained RPN's output: 5,000 boxes jittered around 8 objects;
  * 10,000 boxes in 5 tight clusters; 4,000 identical boxes;
  * 20,000 boxes spread at random (most are kept);
  * per-class detection NMS: batched_nms of 3,000 boxes around 60 objects in 90 classes, IoU 0.5;
  * the worst case of our algorithm: a suppression chain of 2,000 boxes, each overlapping the next (IoU 0.9).
RoIAlign: MultiScaleRoIAlign 7 x 7, sampling_ratio 2, of 512 / 2048 proposal-like RoIs over 256-channel P2..P5
of an 800 x 1344 image, forward and backward, in float32 and under bf16 autocast (torchvision computes in float32
there and returns bf16).

Each time is the median of --repeats runs after --warmup runs, ours and torchvision's alternating so that load
from other processes hits both alike. Peak memory is the peak of tensor memory a call allocates above what
existed before it (CPU: the profiler's allocation events; CUDA: max_memory_allocated). torch runs
single-threaded by default because torchvision's CPU kernels are serial: the comparison is kernel against kernel.
"""
import argparse
import json
import os
import statistics
import sys
import time
from collections import OrderedDict

import torch

from fpn.engine.memory import peak_cpu_memory
from fpn.ops import MultiScaleRoIAlign, batched_nms, nms

try:  # the reference measured against; the "test" extra installs it, the main-job install does not
    import torchvision
except (ImportError, RuntimeError) as error:  # RuntimeError: a torchvision built for another torch
    torchvision, MISSING_REFERENCE = None, error

IMAGE = (800, 1344)  # (height, width)
LEVELS = ("p2", "p3", "p4", "p5")


def proposal_boxes(n: int, seed: int, image=IMAGE, per_object: int = 25) -> torch.Tensor:
    """(n, 4) xyxy boxes clustered around n // per_object objects of 16 .. 640 px, clipped to the image."""
    g = torch.Generator().manual_seed(seed)
    height, width = image
    objects = max(1, n // per_object)
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([width, height], dtype=torch.float32)
    side = torch.exp(torch.empty(objects).uniform_(2.77, 6.46, generator=g))  # 16 .. 640 px
    ratio = torch.exp(torch.empty(objects).uniform_(-0.69, 0.69, generator=g))  # h / w in 1/2 .. 2
    size = torch.stack((side / ratio.sqrt(), side * ratio.sqrt()), dim=1)
    which = torch.randint(0, objects, (n,), generator=g)
    jitter_c = torch.randn(n, 2, generator=g) * size[which] * 0.1
    jitter_s = torch.exp(torch.randn(n, 2, generator=g) * 0.1)
    c, s = centre[which] + jitter_c, size[which] * jitter_s
    boxes = torch.cat((c - s / 2, c + s / 2), dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def jittered_boxes(n: int, objects: int, spread: float, seed: int, image=IMAGE) -> torch.Tensor:
    """(n, 4) boxes around `objects` objects of 20 .. 400 px, centre and size jittered by `spread` of the size."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([image[1], image[0]], dtype=torch.float32)
    size = torch.exp(torch.empty(objects, 2).uniform_(3.0, 6.0, generator=g))
    which = torch.randint(0, objects, (n,), generator=g)
    c = centre[which] + torch.randn(n, 2, generator=g) * size[which] * spread
    s = size[which] * torch.exp(torch.randn(n, 2, generator=g) * spread)
    return torch.cat((c - s / 2, c + s / 2), dim=1)


def nms_cases(quick: bool):
    """(name, size, boxes, scores, idxs or None, IoU threshold) of each NMS workload."""
    g = torch.Generator().manual_seed(0)

    def scores(n):
        return torch.randperm(n, generator=g).float() / n  # distinct: torchvision orders tied scores arbitrarily

    if quick:
        return [("proposals", "200 boxes", proposal_boxes(200, 200), scores(200), None, 0.7),
                ("identical boxes", "300 boxes", torch.tensor([[10.0, 10.0, 90.0, 70.0]]).repeat(300, 1),
                 scores(300), None, 0.7)]
    xy = torch.rand(20000, 2, generator=g) * torch.tensor([IMAGE[1], IMAGE[0]], dtype=torch.float32)
    spread = torch.cat((xy, xy + torch.exp(torch.empty(20000, 2).uniform_(2.5, 5.5, generator=g))), dim=1)
    chain = torch.arange(2000, dtype=torch.float32)
    chain = torch.stack((chain, torch.zeros(2000), chain + 32, torch.full((2000,), 32.0)), dim=1)
    return [
        *[("proposals", f"{n} boxes", proposal_boxes(n, n), scores(n), None, 0.7) for n in (1000, 5000, 20000)],
        ("trained RPN: around 8 objects", "5000 boxes", jittered_boxes(5000, 8, 0.1, 1), scores(5000), None, 0.7),
        ("5 tight clusters", "10000 boxes", jittered_boxes(10000, 5, 0.02, 2), scores(10000), None, 0.7),
        ("identical boxes", "4000 boxes", torch.tensor([[100.0, 100.0, 300.0, 250.0]]).repeat(4000, 1),
         scores(4000), None, 0.7),
        ("random boxes", "20000 boxes", spread, scores(20000), None, 0.7),
        ("batched, 90 classes (IoU 0.5)", "3000 boxes", jittered_boxes(3000, 60, 0.15, 3), scores(3000),
         torch.randint(0, 90, (3000,), generator=g), 0.5),
        ("suppression chain (IoU 0.9)", "2000 boxes", chain, torch.linspace(1, 0, 2000), None, 0.9),
    ]


def timed_pair(ours, theirs, device: torch.device, warmup: int, repeats: int):
    """Median milliseconds of ours() and theirs(), run alternately. Each may return a callable (prepared work, e.g.
    a forward pass before a backward): then only that callable is timed."""
    times = ([], [])
    for i in range(warmup + repeats):
        for k, fn in enumerate((ours, theirs)):
            elapsed = _time_once(fn, device)
            if i >= warmup:
                times[k].append(elapsed)
    return statistics.median(times[0]), statistics.median(times[1])


def _time_once(fn, device: torch.device) -> float:
    start = time.perf_counter()
    inner = fn()
    if callable(inner):
        _sync(device)
        start = time.perf_counter()
        inner()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def peak_mib(fn, device: torch.device) -> float:
    """Peak tensor memory (MiB) that fn() allocates above what existed before (the whole call, prepared work too)."""
    def run():
        inner = fn()
        return inner() if callable(inner) else inner

    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return peak_cpu_memory(run)[1] / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def main(args) -> int:
    if torchvision is None:
        print(f"bench_ops.py: error: torchvision, the reference this benchmark compares against, cannot be imported "
              f'({MISSING_REFERENCE}); install it: pip install -c constraints.txt -e ".[test]"', file=sys.stderr)
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
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": torch.get_num_threads(), "rows": [dict(zip(keys, r)) for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the median is reported")
    sys.exit(main(parser.parse_args()))
