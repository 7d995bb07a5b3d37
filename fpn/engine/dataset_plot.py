"""dataset.png: the picture of a `DatasetReport` (fpn/data/statistics.py), what `python -m fpn.data.report` and the
trainer write beside the numbers. Five panels: instances per class, box size at input scale (log x, the anchor
sizes marked), objects per image, pyramid level per class (stacked) and best anchor IoU (the RPN's positive and
negative thresholds marked; FCOS has no anchors and says so). Needs matplotlib: `pip install -e ".[viz]"`.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from fpn.data.statistics import DatasetReport
from fpn.engine.eval_plots import FAST_PNG

MAX_CLASSES_SHOWN = 40  # the class panels show the most frequent classes; more would not read
REPORT_FILE, PLOT_FILE = "dataset_report.json", "dataset.png"


def write_dataset_report(report: DatasetReport, output_dir) -> Tuple[List[Path], Optional[str]]:
    """`output_dir`/dataset_report.json (atomically: a reader never sees half a file) and dataset.png; both are left
    as they are when they already show this report (a resumed run: the picture is drawn once per data set).

    Returns:
        (the paths, None), or without matplotlib (the JSON alone, the one-line hint of what to install).
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_json(), indent=1) + "\n"
    json_path, picture = output / REPORT_FILE, output / PLOT_FILE
    if picture.is_file() and json_path.is_file() and json_path.read_text(encoding="utf-8") == text:
        return [json_path, picture], None
    try:  # the picture first: a run stopped between the two finds the old JSON, and draws the picture again
        written, missing = [save_dataset_plot(report, picture)], None
    except ImportError as error:
        written, missing = [], str(error)
    temporary = output / f".{REPORT_FILE}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, json_path)
    return [json_path, *written], missing


def save_dataset_plot(report: DatasetReport, path) -> Path:
    """Draw `report` into the PNG file `path` (its folder must exist).

    Returns:
        the path written.
    Raises:
        ImportError: matplotlib is missing; the message is one line saying what to install.
    """
    figure = _figure_class()(figsize=(16, 9), dpi=100)
    grid = figure.subplots(2, 3)
    order = np.argsort(-np.asarray(report.instances_per_class), kind="stable")[:MAX_CLASSES_SHOWN]
    total = len(report.class_names)
    shown = f" ({len(order)} most frequent of {total})" if len(order) < total else ""
    names = [report.class_names[i] for i in order]
    _class_bars(grid[0, 0], names, np.asarray(report.instances_per_class)[order], f"instances per class{shown}")
    _box_sizes(grid[0, 1], report)
    counts = np.bincount(report.objects_per_image) if report.num_images else np.zeros(1, np.int64)
    grid[0, 2].bar(np.arange(len(counts)), counts, width=0.9, color="tab:blue")
    grid[0, 2].set(title="objects per image", xlabel="objects in the image", ylabel="images")
    _levels(grid[1, 0], names, report.level_counts[order], report.level_names, report.arch, shown)
    _best_iou(grid[1, 1], report)
    grid[1, 2].axis("off")
    grid[1, 2].text(0, 1, _summary(report), va="top", family="monospace", fontsize=8, transform=grid[1, 2].transAxes)
    # fixed margins: tight_layout's extra drawing pass was ~40% of the picture's time (it is drawn before every run)
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.12, top=0.95, wspace=0.25, hspace=0.45)
    path = Path(path)
    figure.savefig(path, pil_kwargs=FAST_PNG)
    return path


def _class_bars(axes, names, counts, title: str) -> None:
    axes.bar(np.arange(len(names)), counts, color="tab:blue")
    _class_ticks(axes, names)
    axes.set(title=title, ylabel="instances")


def _class_ticks(axes, names) -> None:
    axes.set_xticks(np.arange(len(names)))
    axes.set_xticklabels(names, rotation=90, fontsize=7 if len(names) > 20 else 9)


def _box_sizes(axes, report: DatasetReport) -> None:
    sizes = report.box_sizes[report.box_sizes > 0]
    low, high = (max(float(sizes.min()), 1.0), float(sizes.max())) if len(sizes) else (1.0, 1000.0)
    bins = np.geomspace(low / 1.05, high * 1.05, 40)
    axes.hist(sizes, bins=bins, color="tab:blue")
    axes.set_xscale("log")
    for i, size in enumerate(report.anchor_sizes):
        axes.axvline(size, color="tab:red", linestyle="--", linewidth=1, label="anchor sizes" if i == 0 else None)
    if report.anchor_sizes:
        axes.legend(loc="best")
    axes.set(title=f"box size at input scale (shorter side {report.input.min_size} px)", xlabel="sqrt(w h), px",
             ylabel="boxes")


def _levels(axes, names, counts, level_names, arch: str, shown: str) -> None:
    bottom = np.zeros(len(names))
    for j, level in enumerate(level_names):
        axes.bar(np.arange(len(names)), counts[:, j], bottom=bottom, label=level)
        bottom += counts[:, j]
    _class_ticks(axes, names)
    what = "FCOS level (size of interest)" if arch == "fcos" else "RoI level (Eq. 1)"
    axes.set(title=f"{what} per class{shown}", ylabel="boxes")
    axes.legend(loc="best", fontsize=8)


def _best_iou(axes, report: DatasetReport) -> None:
    if report.best_iou is None:
        axes.axis("off")
        axes.text(0.5, 0.5, "FCOS is anchor-free:\nno anchor IoU", ha="center", va="center", fontsize=12,
                  transform=axes.transAxes)
        return
    axes.hist(report.best_iou, bins=np.linspace(0, 1, 41), color="tab:blue")
    axes.axvline(report.fg_iou_thresh, color="tab:green", linestyle="--",
                 label=f"positive >= {report.fg_iou_thresh} ({report.count_below(report.fg_iou_thresh)} below)")
    axes.axvline(report.bg_iou_thresh, color="tab:red", linestyle="--",
                 label=f"negative < {report.bg_iou_thresh} ({report.count_below(report.bg_iou_thresh)} below)")
    axes.legend(loc="upper left", fontsize=8)
    axes.set(title="best anchor IoU of each box", xlabel="IoU", ylabel="boxes")


def _summary(report: DatasetReport) -> str:
    """The report's first lines (counts and sizes), wrapped to the panel."""
    lines = report.text().splitlines()[:4]
    return "\n".join(textwrap.fill(line, 60, subsequent_indent="  ") for line in lines)


def _figure_class():
    """matplotlib's Figure, imported only when plotting (matplotlib is the optional "viz" extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('the dataset plot needs matplotlib, which is not installed: pip install -e ".[viz]"') \
            from err
    return Figure
