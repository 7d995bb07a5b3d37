"""--deploy: every inference path - torchvision's and ours in each precision, our optimized model, ONNX under
onnxruntime - timed at batch 1 and batch N, as ratios to torchvision's best path."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch

from benchmarks.measure import sync
from benchmarks.models import Settings, make_batch, memory_formats
from fpn.deploy.inference import cpu_has_native_bf16, optimize_for_inference


@dataclass
class Mode:
    """One inference path measured by --deploy: `run(images)` runs it on a list of (3, H, W) images."""

    name: str
    run: Callable[[List[torch.Tensor]], object]
    torchvision: bool = False  # a torchvision mode: the best of these is the yardstick


def _eager(model, device: torch.device, precision: str):
    def run(images):
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            return model(images)
    return run


def inference_modes(ours, tv, device: torch.device, onnx: bool = True) -> Tuple[List[Mode], List[str]]:
    """The inference paths --deploy measures, like for like (both models channels-last, each precision the device
    runs well), and one line per path that cannot run here, saying why."""
    precisions = ["fp32", "bf16"] if device.type == "cuda" or cpu_has_native_bf16() else ["fp32"]
    for model, layout in zip((ours, tv), memory_formats(ours, device, "fp32")):
        model.to(device=device, memory_format=layout).eval()
    modes = [Mode(f"torchvision, {p}", _eager(tv, device, p), torchvision=True) for p in precisions]
    modes += [Mode(f"fpn, {p}", _eager(ours, device, p)) for p in precisions]
    skipped = []
    for p in precisions:
        fast = optimize_for_inference(ours, dtype=torch.bfloat16 if p == "bf16" else None)
        modes.append(Mode(f"fpn optimize_for_inference, {p}", _eager(fast, device, "fp32")))
    if device.type == "cpu" and not onnx:
        skipped.append("ONNX under onnxruntime: --no-onnx")
    elif device.type == "cpu":
        try:
            modes.append(onnx_mode(ours))
        except Exception as error:  # the export extra missing, or an export failure: report it as a row not run
            skipped.append(f"ONNX under onnxruntime: {str(error).splitlines()[0] if str(error) else error!r}")
    return modes, skipped


def onnx_mode(ours) -> Mode:
    """Our model exported by `fpn.deploy.export.export_onnx` (fp32, one image per call, resize and normalisation inside)
    and run by onnxruntime's CPU provider; a batch is a loop over its images."""
    import tempfile

    import onnxruntime

    from fpn.deploy.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="fpn_bench_") as folder:  # the session keeps the model in memory
        path = os.path.join(folder, "model.onnx")
        export_onnx(ours.to(memory_format=torch.contiguous_format), path)
        ours.to(memory_format=torch.channels_last)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(images):
        return [session.run(None, {"image": image.numpy()}) for image in images]

    return Mode("fpn ONNX, onnxruntime, fp32", run)


def measure_modes(modes: List[Mode], settings: Settings, device: torch.device) -> List[dict]:
    """Batch-1 latency and batch-N throughput of every mode, the modes interleaved in each round so that load from
    other processes hits all alike; ratios to the best torchvision mode (latency: lowest; throughput: highest)."""
    n = settings.throughput_batch
    workloads = {"latency": make_batch(settings, 1, device)[0], "throughput": make_batch(settings, n, device, 1)[0]}
    seconds = {(mode.name, kind): [] for mode in modes for kind in workloads}
    for kind, images in workloads.items():
        for i in range(settings.warmup + settings.repeats):
            for mode in modes:
                start = time.perf_counter()
                mode.run(images)
                sync(device)
                if i >= settings.warmup:
                    seconds[mode.name, kind].append(time.perf_counter() - start)
    latency = {m.name: 1000 * statistics.median(seconds[m.name, "latency"]) for m in modes}
    throughput = {m.name: n / statistics.median(seconds[m.name, "throughput"]) for m in modes}
    best_latency = min(latency[m.name] for m in modes if m.torchvision)
    best_throughput = max(throughput[m.name] for m in modes if m.torchvision)
    return [{"device": device.type, "mode": m.name, "latency_ms": latency[m.name],
             "latency_vs_best_torchvision": latency[m.name] / best_latency,
             "throughput_img_s": throughput[m.name],
             "throughput_vs_best_torchvision": throughput[m.name] / best_throughput} for m in modes]
