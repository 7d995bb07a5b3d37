"""Per-class COCO AP, read from the COCOeval run that gives the summary (no second evaluation).

Shape shorthand: T IoU thresholds (0.50:0.05:0.95, 10), R recall points (0:0.01:1, 101), K categories.

After `COCOeval.accumulate()`, `eval["precision"]` (T, R, K, A areas, M maxDets) holds the interpolated precision
at each recall point, -1 where undefined (a category without ground truth). `PrecisionTable` keeps the slice that
the summary's AP, AP50 and AP75 read (area "all", maxDets 100): (T, R, K), ~8 KB per category. A category's
AP is pycocotools' own average: the mean of its entries > -1 over T and R (AP50 and AP75: over R at that
threshold), so it equals `stats[0]` (`stats[1]`, `stats[2]`) of a COCOeval run on that category alone; a category
without ground truth in the images evaluated has no AP (None).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools.cocoeval import COCOeval

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval's params.iouThrs
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval's params.recThrs


@dataclass(frozen=True)
class PrecisionTable:
    """The precision-recall curves of every category, at area "all" and 100 detections per image."""

    precision: np.ndarray  # (T, R, K) float64; -1 where undefined (a category without ground truth)
    iou_thresholds: np.ndarray  # (T,) the IoU thresholds of the first axis
    recall_points: np.ndarray  # (R,) the recall of each column
    category_ids: Tuple[int, ...]  # (K,) the COCO category id of each slice of the last axis
    instances: Tuple[int, ...]  # (K,) non-crowd ground-truth boxes of each category in the images evaluated


def precision_table(evaluator: COCOeval) -> PrecisionTable:
    """The curves of an evaluator after `accumulate()`.

    Args:
        evaluator: a COCOeval (iouType "bbox" or "segm", useCats 1) that has run evaluate() and accumulate().
    Returns:
        its `PrecisionTable`; `instances` counted from its ground truth over `params.imgIds`.
    Raises:
        ValueError: the evaluator has not accumulated yet.
    """
    if not evaluator.eval or "precision" not in evaluator.eval:
        raise ValueError("the COCOeval has not accumulated yet: call evaluate() and accumulate() first")
    params = evaluator.params
    area = list(params.areaRngLbl).index("all")
    most = 2  # summarize() reads stats[0:3], AP, AP50 and AP75, at maxDets[2] (100)
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, area, most]  # (T, R, K)
    category_ids = tuple(int(c) for c in params.catIds)
    return PrecisionTable(precision=precision.copy(), iou_thresholds=np.asarray(params.iouThrs),
                          recall_points=np.asarray(params.recThrs), category_ids=category_ids,
                          instances=instance_counts(evaluator.cocoGt, params.imgIds, category_ids))


def empty_table(coco_gt, image_ids: Sequence[int]) -> PrecisionTable:
    """The table of no detections at all (COCO.loadRes cannot load an empty result list, so no COCOeval runs):
    precision 0 for every category with ground truth, -1 for the others.

    Args:
        coco_gt: the ground-truth COCO object.
        image_ids: the images evaluated.
    """
    category_ids = tuple(sorted(int(c) for c in coco_gt.getCatIds()))
    instances = instance_counts(coco_gt, image_ids, category_ids)
    precision = np.where(np.asarray(instances) > 0, 0.0, -1.0)  # (K,)
    precision = np.broadcast_to(precision, (len(IOU_THRESHOLDS), len(RECALL_POINTS), len(category_ids))).copy()
    return PrecisionTable(precision=precision, iou_thresholds=IOU_THRESHOLDS.copy(),
                          recall_points=RECALL_POINTS.copy(), category_ids=category_ids, instances=instances)


def instance_counts(coco_gt, image_ids: Sequence[int], category_ids: Sequence[int]) -> Tuple[int, ...]:
    """Per category of `category_ids`, its non-crowd annotations in `image_ids` (the ones COCOeval scores)."""
    counts = dict.fromkeys((int(c) for c in category_ids), 0)
    for image_id in image_ids:
        for annotation in coco_gt.imgToAnns.get(int(image_id), []):
            category = int(annotation["category_id"])
            if category in counts and not annotation.get("iscrowd", 0):
                counts[category] += 1
    return tuple(counts[int(c)] for c in category_ids)


def average_precision(precision: np.ndarray) -> Optional[float]:
    """pycocotools' summary mean of a precision slice: the mean of its entries > -1; None when there are none."""
    defined = precision[precision > -1]
    return float(np.mean(defined)) if defined.size else None


def class_ap(table: PrecisionTable, k: int) -> Dict[str, Optional[float]]:
    """{"AP", "AP50", "AP75"} of the table's category index `k` (None without ground truth)."""
    at = {name: np.flatnonzero(np.isclose(table.iou_thresholds, iou)) for name, iou in (("AP50", .5), ("AP75", .75))}
    values = {"AP": average_precision(table.precision[:, :, k])}
    values.update({name: average_precision(table.precision[t, :, k]) for name, t in at.items()})
    return values


def per_class_metrics(table: PrecisionTable, names: Mapping[int, str],
                      mask_table: Optional[PrecisionTable] = None) -> Dict[str, dict]:
    """The per-class entry of the metrics: {class name: {"AP", "AP50", "AP75", "instances"}}, in category order.

    Args:
        table: the box curves.
        names: {category id: name}; a name met twice gets " (id N)" appended to the later ones; an id without a
            name is shown as "id N".
        mask_table: the mask curves of a Mask R-CNN (the same categories): adds "mask_AP" and "mask_AP50".
    Returns:
        the dict, JSON-ready: floats, ints and None (no ground truth: no AP).
    """
    result: Dict[str, dict] = {}
    for k, category in enumerate(table.category_ids):
        name = str(names.get(category, f"id {category}"))
        name = f"{name} (id {category})" if name in result else name
        entry = {**class_ap(table, k), "instances": int(table.instances[k])}
        if mask_table is not None:
            mask = class_ap(mask_table, mask_table.category_ids.index(category))
            entry.update({"mask_AP": mask["AP"], "mask_AP50": mask["AP50"]})
        result[name] = entry
    return result


def format_per_class(per_class: Mapping[str, Mapping[str, object]]) -> str:
    """A Markdown table of the per-class entry: class, instances, AP, AP50, AP75 (and mask AP, mask AP50), one row a
    class in the given order, 3 decimals, '-' where a class has no AP (no ground truth)."""
    columns = ["AP", "AP50", "AP75"]
    if any("mask_AP" in entry for entry in per_class.values()):
        columns += ["mask_AP", "mask_AP50"]
    width = max([len("class")] + [len(name) for name in per_class])
    counts = max([len("inst")] + [len(str(entry.get("instances", ""))) for entry in per_class.values()])
    header = [f"{'class':<{width}}", f"{'inst':>{counts}}"] + [f"{c:>5}" for c in columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("-" * (len(cell) + 2) for cell in header) + "|"]
    for name, entry in per_class.items():
        cells = [f"{name:<{width}}", f"{entry.get('instances', ''):>{counts}}"]
        cells += [_cell(entry.get(column), len(header[2 + i])) for i, column in enumerate(columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: object, width: int) -> str:
    return f"{value:{width}.3f}" if isinstance(value, (int, float)) and value >= 0 else f"{'-':>{width}}"
