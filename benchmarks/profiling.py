"""--profile: where CPU inference time goes, per stage of the model and per operator."""
from __future__ import annotations

import statistics
import time

import torch

from benchmarks.models import Settings, make_batch, memory_formats


def stage_breakdown(model, images, repeats: int) -> dict:
    """Median milliseconds per top-level stage of an eval forward, timed by forward hooks on the model's children.

    Work done outside any child module (ours: resizing/normalising and postprocessing, which are functions;
    torchvision: its postprocessing) is reported as "outside submodules".
    """
    groups = {"backbone": "backbone+FPN", "neck": "backbone+FPN", "rpn": "RPN", "roi_heads": "RoI heads"}
    current, starts, handles = {}, {}, []

    def after(name: str, group: str) -> None:
        current[group] = current.get(group, 0.0) + time.perf_counter() - starts[name]

    for name, child in model.named_children():
        group = groups.get(name, name)
        handles.append(child.register_forward_pre_hook(
            lambda module, inputs, n=name: starts.__setitem__(n, time.perf_counter())))
        handles.append(child.register_forward_hook(lambda module, inputs, output, n=name, g=group: after(n, g)))
    runs = []
    try:
        with torch.no_grad():
            for _ in range(repeats):
                current.clear()
                start = time.perf_counter()
                model(images)
                total = time.perf_counter() - start
                runs.append({**current, "outside submodules": total - sum(current.values()), "total": total})
    finally:
        for handle in handles:
            handle.remove()
    return {key: 1000 * statistics.median(run[key] for run in runs) for key in runs[0]}


def profile(ours, tv, settings: Settings) -> dict:
    """Where CPU inference time goes at batch 1: per stage (ms) and the top operators by self CPU time."""
    device = torch.device("cpu")
    for model, formats in zip((ours, tv), memory_formats(ours, device, "fp32")):
        model.to(device=device, memory_format=formats).eval()
    one, _ = make_batch(settings, 1, device)
    report = {}
    for name, model in (("ours", ours), ("torchvision", tv)):
        stages = stage_breakdown(model, one, max(1, settings.repeats))
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(one)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        report[name] = {"stages_ms": stages, "top_ops": table}
    return report
