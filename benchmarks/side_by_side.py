"""Ours and torchvision's side by side at one (device, precision): inference and a training step, time and memory.

Measured: inference latency at batch 1, throughput at batch `throughput_batch`, one training step (forward +
backward + SGD step) at batch `train_batch` with a few boxes per image (Mask R-CNN: each with its mask at the
image's size), and the peak memory of inference and of the step. Each figure is the median of `repeats` runs after
`warmup` runs, ours and torchvision's interleaved (benchmarks/measure.py says how peak memory is taken).
"""
from __future__ import annotations

import contextlib

import torch

from benchmarks.measure import measure_pair
from benchmarks.models import make_batch, memory_formats


def train_step_fn(model, images, targets, autocast):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            losses = model(images, targets)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def bench_stage(ours, tv, device, precision, settings, masks: bool = False):
    """All measurements of one (device, precision): result rows and the detection counts. masks: the training
    targets hold instance masks (Mask R-CNN)."""
    bf16 = precision == "bf16"
    for model, formats in zip((ours, tv), memory_formats(ours, device, precision)):
        model.to(device=device, memory_format=formats).eval()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    counts = {}

    def infer(model, images, name=None):
        def run():
            with torch.no_grad(), autocast():
                detections = model(images)
            if name is not None:  # detections per image of the batch-1 runs, to show both do the same work
                counts[name] = len(detections[0]["boxes"])
        return run

    one, _ = make_batch(settings, 1, device)
    many, _ = make_batch(settings, settings.throughput_batch, device, offset=1)
    train_images, targets = make_batch(settings, settings.train_batch, device, offset=2, masks=masks)
    w, r = settings.warmup, settings.repeats
    latency, mem_infer = measure_pair(infer(ours, one, "ours"), infer(tv, one, "torchvision"), device, w, r)
    batch_time, _ = measure_pair(infer(ours, many), infer(tv, many), device, w, r)
    snapshots = [{k: v.clone() for k, v in m.state_dict().items()} for m in (ours, tv)]
    for model in (ours, tv):
        model.train()
    steps = [train_step_fn(m, train_images, targets, autocast) for m in (ours, tv)]
    train_time, mem_train = measure_pair(steps[0], steps[1], device, w, r)
    for model, snapshot in zip((ours, tv), snapshots):
        model.load_state_dict(snapshot)  # the next stage starts from the same weights again
        model.zero_grad(set_to_none=True)
        model.eval()
    n = settings.throughput_batch
    rows = [
        ("inference latency, batch 1", "ms", "lower", [t * 1000 for t in latency]),
        (f"inference throughput, batch {n}", "img/s", "higher", [n / t for t in batch_time]),
        (f"training step, batch {settings.train_batch}", "ms", "lower", [t * 1000 for t in train_time]),
        ("peak memory, inference batch 1", "MiB", "lower", mem_infer),
        (f"peak memory, training step batch {settings.train_batch}", "MiB", "lower", mem_train),
    ]
    return [result_row(device, precision, *row) for row in rows], counts


def result_row(device, precision, metric, unit, better, values) -> dict:
    """One row of a results table: (ours, torchvision's) `values` and their ratio (None where one is missing)."""
    ours, tv = values
    ratio = ours / tv if ours is not None and tv not in (None, 0) else None
    return {"device": device.type, "precision": precision, "metric": metric, "unit": unit, "better": better,
            "ours": ours, "torchvision": tv, "ratio": ratio}
