"""Per-class COCO AP read from one COCOeval run: against COCOeval run on each class alone, exact small cases, classes
without ground truth, crowd boxes, no detections at all, the printed table."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fpn.engine.evaluation import coco_evaluation, format_metrics
from fpn.engine.per_class import (
    class_ap, empty_table, format_per_class, instance_counts, per_class_metrics, precision_table,
)


def _coco(images, annotations, categories):
    """A COCO ground truth: images {id: (w, h)}, annotations (image, category, xywh[, iscrowd])."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.png"} for i, (w, h) in images.items()],
        "annotations": [
            {"id": k + 1, "image_id": a[0], "category_id": a[1], "bbox": a[2], "area": a[2][2] * a[2][3],
             "iscrowd": a[3] if len(a) > 3 else 0}
            for k, a in enumerate(annotations)
        ],
        "categories": [{"id": c, "name": name} for c, name in categories.items()],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


CATEGORIES = {3: "cat", 5: "dog", 8: "bird", 9: "fish"}  # bird has no ground truth; fish is only a crowd
GT = [
    (1, 3, [10, 10, 100, 100]), (1, 3, [150, 20, 40, 60]), (1, 5, [20, 120, 60, 60]),
    (2, 3, [0, 0, 50, 50]), (2, 5, [60, 60, 40, 80]), (2, 5, [5, 100, 30, 30]),
    (3, 9, [0, 0, 80, 80], 1),
]
DETECTIONS = [  # (image, category, xywh, score): hits, a miss-located box, false positives, a wrong class
    (1, 3, [10, 10, 100, 100], 0.9), (1, 3, [150, 20, 40, 96], 0.6), (1, 3, [300, 300, 20, 20], 0.8),
    (1, 5, [22, 118, 60, 62], 0.7), (2, 3, [0, 0, 50, 60], 0.95), (2, 5, [60, 60, 40, 80], 0.3),
    (2, 5, [0, 0, 50, 50], 0.85), (2, 8, [5, 100, 30, 30], 0.5), (3, 9, [10, 10, 20, 20], 0.9),
]
RESULTS = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in DETECTIONS]
IMAGES = {1: (400, 400), 2: (200, 200), 3: (100, 100)}


def _cocoeval(coco, results, category_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        if category_ids is not None:
            evaluator.params.catIds = category_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_per_class_ap_equals_cocoeval_run_on_that_class_alone():
    coco = _coco(IMAGES, GT, CATEGORIES)
    summary, table = coco_evaluation(coco, RESULTS)
    assert table.category_ids == (3, 5, 8, 9) and table.precision.shape == (10, 101, 4)
    assert table.instances == (3, 3, 0, 0)  # the crowd box of fish is not an instance
    per_class = per_class_metrics(table, CATEGORIES)
    assert list(per_class) == ["cat", "dog", "bird", "fish"]
    for category, name in CATEGORIES.items():
        alone = _cocoeval(coco, RESULTS, [category]).stats
        for key, index in (("AP", 0), ("AP50", 1), ("AP75", 2)):
            if alone[index] == -1:  # no ground truth: COCOeval's "undefined"
                assert per_class[name][key] is None, (name, key)
            else:
                assert abs(per_class[name][key] - alone[index]) <= 1e-12, (name, key)
    # cat at IoU 0.5, by score: hit, hit, false positive, hit (IoU 0.625): precision 1 up to recall 2/3 (the recall
    # points 0.00..0.66, 67 of them), then 3/4 (34 points)
    assert per_class["cat"]["AP50"] == pytest.approx(92.5 / 101, abs=1e-12)
    # the mean over the classes with ground truth is the summary's AP
    assert np.mean([per_class[n]["AP"] for n in ("cat", "dog")]) == pytest.approx(summary["AP"], abs=1e-12)
    assert json.loads(json.dumps(per_class, allow_nan=False)) == per_class  # valid JSON: None, not NaN


def test_exact_values_of_one_box_at_iou_0625():
    coco = _coco({1: (300, 300)}, [(1, 1, [0, 0, 100, 100])], {1: "a", 2: "b"})
    # [0, 0, 100, 160] against [0, 0, 100, 100]: IoU 0.625, a hit at the thresholds 0.50, 0.55 and 0.60 only
    _, table = coco_evaluation(coco, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 160], "score": 0.8}])
    assert per_class_metrics(table, {1: "a", 2: "b"}) == {
        "a": {"AP": pytest.approx(0.3, abs=1e-15), "AP50": pytest.approx(1.0, abs=1e-15), "AP75": 0.0,
              "instances": 1},
        "b": {"AP": None, "AP50": None, "AP75": None, "instances": 0},
    }


def test_a_class_with_ground_truth_and_no_detection_scores_zero_and_no_detections_at_all():
    coco = _coco(IMAGES, GT, CATEGORIES)
    _, table = coco_evaluation(coco, [r for r in RESULTS if r["category_id"] != 5])
    assert class_ap(table, 1) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}  # dog: ground truth, no detection
    summary, empty = coco_evaluation(coco, [])  # COCO.loadRes cannot load []: no COCOeval runs
    assert summary["AP"] == 0.0
    assert per_class_metrics(empty, CATEGORIES) == {
        "cat": {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "instances": 3},
        "dog": {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "instances": 3},
        "bird": {"AP": None, "AP50": None, "AP75": None, "instances": 0},
        "fish": {"AP": None, "AP50": None, "AP75": None, "instances": 0},
    }
    np.testing.assert_array_equal(empty_table(coco, sorted(IMAGES)).precision, empty.precision)
    np.testing.assert_array_equal(empty.precision[3, 50], [0.0, 0.0, -1.0, -1.0])


def test_instances_count_the_images_evaluated_and_leave_crowds_out():
    coco = _coco(IMAGES, GT, CATEGORIES)
    assert instance_counts(coco, [1], (3, 5, 8, 9)) == (2, 1, 0, 0)
    assert instance_counts(coco, [2, 3], (5, 9)) == (2, 0)
    evaluator = _cocoeval(coco, RESULTS)
    evaluator.params.imgIds = [2]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    assert precision_table(evaluator).instances == (1, 2, 0, 0)


def test_precision_table_needs_an_accumulated_evaluator():
    coco = _coco(IMAGES, GT, CATEGORIES)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(RESULTS), iouType="bbox")
    with pytest.raises(ValueError, match="has not accumulated yet"):
        precision_table(evaluator)


def test_a_repeated_name_and_a_missing_name_stay_apart():
    coco = _coco({1: (100, 100)}, [(1, 1, [0, 0, 10, 10]), (1, 2, [50, 50, 10, 10])], {1: "x", 2: "x", 4: "z"})
    _, table = coco_evaluation(coco, [{"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "score": 0.5}])
    per_class = per_class_metrics(table, {1: "x", 2: "x"})
    assert list(per_class) == ["x", "x (id 2)", "id 4"]
    assert per_class["x"]["AP"] == 0.0 and per_class["x (id 2)"]["AP"] == pytest.approx(1.0)


def test_the_per_class_table():
    per_class = {"cat": {"AP": 0.5, "AP50": 0.75, "AP75": 0.125, "instances": 12},
                 "hippopotamus": {"AP": None, "AP50": None, "AP75": None, "instances": 0}}
    assert format_per_class(per_class) == (
        "| class        | inst |    AP |  AP50 |  AP75 |\n"
        "|--------------|------|-------|-------|-------|\n"
        "| cat          |   12 | 0.500 | 0.750 | 0.125 |\n"
        "| hippopotamus |    0 |     - |     - |     - |")
    masks = {"a": {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "instances": 3, "mask_AP": 0.25, "mask_AP50": None}}
    assert format_per_class(masks).splitlines()[0] == "| class | inst |    AP |  AP50 |  AP75 | mask_AP | mask_AP50 |"
    assert format_per_class(masks).splitlines()[2] == "| a     |    3 | 1.000 | 1.000 | 1.000 |   0.250 |         - |"
    summary = {"AP": 0.5, "AP50": 0.75, "AP75": 0.125, "APs": -1.0, "APm": 0.0, "APl": 1.0}
    assert format_metrics({**summary, "per_class": per_class}) == \
        format_metrics(summary) + "\n\nper class:\n" + format_per_class(per_class)
