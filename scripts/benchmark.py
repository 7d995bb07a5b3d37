"""Speed and memory of fpn's FasterRCNNFPN next to torchvision's Faster R-CNN: same weights, same inputs, one run.

    python scripts/benchmark.py                                # CPU (+ CUDA when present), fp32, 800x1333 inputs
    python scripts/benchmark.py --amp --json runs/benchmark.json    # + bf16 autocast (CPU: also channels_last)
    python scripts/benchmark.py --profile                      # + where the time goes (stages, top operators)
    python scripts/benchmark.py --deploy                       # + every inference path, vs torchvision's best
    python scripts/benchmark.py --quick --json /tmp/b.json     # 256x320, batch 2, one repeat: a smoke test

The torchvision model is seeded random and built as `fasterrcnn_resnet50_fpn(weights="COCO_V1")` builds it
(FrozenBatchNorm2d, stem and layer1 frozen) - which is what `FasterRCNNFPN.from_torchvision` builds; with weights=None
torchvision would switch to trainable BatchNorm2d in every layer instead. Ours is
`FasterRCNNFPN.from_torchvision(tv_model.state_dict())`. Ten classifier biases are raised so that each RoI scores
~0.07 for those classes: detections pass the 0.05 threshold and NMS works on ~10 boxes per RoI, as with a trained
model on a busy image (both models return 100 detections per image; the table shows it).

Measured, per device and precision: inference latency at batch 1, throughput at batch 8, one training step
(forward + backward + SGD step) at batch 2 with a few boxes per image, and the peak memory of inference and of
the step. Each figure is the median of `--repeats` runs after `--warmup` runs, ours and torchvision's
interleaved so load from other processes hits both alike. Peak memory, taken in the same runs: CUDA
`torch.cuda.max_memory_allocated` above what was allocated before the call; CPU the growth of the resident set
(Linux: `VmHWM` of /proc/self/status, reset through /proc/self/clear_refs, after glibc's `malloc_trim`) above
the resident size before the call.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Tuple

import torch

from fpn import FasterRCNNFPN
from fpn.deploy.inference import cpu_has_native_bf16, optimize_for_inference

try:  # the reference measured against; the "test" extra installs it, the main-job install does not
    import torchvision
except (ImportError, RuntimeError) as error:  # RuntimeError: a torchvision built for another torch
    torchvision, MISSING_REFERENCE = None, error


@dataclass
class Settings:
    height: int = 800
    width: int = 1333
    throughput_batch: int = 8
    train_batch: int = 2
    boxes_per_image: int = 4
    warmup: int = 1
    repeats: int = 3
    seed: int = 0


QUICK = Settings(height=256, width=320, throughput_batch=2, train_batch=2, boxes_per_image=3, warmup=0, repeats=1)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_models(settings: Settings):
    """(ours, torchvision's) in eval mode on the CPU, with identical seeded random weights."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(settings.seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    size = {"min_size": min(settings.height, settings.width), "max_size": max(settings.height, settings.width)}
    tv = FasterRCNN(backbone, num_classes=91, **size)
    with torch.no_grad():  # ten classes at +3: softmax ~ e^3 / (10 e^3 + 81) ~ 0.07 each, above 0.05
        tv.roi_heads.box_predictor.cls_score.bias[1:11] = 3.0
    ours = FasterRCNNFPN.from_torchvision(tv.state_dict())
    ours.config.input.min_size = size["min_size"]  # inputs are used at their own size by both models
    ours.config.input.max_size = size["max_size"]
    ours.config.input.train_min_sizes = (size["min_size"],)
    return ours.eval(), tv.eval()


def make_batch(settings: Settings, n: int, device: torch.device, offset: int = 0):
    """n seeded random images (3, H, W) in [0, 1] and targets with `boxes_per_image` boxes each."""
    g = torch.Generator().manual_seed(settings.seed + 1000 + offset)
    h, w, k = settings.height, settings.width, settings.boxes_per_image
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.1 + 0.2 * torch.rand(k, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], dim=1)  # (k, 4) xyxy absolute pixels, inside the image
        labels = torch.randint(1, 91, (k,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pair(fn_ours, fn_tv, device: torch.device, warmup: int, repeats: int):
    """Median seconds and median peak memory (MiB) of each function; runs interleaved (ours, torchvision, ours,
    ...) after `warmup` untimed rounds, so load from other processes hits both alike."""
    seconds, memory = ([], []), ([], [])
    for i in range(warmup + repeats):
        for k, fn in enumerate((fn_ours, fn_tv)):
            elapsed, peak = _timed_with_peak(fn, device)
            if i >= warmup:
                seconds[k].append(elapsed)
                memory[k].append(peak)
    return tuple(statistics.median(s) for s in seconds), tuple(_median_or_none(m) for m in memory)


def _median_or_none(values):
    return None if any(v is None for v in values) else statistics.median(values)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # "5" resets VmHWM to the current resident size (Linux >= 4.0)
        return True
    except OSError:
        return False


def _timed_with_peak(fn, device: torch.device):
    """(seconds, MiB the call needed above what was held before it, or None where that cannot be measured)."""
    gc.collect()
    rss = device.type == "cpu" and os.path.exists("/proc/self/status")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif rss:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is live
        base = _status_kib("VmRSS")
        rss = _reset_peak_rss()
    start = time.perf_counter()
    fn()
    _sync(device)
    elapsed = time.perf_counter() - start
    if device.type == "cuda":
        return elapsed, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return elapsed, (_status_kib("VmHWM") - base) / 1024 if rss else None


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


def memory_formats(ours, device: torch.device, precision: str):
    """(ours, torchvision's) weight memory formats, always the same for both (like for like): channels-last on the
    CPU (oneDNN's fast layout, in fp32 as in bf16) and where our config asks for it, NCHW otherwise."""
    nhwc = device.type == "cpu" or ours.config.channels_last
    layout = torch.channels_last if nhwc else torch.contiguous_format
    return layout, layout


def bench_stage(ours, tv, device, precision, settings):
    """All measurements of one (device, precision): result rows and the detection counts."""
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
    train_images, targets = make_batch(settings, settings.train_batch, device, offset=2)
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
    return [_row(device, precision, *row) for row in rows], counts


def _row(device, precision, metric, unit, better, values):
    ours, tv = values
    ratio = ours / tv if ours is not None and tv not in (None, 0) else None
    return {"device": device.type, "precision": precision, "metric": metric, "unit": unit, "better": better,
            "ours": ours, "torchvision": tv, "ratio": ratio}


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
    layout = torch.channels_last if device.type == "cpu" or ours.config.channels_last else torch.contiguous_format
    for model in (ours, tv):
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
                _sync(device)
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


def deploy_markdown(rows: List[dict], batch: int) -> str:
    lines = ["| device | mode | latency, batch 1 (ms) | / best torchvision | throughput, batch "
             f"{batch} (img/s) | / best torchvision |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['device']} | {row['mode']} | {_fmt(row['latency_ms'])} | "
                     f"{row['latency_vs_best_torchvision']:.2f} | {_fmt(row['throughput_img_s'])} | "
                     f"{row['throughput_vs_best_torchvision']:.2f} |")
    return "\n".join(lines)


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


def markdown(report: dict) -> str:
    info = report["machine"]
    lines = [
        f"Machine: {info['cpu']}, {info['cpu_cores']} cores ({info['torch_threads']} torch threads)"
        + (f", GPU {info['gpu']}" if "gpu" in info else "")
        + f"; torch {info['torch']}, torchvision {info['torchvision']}. Inputs {report['settings']['height']}x"
        f"{report['settings']['width']}, median of {report['settings']['repeats']} after "
        f"{report['settings']['warmup']} warm-up.",
        "",
        "| device | precision | metric | ours | torchvision | ours / torchvision |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in report["results"]:
        ours, tv, ratio = (_fmt(row[k]) for k in ("ours", "torchvision", "ratio"))
        lines.append(f"| {row['device']} | {row['precision']} | {row['metric']} ({row['unit']}, "
                     f"{row['better']} is better) | {ours} | {tv} | {ratio} |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark fpn's FasterRCNNFPN against torchvision's.")
    parser.add_argument("--quick", action="store_true", help="256x320 inputs, batch 2, one repeat (a smoke test)")
    parser.add_argument("--amp", action="store_true", help="also bf16 autocast (CPU: with channels_last)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: the CPU, and CUDA when present")
    parser.add_argument("--size", default=None, help="input size HxW, e.g. 600x1000 (default 800x1333; quick 256x320)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before them")
    parser.add_argument("--profile", action="store_true", help="also break CPU inference time down")
    parser.add_argument("--deploy", action="store_true",
                        help="also every inference path (torchvision's and ours in each precision, our optimized "
                             "model, ONNX under onnxruntime), latency and throughput as ratios to torchvision's "
                             "best")
    parser.add_argument("--no-onnx", action="store_true",
                        help="--deploy without the ONNX row (its export takes a minute or more on 2 cores)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if torchvision is None:
        print(f"benchmark.py: error: torchvision, the reference this benchmark compares against, cannot be imported "
              f'({MISSING_REFERENCE}); install it: pip install -c constraints.txt -e ".[test]"', file=sys.stderr)
        return 2
    settings = QUICK if args.quick else Settings()
    if args.size is not None:
        try:
            settings.height, settings.width = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            parser.error(f"--size must look like 800x1333, got {args.size!r}")
    settings.repeats = args.repeats if args.repeats is not None else settings.repeats
    settings.warmup = args.warmup if args.warmup is not None else settings.warmup
    if settings.repeats < 1 or settings.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {settings.repeats} and {settings.warmup}")
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        parser.error("--device cuda: CUDA is not available")
    ours, tv = build_models(settings)
    report = {"machine": machine_info(), "settings": asdict(settings), "results": [], "detections": [],
              "memory_formats": []}
    for device in devices:
        for precision in ("fp32", "bf16") if args.amp else ("fp32",):
            print(f"measuring {device.type} {precision} ...", file=sys.stderr, flush=True)
            rows, counts = bench_stage(ours, tv, device, precision, settings)
            report["results"] += rows
            formats = ["channels_last" if f == torch.channels_last else "NCHW"
                       for f in memory_formats(ours, device, precision)]
            report["detections"].append({"device": device.type, "precision": precision, **counts})
            report["memory_formats"].append({"device": device.type, "precision": precision,
                                             "ours": formats[0], "torchvision": formats[1]})
    if args.deploy:
        report["deploy"] = {"results": [], "skipped": []}
        for device in devices:
            print(f"measuring the inference paths on {device.type} ...", file=sys.stderr, flush=True)
            modes, skipped = inference_modes(ours, tv, device, onnx=not args.no_onnx)
            report["deploy"]["results"] += measure_modes(modes, settings, device)
            report["deploy"]["skipped"] += [f"{device.type}: {line}" for line in skipped]
    if args.profile:
        report["profile"] = profile(ours, tv, settings)
    print(markdown(report))
    if args.deploy:
        print("\n" + deploy_markdown(report["deploy"]["results"], settings.throughput_batch))
        for line in report["deploy"]["skipped"]:
            print(f"not measured: {line}")
    for counts, formats in zip(report["detections"], report["memory_formats"]):
        print(f"{counts['device']} {counts['precision']}: detections on the batch-1 image: ours {counts['ours']}, "
              f"torchvision {counts['torchvision']}; memory format: ours {formats['ours']}, "
              f"torchvision {formats['torchvision']}")
    for name, prof in report.get("profile", {}).items():
        print(f"\n{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in prof["stages_ms"].items()))
        print(prof["top_ops"])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
