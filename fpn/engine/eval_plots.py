"""Where a detector fails, drawn after an evaluation: pr_curves.png (the precision-recall curve of each class) and
confusion.png (the confusion matrix at IoU 0.5, with its numbers in confusion.json).

Shape shorthand: T IoU thresholds, R recall points, K classes.

- pr_curves.png: two panels, IoU 0.5 and IoU 0.5:0.95 (the precision averaged over the T thresholds), recall on x,
  one line per class with ground truth (its AP50 or AP in the legend); with more than `MOST_CLASSES` classes, the
  most frequent ones (by ground-truth instances) and the mean of every class's curve ("mean", whose area is the AP).
  The curves are COCOeval's interpolated precision at 101 recall points (`fpn.engine.per_class`), 0 past the
  highest recall a class reaches.
- confusion.png: rows the ground truth, columns the prediction, the last of each the background: the background
  column counts the missed objects, the background row the false positives (`fpn.engine.confusion`). The colour
  is each row's fraction (a row sums to 1), the numbers are counts (written when there are at most
  `MOST_NUMBERS` classes).

matplotlib is the optional "viz" extra, imported only here: without it the PNGs are skipped with one line saying
how to install it (confusion.json is written either way).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Mapping, Sequence, Union

import numpy as np

from fpn.engine import distributed
from fpn.engine.confusion import IOU_THRESHOLD, SCORE_THRESHOLD, coco_confusion
from fpn.engine.per_class import PrecisionTable, average_precision

MOST_CLASSES = 10  # classes drawn in pr_curves.png (the most frequent), beside the mean
MOST_NUMBERS = 30  # classes up to which confusion.png writes its counts in the cells
INSTALL_HINT = 'matplotlib is not installed; pip install -e ".[viz]"'
FAST_PNG = {"compress_level": 1}  # PIL's default 6 took ~0.1 s more per picture for ~20 % smaller files


def write_evaluation_plots(output_dir: Union[str, Path], coco_gt, per_image: Mapping[int, Sequence[dict]],
                           table: PrecisionTable, names: Mapping[int, str], *,
                           score_threshold: float = SCORE_THRESHOLD) -> List[Path]:
    """confusion.json, pr_curves.png and confusion.png of one evaluation in `output_dir`, their paths logged.

    Args:
        output_dir: the folder (created if needed).
        coco_gt: the ground-truth COCO object.
        per_image: {image_id: COCO result dicts} of the images evaluated.
        table: the box precision-recall curves of the same evaluation.
        names: {category id: class name}.
        score_threshold: the confusion matrix's (`fpn.engine.confusion`).
    Returns:
        the paths written (confusion.json alone without matplotlib, after one line with the install hint).
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    classes = [str(names.get(c, f"id {c}")) for c in table.category_ids]
    matrix = coco_confusion(coco_gt, per_image, table.category_ids, score_threshold=score_threshold)
    written = [output / "confusion.json"]
    written[0].write_text(confusion_json(matrix, classes, score_threshold))
    try:
        figure_class = _figure_class()
    except ImportError as error:
        distributed.log(f"pr_curves.png and confusion.png skipped: {error} (confusion matrix: {written[0]})")
        return written
    figure = draw_pr_curves(figure_class(figsize=(13, 5), dpi=100), table, classes)
    figure.savefig(output / "pr_curves.png", pil_kwargs=FAST_PNG)
    size = min(max(6.0, 0.4 * len(classes) + 3), 30.0)  # inches: the cells stay readable up to ~70 classes
    draw_confusion(figure_class(figsize=(size + 1.5, size), dpi=100), matrix, classes, score_threshold) \
        .savefig(output / "confusion.png", pil_kwargs=FAST_PNG)
    written += [output / "pr_curves.png", output / "confusion.png"]
    distributed.log("evaluation plots: " + ", ".join(str(p) for p in written))
    return written


def confusion_json(matrix: np.ndarray, classes: Sequence[str], score_threshold: float) -> str:
    """confusion.json's text: the thresholds, the K class names and "background", and the (K+1, K+1) counts."""
    return json.dumps({"iou_threshold": IOU_THRESHOLD, "score_threshold": score_threshold,
                       "rows": "ground truth", "columns": "prediction", "classes": [*classes, "background"],
                       "matrix": np.asarray(matrix).tolist()}, indent=1)


def shown_classes(table: PrecisionTable) -> List[int]:
    """The class indices pr_curves.png draws: those with ground truth, the `MOST_CLASSES` most frequent when there
    are more (ties in the category order), in the category order."""
    present = [k for k, n in enumerate(table.instances) if n > 0]
    if len(present) <= MOST_CLASSES:
        return present
    return sorted(sorted(present, key=lambda k: -table.instances[k])[:MOST_CLASSES])


def draw_pr_curves(figure, table: PrecisionTable, classes: Sequence[str]):
    """Draw the two precision-recall panels (IoU 0.5; IoU 0.5:0.95) on `figure` and return it."""
    present = [k for k, n in enumerate(table.instances) if n > 0]
    shown = shown_classes(table)
    t50 = int(np.flatnonzero(np.isclose(table.iou_thresholds, 0.5))[0])
    panels = (("IoU 0.5", "AP50", table.precision[t50]),  # (R, K)
              (f"IoU {table.iou_thresholds[0]:.2f}:{table.iou_thresholds[-1]:.2f}", "AP",
               table.precision.mean(axis=0)))  # (R, K); a class with ground truth has no -1 entry
    note = f" ({len(shown)} most frequent of {len(present)} classes)" if len(shown) < len(present) else ""
    for index, (title, metric, curves) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, index)
        for k in shown:
            axes.plot(table.recall_points, curves[:, k], linewidth=1.3,
                      label=f"{classes[k]} {metric} {average_precision(curves[:, k]):.3f}")
        if len(present) > 1:
            mean = curves[:, present].mean(axis=1)  # (R,)
            axes.plot(table.recall_points, mean, "k--", linewidth=2.2, label=f"mean {metric} {mean.mean():.3f}")
        axes.set(title=f"Precision-recall, {title}{note}", xlabel="recall", ylabel="precision", xlim=(0, 1),
                 ylim=(0, 1.02))
        axes.grid(True, alpha=0.3)
        if present:
            axes.legend(loc="lower left", fontsize="small")
    # fixed margins (the axis labels are fixed): tight_layout's extra drawing pass cost ~0.1 s of each evaluation
    figure.subplots_adjust(left=0.05, right=0.985, bottom=0.1, top=0.93, wspace=0.12)
    return figure


def draw_confusion(figure, matrix: np.ndarray, classes: Sequence[str], score_threshold: float):
    """Draw the (K+1, K+1) matrix on `figure` (colour: each row's fractions; numbers: counts) and return it."""
    matrix = np.asarray(matrix)
    labels = [*classes, "background"]
    totals = matrix.sum(axis=1, keepdims=True)  # (K+1, 1)
    fractions = matrix / np.maximum(totals, 1)  # (K+1, K+1)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the row")
    if len(classes) <= MOST_NUMBERS:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                axes.text(column, row, str(count), ha="center", va="center", fontsize="small",
                          color="white" if fractions[row, column] > 0.5 else "black")
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels=labels[:-1] + ["background\n(missed)"], rotation=90)
    axes.set_yticks(ticks, labels=labels[:-1] + ["background\n(false positive)"])
    axes.set(xlabel="predicted", ylabel="ground truth",
             title=f"Confusion at IoU {IOU_THRESHOLD}, detections scoring >= {score_threshold}")
    figure.tight_layout()
    return figure


def _figure_class():
    """matplotlib's Figure (the object-oriented API: Agg, no pyplot state), imported only when drawing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return Figure
