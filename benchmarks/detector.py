"""Speed and memory of fpn's FasterRCNNFPN (or MaskRCNNFPN, --arch mask_rcnn) next to torchvision's: same weights,
same inputs, one run.

The command line of scripts/benchmark.py. The models and inputs: benchmarks/models.py; what is measured and how:
benchmarks/side_by_side.py and benchmarks/measure.py; --deploy: benchmarks/deploy.py; --profile:
benchmarks/profiling.py; --mask-memory (a run of its own): benchmarks/mask_memory.py; --tiling (a run of its own):
benchmarks/tiling.py; --learning (a run of its own, the CPU demo's AP per minute of training, this release's recipe
against the previous one's; needs no torchvision): benchmarks/learning.py; the printed report and the
JSON file: benchmarks/report.py. The JSON of an --arch mask_rcnn run says "arch": "mask_rcnn" (no "arch": Faster
R-CNN, as before the flag).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace

import torch

from benchmarks.deploy import inference_modes, measure_modes
from benchmarks.learning import (
    DEFAULT_BUDGETS_MIN, DEFAULT_EVAL_EVERY, PREVIOUS_RECIPES, QUICK_BUDGETS_MIN, QUICK_EVAL_EVERY, RUNS, run_learning,
)
from benchmarks.mask_memory import QUICK_MASK_MEMORY, MaskMemorySettings, measure_mask_memory
from benchmarks.models import ARCHS, QUICK, Settings, build_models, memory_formats
from benchmarks.profiling import profile
from benchmarks.reference import missing_reference_message, torchvision
from benchmarks.report import machine_info, print_mask_memory, print_report, write_json
from benchmarks.side_by_side import bench_stage
from benchmarks.tiling import QUICK_TILING, TilingSettings, run_tiling


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark fpn's FasterRCNNFPN or MaskRCNNFPN against torchvision's.")
    parser.add_argument("--quick", action="store_true", help="256x320 inputs, batch 2, one repeat (a smoke test)")
    parser.add_argument("--arch", choices=ARCHS, default="faster_rcnn",
                        help="the detectors compared: FasterRCNNFPN and fasterrcnn_resnet50_fpn, or MaskRCNNFPN and "
                             "maskrcnn_resnet50_fpn (training targets with instance masks)")
    parser.add_argument("--mask-memory", action="store_true",
                        help="instead: Mask R-CNN's training step and mask targets at COCO scale (batch 2 of 50 "
                             "instances, originals 480x640 and 800x1333 resized to 800 x at most 1333): time and "
                             "peak memory (--quick: 96x128, 10 instances)")
    parser.add_argument("--tiling", action="store_true",
                        help="instead: recall of small objects in large images, whole-image against tiled inference "
                             "(a detector trained here on CPU for a few minutes), see benchmarks/tiling.py")
    parser.add_argument("--learning", action="store_true",
                        help="instead: the CPU demo's AP per minute of training, this release's recipe against the "
                             "previous release's, each trained here by scripts/train.py (--quick: 20 iterations "
                             "each), see benchmarks/learning.py; needs no torchvision")
    parser.add_argument("--preset", choices=tuple(PREVIOUS_RECIPES), default=None,
                        help="--learning: the demo preset compared (default cpu-demo)")
    parser.add_argument("--budgets", default=None,
                        help="--learning: training-time budgets in minutes, e.g. 2,4,8 (the default; quick "
                             f"{','.join(f'{b:g}' for b in QUICK_BUDGETS_MIN)}); fractions allowed")
    parser.add_argument("--eval-every", type=int, default=None,
                        help=f"--learning: iterations between the evaluations of the AP curve (default "
                             f"{DEFAULT_EVAL_EVERY}; quick {QUICK_EVAL_EVERY})")
    parser.add_argument("--output-dir", default=None,
                        help="--learning: where the runs (its new/ and previous/ emptied first), their logs and "
                             "the synthetic set go (default runs/learning)")
    parser.add_argument("--only", choices=RUNS, default=None,
                        help="--learning: train this recipe only; the other's results are read from its last run "
                             "in --output-dir (same preset, --eval-every and --quick), when there is one")
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
    return parser


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """The workload sizes: --quick's or the default ones, with --size, --repeats and --warmup applied."""
    settings = replace(QUICK) if args.quick else Settings()  # a copy: QUICK stays as it is
    if args.size is not None:
        try:
            settings.height, settings.width = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            parser.error(f"--size must look like 800x1333, got {args.size!r}")
    settings.repeats = args.repeats if args.repeats is not None else settings.repeats
    settings.warmup = args.warmup if args.warmup is not None else settings.warmup
    if settings.repeats < 1 or settings.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {settings.repeats} and {settings.warmup}")
    return settings


def mask_memory_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> MaskMemorySettings:
    """--mask-memory's sizes: --quick's or the default ones, with --repeats and --warmup applied."""
    unused = [flag for flag, value in (("--arch", args.arch != "faster_rcnn"), ("--amp", args.amp),
                                       ("--size", args.size is not None), ("--profile", args.profile),
                                       ("--deploy", args.deploy), ("--no-onnx", args.no_onnx)) if value]
    if unused:
        parser.error(f"--mask-memory measures Mask R-CNN in fp32 at its own sizes; drop {', '.join(unused)}")
    settings = replace(QUICK_MASK_MEMORY) if args.quick else MaskMemorySettings()
    settings.repeats = args.repeats if args.repeats is not None else settings.repeats
    settings.warmup = args.warmup if args.warmup is not None else settings.warmup
    if settings.repeats < 1 or settings.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {settings.repeats} and {settings.warmup}")
    return settings


def learning(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """--learning: its flags checked (and the detector benchmark's refused), then the run."""
    unused = [flag for flag, value in (("--arch", args.arch != "faster_rcnn"), ("--amp", args.amp),
                                       ("--size", args.size is not None), ("--profile", args.profile),
                                       ("--deploy", args.deploy), ("--no-onnx", args.no_onnx),
                                       ("--device", args.device != "all"), ("--repeats", args.repeats is not None),
                                       ("--warmup", args.warmup is not None), ("--mask-memory", args.mask_memory),
                                       ("--tiling", args.tiling)) if value]
    if unused:
        parser.error(f"--learning trains the demo recipes as they are; drop {', '.join(unused)}")
    if args.budgets is None:
        budgets = QUICK_BUDGETS_MIN if args.quick else DEFAULT_BUDGETS_MIN
    else:
        try:
            budgets = tuple(float(v) for v in args.budgets.split(","))
        except ValueError:
            budgets = ()
        if not budgets or not all(b > 0 for b in budgets):  # nan too
            parser.error(f"--budgets must be minutes > 0, e.g. 2,4,8, got {args.budgets!r}")
    eval_every = args.eval_every if args.eval_every is not None else (
        QUICK_EVAL_EVERY if args.quick else DEFAULT_EVAL_EVERY)
    if eval_every < 1:
        parser.error(f"--eval-every must be >= 1 (the AP curve's points), got {eval_every}")
    return run_learning(args.preset or "cpu-demo", budgets, eval_every, args.output_dir or "runs/learning",
                        args.only, args.quick, args.json)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.learning:  # trains with scripts/train.py alone: no torchvision needed
        return learning(args, parser)
    given = [flag for flag, value in (("--preset", args.preset), ("--budgets", args.budgets),
                                      ("--eval-every", args.eval_every), ("--output-dir", args.output_dir),
                                      ("--only", args.only)) if value is not None]
    if given:
        parser.error(f"{', '.join(given)}: flag(s) of --learning, which is not given")
    if torchvision is None:
        print(missing_reference_message("benchmark.py"), file=sys.stderr)
        return 2
    if args.tiling:
        return run_tiling(replace(QUICK_TILING) if args.quick else TilingSettings(), args.json)
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        parser.error("--device cuda: CUDA is not available")
    settings = mask_memory_settings(args, parser) if args.mask_memory else settings_from(args, parser)
    # Seeded random weights can drive float32 into denormals, which x86 computes ~10x slower; trained weights rarely
    # do. Flushed to zero here, for both models alike.
    torch.set_flush_denormal(True)
    if args.mask_memory:
        return run_mask_memory(settings, devices, args.json)
    ours, tv = build_models(settings, args.arch)
    report = {"machine": machine_info(), "settings": asdict(settings), "results": [], "detections": [],
              "memory_formats": []}
    if args.arch != "faster_rcnn":
        report["arch"] = args.arch
    for device in devices:
        for precision in ("fp32", "bf16") if args.amp else ("fp32",):
            print(f"measuring {device.type} {precision} ...", file=sys.stderr, flush=True)
            rows, counts = bench_stage(ours, tv, device, precision, settings, masks=args.arch == "mask_rcnn")
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
    print_report(report, settings.throughput_batch)
    if args.json:
        write_json(args.json, report, indent=2)
    return 0


def run_mask_memory(settings: MaskMemorySettings, devices, json_path) -> int:
    """--mask-memory: its rows and target checks on each device, printed and written to json_path."""
    section = {"settings": asdict(settings), "results": [], "targets": []}
    for device in devices:
        rows, checks = measure_mask_memory(settings, device)
        section["results"] += rows
        section["targets"] += checks
    report = {"machine": machine_info(), "mask_memory": section}
    print_mask_memory(report)
    if json_path:
        write_json(json_path, report, indent=2)
    return 0
