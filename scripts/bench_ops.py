"""Benchmark fpn's pure-PyTorch nms and RoIAlign against torchvision's compiled kernels, in the same run.

    python scripts/bench_ops.py                   # CPU (and CUDA when available), prints a Markdown table
    python scripts/bench_ops.py --threads 0       # torch's default CPU threads instead of one
    python scripts/bench_ops.py --quick           # tiny sizes, one repeat: a smoke test
    python scripts/bench_ops.py --json ops.json   # also save the rows

Workloads: NMS at IoU 0.7 on 1k / 5k / 20k proposal-like boxes (jittered copies of objects of 16 .. 640 px,
aspect ratios 1:2 .. 2:1, in an 800 x 1344 image, random scores); RoIAlign through MultiScaleRoIAlign (7 x 7,
sampling_ratio 2) of 512 / 2048 proposal-like RoIs over 256-channel P2..P5 of an 800 x 1344 image, forward and
backward. Each figure is the median of --repeats runs after --warmup runs. torch runs single-threaded by default
because torchvision's CPU nms and roi_align kernels are serial: the comparison is then kernel against kernel.
"""
import argparse
import json
import statistics
import time
from collections import OrderedDict

import torch
import torchvision

from fpn.ops import MultiScaleRoIAlign, nms

IMAGE = (800, 1344)  # (height, width)
LEVELS = ("p2", "p3", "p4", "p5")


def proposal_boxes(n: int, seed: int, image=IMAGE, per_object: int = 25) -> torch.Tensor:
    """(n, 4) xyxy boxes clustered around n // per_object objects, clipped to the image."""
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


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() in milliseconds; fn may return a callable whose time alone is measured."""
    times = []
    for i in range(warmup + repeats):
        inner = fn()
        if callable(inner):  # fn prepared something (a forward pass); time only the returned step
            _sync(device)
            start = time.perf_counter()
            inner()
        else:
            start = None
        _sync(device)
        if start is None:
            continue
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain(fn):
    """Wrap fn so that `timed` measures the whole call."""
    return lambda: fn


def bench_nms(sizes, device, warmup, repeats):
    rows = []
    for n in sizes:
        boxes = proposal_boxes(n, seed=n).to(device)
        scores = torch.rand(n, generator=torch.Generator().manual_seed(n + 1)).to(device)
        ours_keep, ref_keep = nms(boxes, scores, 0.7), torchvision.ops.nms(boxes, scores, 0.7)
        if not torch.equal(ours_keep.cpu(), ref_keep.cpu()):
            raise RuntimeError(f"nms differs from torchvision on {n} boxes")
        ours = timed(lambda: (lambda: nms(boxes, scores, 0.7)), device, warmup, repeats)
        ref = timed(lambda: (lambda: torchvision.ops.nms(boxes, scores, 0.7)), device, warmup, repeats)
        rows.append(("nms (iou 0.7)", f"{n} boxes", device.type, ours, ref))
    return rows


def bench_roi_align(counts, device, warmup, repeats, channels, image):
    g = torch.Generator().manual_seed(0)
    features = OrderedDict(
        (name, torch.randn(1, channels, image[0] // 2**k, image[1] // 2**k, generator=g).to(device))
        for name, k in zip(LEVELS, range(2, 6))
    )
    ours_pool = MultiScaleRoIAlign(LEVELS, (4, 8, 16, 32), 7, 2)
    ref_pool = torchvision.ops.MultiScaleRoIAlign(list(LEVELS), 7, 2)
    rows = []
    for count in counts:
        boxes = [proposal_boxes(count, seed=count, image=image, per_object=4).to(device)]
        forward = {
            "ours": lambda f: ours_pool(f, boxes),
            "tv": lambda f: ref_pool(f, boxes, [image]),
        }
        torch.testing.assert_close(forward["ours"](features), forward["tv"](features), rtol=1e-4, atol=1e-4)
        fwd, bwd = {}, {}
        for name, run in forward.items():
            fwd[name] = timed(lambda: (lambda: run(features)), device, warmup, repeats)

            def prepare_backward(run=run):
                leaves = OrderedDict((k, v.detach().requires_grad_()) for k, v in features.items())
                out = run(leaves)
                return lambda: out.backward(torch.ones_like(out))

            bwd[name] = timed(prepare_backward, device, warmup, repeats)
        rows.append(("MultiScaleRoIAlign forward", f"{count} RoIs", device.type, fwd["ours"], fwd["tv"]))
        rows.append(("MultiScaleRoIAlign backward", f"{count} RoIs", device.type, bwd["ours"], bwd["tv"]))
    return rows


def markdown(rows) -> str:
    lines = ["| op | size | device | ours ms | torchvision ms | ours / tv |", "|---|---|---|---:|---:|---:|"]
    for op, size, device, ours, ref in rows:
        lines.append(f"| {op} | {size} | {device} | {ours:.2f} | {ref:.2f} | {ours / ref:.2f} |")
    return "\n".join(lines)


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        nms_sizes, roi_counts, channels, image = (200,), (16,), 16, (128, 192)
        warmup, repeats = 1, 1
    else:
        nms_sizes, roi_counts, channels, image = (1000, 5000, 20000), (512, 2048), 256, IMAGE
        warmup, repeats = args.warmup, args.repeats
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        rows += bench_nms(nms_sizes, device, warmup, repeats)
        rows += bench_roi_align(roi_counts, device, warmup, repeats, channels, image)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{torch.get_num_threads()} CPU threads, median of {repeats} after {warmup} warm-up")
    print(markdown(rows))
    if args.json:
        keys = ("op", "size", "device", "ours_ms", "torchvision_ms")
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": torch.get_num_threads(), "rows": [dict(zip(keys, r)) for r in rows]}, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the median is reported")
    main(parser.parse_args())
