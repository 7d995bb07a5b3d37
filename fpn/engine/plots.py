"""Plot a training run's metrics.jsonl: loss terms, learning rate and evaluation APs against the iteration.

The command line is `python scripts/plot_metrics.py runs/demo/metrics.jsonl [--output-dir plots/]`
(fpn/tools/plot_metrics.py).

metrics.jsonl has one JSON object per line, of two kinds, in any order:
- training lines: `iter`, `lr` and the losses `loss_objectness`, `loss_rpn_box_reg`, `loss_classifier`,
  `loss_box_reg` (Faster R-CNN) or `classification`, `bbox_regression`, `bbox_ctrness` (FCOS), `loss` (their
  sum); any other key starting with `loss` is plotted too;
- evaluation lines: `iter` and COCO's `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl` (in [0, 1] or in %), a Mask
  R-CNN's `mask_AP`, `mask_AP50`, ... too, or the proposal recall of an RPN-only run, `AR100`, `AR1k`, `AR_s`,
  `AR_m`, `AR_l` (ar.png); and the validation loss, `val_<term>` of each training loss term and `val_loss`.
Lines without `iter` (e.g. a run summary) are ignored, and so are values that are not numbers (e.g. a nested
per-class table). In losses.png each validation loss is drawn in its training loss's colour, dashed, with a
marker at each evaluation. Writes `losses.png`, `lr.png` and `ap.png` (each only when
the file has that data). With mask AP, ap.png has two panels side by side on one AP axis, boxes left and masks
right, each metric in the same colour in both: twelve lines on one plot would not read, and two files would not
show the gap between box and mask AP at a glance. Needs matplotlib: `pip install -e ".[viz]"`. From Python (e.g. at
the end of training):

    from fpn.engine.plots import plot_metrics
    paths = plot_metrics("runs/demo/metrics.jsonl", "runs/demo")
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

LOSS_KEYS = ("loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",  # Faster R-CNN
             "classification", "bbox_regression", "bbox_ctrness")  # FCOS
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MASK_AP_KEYS = tuple(f"mask_{key}" for key in AP_KEYS)  # a Mask R-CNN run's mask AP
AR_KEYS = ("AR100", "AR1k", "AR_s", "AR_m", "AR_l")  # proposal recall of an RPN-only run
Series = Dict[str, Tuple[List[float], List[float]]]  # key -> (iterations, values), sorted by iteration
Panel = Tuple[str, str, Series]  # (title, y label, series) of one plot of a figure


def read_metrics(metrics_file) -> List[dict]:
    """The JSON objects of a metrics.jsonl that have an `iter`; blank lines and lines without `iter` are skipped.

    Raises:
        FileNotFoundError: naming the file.
        ValueError: a line that is not a JSON object, or an `iter` that is not a number (naming file and line).
    """
    path = Path(metrics_file)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}): {line[:80]!r}") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        if "iter" not in row:
            continue
        if not isinstance(row["iter"], (int, float)) or isinstance(row["iter"], bool):
            raise ValueError(f"{path}:{number}: 'iter' must be a number, got {row['iter']!r}")
        rows.append(row)
    return rows


def collect_series(rows: Sequence[dict], keys: Sequence[str]) -> Series:
    """Per key, the (iterations, values) of the rows having that key with a number, sorted by iteration.

    Keys no row has are left out; the order of `keys` is kept. Non-finite values (a diverged loss) are kept as
    they are (matplotlib leaves a gap at NaN).
    """
    series: Series = {}
    for key in keys:
        points = sorted(
            (float(row["iter"]), float(row[key]))
            for row in rows
            if isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
        )
        if points:
            series[key] = ([p[0] for p in points], [p[1] for p in points])
    return series


def loss_keys(rows: Sequence[dict]) -> List[str]:
    """The loss keys to plot: the known ones in their order, then any other `loss*` key, sorted."""
    others = sorted({k for row in rows for k in row if k.startswith("loss") and k not in LOSS_KEYS})
    return list(LOSS_KEYS) + others


def validation_keys(rows: Sequence[dict]) -> List[str]:
    """The validation counterparts (`val_<key>`) of the loss keys, in `loss_keys` order."""
    return [f"val_{key}" for key in loss_keys(rows)]


def plot_metrics(metrics_file, output_dir) -> List[Path]:
    """Write losses.png, lr.png and ap.png (those with data; ap.png with a mask AP panel when the log has mask AP)
    for a metrics.jsonl.

    Args:
        metrics_file: path of the run's metrics.jsonl.
        output_dir: folder for the PNGs, created if needed.

    Returns:
        The paths written, in the order losses, lr, ap.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
        ValueError: a malformed line, or no line with anything to plot.
    """
    rows = read_metrics(metrics_file)
    figure_class = _figure_class()
    output = Path(output_dir)
    box_ap, mask_ap = collect_series(rows, AP_KEYS), collect_series(rows, MASK_AP_KEYS)
    losses = collect_series(rows, loss_keys(rows) + validation_keys(rows))
    validated = any(key.startswith("val_") for key in losses)
    losses_title = "Training (solid) and validation (dashed) losses" if validated else "Training losses"
    ap_panels = [("Boxes (COCO AP)", "AP", box_ap), ("Masks (COCO mask AP)", "mask AP", unprefixed(mask_ap))] \
        if mask_ap else [("Evaluation (COCO AP)", "AP", box_ap)]
    plots = (  # (file, [(title, y label, series) of each panel], style)
        ("losses.png", [(losses_title, "loss", losses)], "-"),
        ("lr.png", [("Learning rate", "learning rate", collect_series(rows, ("lr",)))], "-"),
        ("ap.png", ap_panels, "o-"),
        ("ar.png", [("Proposal recall (COCO AR)", "AR", collect_series(rows, AR_KEYS))], "o-"),
    )
    if not any(series for _, panels, _ in plots for _, _, series in panels):
        raise ValueError(f"{metrics_file}: no training (loss*, lr) or evaluation (AP*, AR*) values with an 'iter'")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, panels, style in plots:
        panels = [panel for panel in panels if panel[2]]
        if panels:
            written.append(_save_plot(figure_class, output / name, panels, style))
    return written


def unprefixed(series: Series) -> Series:
    """The mask AP series under the box AP's names (`mask_AP50` -> `AP50`): a mask panel's legend and colours
    match the box panel's."""
    return {key[len("mask_"):]: values for key, values in series.items()}


def _save_plot(figure_class, path: Path, panels: Sequence[Panel], style: str) -> Path:
    figure = figure_class(figsize=(8 if len(panels) == 1 else 14, 4.5), dpi=100)
    make_panels(figure, panels, style).savefig(path, pil_kwargs={"compress_level": 1})  # ~0.1 s less than 6
    return path


def make_plot(figure, title: str, ylabel: str, series: Series, style: str):
    """Draw `series` against the iteration on `figure` (a matplotlib Figure), one panel, and return it."""
    return make_panels(figure, [(title, ylabel, series)], style)


def make_panels(figure, panels: Sequence[Panel], style: str):
    """Draw each (title, y label, series) panel side by side on `figure` (`draw_series`), sharing the y axis, and
    return the figure."""
    shared = None  # the first panel's axes
    for index, (title, ylabel, series) in enumerate(panels, start=1):
        axes = draw_series(figure.add_subplot(1, len(panels), index, sharey=shared), title, ylabel, series, style)
        shared = shared or axes
    # fixed margins in inches (tick labels and titles have bounded sizes): tight_layout's extra drawing pass cost
    # ~0.1 s of each picture, and the trainer draws several per run
    width, height = figure.get_size_inches()
    figure.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.4 / height,
                           wspace=0.6 * len(panels) / width)
    return figure


def draw_series(axes, title: str, ylabel: str, series: Series, style: str):
    """Draw `series` against the iteration on `axes` (a matplotlib Axes) and return it.

    `style` is a matplotlib format: "-" for lines (training lines, logged every few iterations), "o-" for lines
    with a marker on every point (evaluations, a few per run: even a run evaluated once shows its dot). A plot
    with markers or more than one series has a legend, and the last "AP" point is labelled "<ylabel> <value>".
    A `val_<key>` series (a validation loss) is drawn dashed with markers in `<key>`'s colour (drawn first).
    The iteration axis starts at 0, so a single evaluation sits where it happened in the run.
    """
    colours = {}  # key -> the colour its line got, for its validation counterpart
    for key, (iters, values) in series.items():
        # The total loss and the AP stand out; the other terms are thinner.
        width = 2.0 if key in ("loss", "AP", "val_loss") else 1.2
        headline = key == "AP"  # drawn larger and on top
        paired = key.startswith("val_") and key[len("val_"):] in colours
        extra = {"color": colours[key[len("val_"):]]} if paired else {}
        line, = axes.plot(iters, values, "o--" if key.startswith("val_") else style, label=key, linewidth=width,
                          markersize=6 if headline else 4, zorder=3 if headline else 2, **extra)
        colours[key] = line.get_color()
    finite = [v for _, values in series.values() for v in values if math.isfinite(v)]
    if ylabel == "loss" and finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        axes.set_yscale("log")  # losses spanning decades read better on a log axis
    if "AP" in series and math.isfinite(series["AP"][1][-1]):
        last_iter, last_ap = series["AP"][0][-1], series["AP"][1][-1]
        axes.annotate(f"{ylabel} {last_ap:.3f}", (last_iter, last_ap), textcoords="offset points", xytext=(-8, 8),
                      ha="right")
    last = max(iters[-1] for iters, _ in series.values())
    axes.set_xlim(0, last * 1.05 if last > 0 else 1)
    axes.set(title=title, xlabel="iteration", ylabel=ylabel)
    axes.grid(True, alpha=0.3)
    if len(series) > 1 or "o" in style:
        crowded = len(series) > 6  # training and validation losses: two short columns cover less of the lines
        axes.legend(loc="best", ncol=2 if crowded else 1, fontsize="small" if crowded else None)
    return axes


def _figure_class():
    """matplotlib's Figure, imported only when plotting (matplotlib is the optional "viz" extra).

    The object-oriented Figure renders with Agg by itself, so no pyplot state or backend switch is involved.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'plotting metrics needs matplotlib, which is not installed: pip install -e ".[viz]" '
            "(or pip install matplotlib)"
        ) from err
    return Figure
