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
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


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
