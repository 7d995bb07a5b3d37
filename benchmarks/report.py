"""The benchmarks' reports: the machine the detector benchmark ran on, its Markdown tables and the lines printed
after them; the JSON file either benchmark writes."""
from __future__ import annotations

import contextlib
import json
import os
import platform
from typing import List

import torch

from benchmarks.reference import torchvision


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": getattr(torchvision, "__version__", None),  # None: not installed
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


ARCH_NAMES = {"mask_rcnn": "MaskRCNNFPN next to torchvision's maskrcnn_resnet50_fpn"}


def _machine_line(info: dict) -> str:
    return (f"Machine: {info['cpu']}, {info['cpu_cores']} cores ({info['torch_threads']} torch threads)"
            + (f", GPU {info['gpu']}" if "gpu" in info else "")
            + f"; torch {info['torch']}, torchvision {info['torchvision']}.")


def markdown(report: dict) -> str:
    settings = report["settings"]
    title = ((f"{ARCH_NAMES[report['arch']]}. " if "arch" in report else "") + _machine_line(report["machine"])
             + f" Inputs {settings['height']}x{settings['width']}, median of {settings['repeats']} after "
             f"{settings['warmup']} warm-up.")
    return _ratio_table(title, ("precision", "precision"), report["results"])


def mask_memory_markdown(report: dict) -> str:
    """--mask-memory's table: a row per (images, metric), ours, torchvision's and the ratio."""
    section = report["mask_memory"]
    settings = section["settings"]
    title = (f"Mask R-CNN at COCO scale: MaskRCNNFPN next to torchvision's maskrcnn_resnet50_fpn, training in fp32, "
             f"{settings['positives']} positives per image in the mask-target step. " + _machine_line(report["machine"])
             + f" Median of {settings['repeats']} after {settings['warmup']} warm-up. Peak memory: growth of the "
             "resident set; peak tensor memory: the profiler's allocation events (CUDA: both max_memory_allocated).")
    return _ratio_table(title, ("images (original -> resized)", "images"), section["results"])


def _ratio_table(title: str, column: tuple, rows: List[dict]) -> str:
    """`title`, then a Markdown table of result rows: device, the (header, row key) `column`, metric, ours,
    torchvision's and the ratio."""
    lines = [title, "", f"| device | {column[0]} | metric | ours | torchvision | ours / torchvision |",
             "|---|---|---|---:|---:|---:|"]
    for row in rows:
        ours, tv, ratio = (_fmt(row[k]) for k in ("ours", "torchvision", "ratio"))
        lines.append(f"| {row['device']} | {row[column[1]]} | {row['metric']} ({row['unit']}, "
                     f"{row['better']} is better) | {ours} | {tv} | {ratio} |")
    return "\n".join(lines)


def print_mask_memory(report: dict) -> None:
    """--mask-memory's report on stdout: its table, then how far apart the two models' mask targets are."""
    print(mask_memory_markdown(report))
    for check in report["mask_memory"]["targets"]:
        print(f"{check['device']} {check['images']}: mask targets of {check['positives']} positives, ours within "
              f"{check['target_max_abs_difference']:.1e} of torchvision's")


def deploy_markdown(rows: List[dict], batch: int) -> str:
    lines = ["| device | mode | latency, batch 1 (ms) | / best torchvision | throughput, batch "
             f"{batch} (img/s) | / best torchvision |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['device']} | {row['mode']} | {_fmt(row['latency_ms'])} | "
                     f"{row['latency_vs_best_torchvision']:.2f} | {_fmt(row['throughput_img_s'])} | "
                     f"{row['throughput_vs_best_torchvision']:.2f} |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def print_report(report: dict, throughput_batch: int) -> None:
    """The whole report on stdout: the results table, --deploy's table and what it could not measure, the
    detection counts and memory formats of each (device, precision), and --profile's stages and operators."""
    print(markdown(report))
    if "deploy" in report:
        print("\n" + deploy_markdown(report["deploy"]["results"], throughput_batch))
        for line in report["deploy"]["skipped"]:
            print(f"not measured: {line}")
    for counts, formats in zip(report["detections"], report["memory_formats"]):
        print(f"{counts['device']} {counts['precision']}: detections on the batch-1 image: ours {counts['ours']}, "
              f"torchvision {counts['torchvision']}; memory format: ours {formats['ours']}, "
              f"torchvision {formats['torchvision']}")
    for name, prof in report.get("profile", {}).items():
        print(f"\n{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in prof["stages_ms"].items()))
        print(prof["top_ops"])


def write_json(path: str, content: dict, indent: int) -> None:
    """Write `content` to the JSON file `path`, making its folder first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=indent)
