"""The confusion matrix at IoU 0.5 on hand-built images: a right detection, a wrong class, a duplicate, a miss, a
false positive, an empty image, ties in score and in IoU, crowd regions, the score threshold, COCO records."""
import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from fpn.engine.confusion import coco_confusion, confusion_per_image

BOX = [0.0, 0.0, 10.0, 10.0]  # xyxy
FAR = [50.0, 50.0, 60.0, 60.0]
HALF = [0.0, 0.0, 10.0, 20.0]  # IoU 0.5 with BOX exactly: a match (>= 0.5)


def _matrix(gt, preds, num_classes=3, **kwargs):
    """gt: [(box, class)]; preds: [(box, class, score)]."""
    return confusion_per_image(
        torch.tensor([b for b, _ in gt]).reshape(-1, 4), [c for _, c in gt],
        torch.tensor([b for b, _, _ in preds]).reshape(-1, 4), [c for _, c, _ in preds], [s for _, _, s in preds],
        num_classes, **kwargs)


def _counts(**cells):
    """A 3-class matrix (background 3) from cells named like r0c1=2 (row ground truth, column prediction)."""
    matrix = np.zeros((4, 4), np.int64)
    for name, count in cells.items():
        matrix[int(name[1]), int(name[3])] = count
    return matrix


def test_a_right_detection_is_on_the_diagonal():
    np.testing.assert_array_equal(_matrix([(BOX, 1)], [(BOX, 1, 0.9)]), _counts(r1c1=1))
    np.testing.assert_array_equal(_matrix([(BOX, 1)], [(HALF, 1, 0.9)]), _counts(r1c1=1))  # IoU exactly 0.5


def test_a_wrong_class_is_a_confusion():
    np.testing.assert_array_equal(_matrix([(BOX, 1)], [(BOX, 2, 0.9)]), _counts(r1c2=1))


def test_a_duplicate_is_a_false_positive():
    np.testing.assert_array_equal(_matrix([(BOX, 0)], [(BOX, 0, 0.9), (BOX, 0, 0.8)]), _counts(r0c0=1, r3c0=1))


def test_a_miss_and_a_false_positive():
    np.testing.assert_array_equal(_matrix([(BOX, 2)], [(FAR, 1, 0.9)]), _counts(r2c3=1, r3c1=1))
    below = [0.0, 0.0, 10.0, 20.5]  # IoU 100 / 205 < 0.5: no match
    np.testing.assert_array_equal(_matrix([(BOX, 2)], [(below, 2, 0.9)]), _counts(r2c3=1, r3c2=1))


def test_an_empty_image_and_an_image_without_detections():
    np.testing.assert_array_equal(_matrix([], []), _counts())
    np.testing.assert_array_equal(_matrix([], [(BOX, 0, 0.9)]), _counts(r3c0=1))
    np.testing.assert_array_equal(_matrix([(BOX, 0), (FAR, 0)], []), _counts(r0c3=2))


def test_the_own_class_is_matched_before_a_higher_scoring_wrong_class():
    # one pass over any class would give the dog detection the cat and call the cat detection a false positive
    np.testing.assert_array_equal(_matrix([(BOX, 0)], [(BOX, 1, 0.9), (BOX, 0, 0.6)]), _counts(r0c0=1, r3c1=1))
    # two objects: the wrong-class detection still takes the box left free by the first pass
    overlapping = [2.0, 0.0, 12.0, 10.0]  # IoU 80 / 120 with BOX
    np.testing.assert_array_equal(
        _matrix([(BOX, 0), (overlapping, 1)], [(BOX, 2, 0.9), (overlapping, 0, 0.8)]), _counts(r0c0=1, r1c2=1))


def test_ties_in_score_keep_the_given_order_and_ties_in_iou_take_the_first_box():
    left, right = [0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]
    between = [2.5, 0.0, 12.5, 10.0]  # IoU 75 / 125 = 0.6 with each
    # equal scores: the first detection (class 0) takes the box; the second, of class 1, cannot match it again
    np.testing.assert_array_equal(_matrix([(BOX, 0)], [(BOX, 1, 0.7), (BOX, 1, 0.7)]), _counts(r0c1=1, r3c1=1))
    np.testing.assert_array_equal(_matrix([(BOX, 2)], [(BOX, 0, 0.7), (BOX, 1, 0.7)]), _counts(r2c0=1, r3c1=1))
    np.testing.assert_array_equal(_matrix([(BOX, 2)], [(BOX, 1, 0.7), (BOX, 0, 0.7)]), _counts(r2c1=1, r3c0=1))
    # equal IoU to two boxes of other classes: the first box (class 1) is taken, the class 2 box missed
    np.testing.assert_array_equal(_matrix([(left, 1), (right, 2)], [(between, 0, 0.9)]), _counts(r1c0=1, r2c3=1))
    np.testing.assert_array_equal(_matrix([(right, 2), (left, 1)], [(between, 0, 0.9)]), _counts(r2c0=1, r1c3=1))


def test_the_highest_score_takes_the_box_whatever_the_order():
    preds = [(HALF, 0, 0.6), (BOX, 0, 0.9)]  # the better-scoring exact box comes second
    np.testing.assert_array_equal(_matrix([(BOX, 0)], preds), _counts(r0c0=1, r3c0=1))
    wrong_first = [(BOX, 1, 0.6), (HALF, 2, 0.9)]  # among wrong classes the higher score takes it too
    np.testing.assert_array_equal(_matrix([(BOX, 0)], wrong_first), _counts(r0c2=1, r3c1=1))


def test_the_score_threshold_leaves_low_scores_out():
    preds = [(BOX, 0, 0.49), (FAR, 1, 0.5)]
    np.testing.assert_array_equal(_matrix([(BOX, 0)], preds), _counts(r0c3=1, r3c1=1))
    np.testing.assert_array_equal(_matrix([(BOX, 0)], preds, score_threshold=0.25), _counts(r0c0=1, r3c1=1))


def test_crowd_regions_are_not_matched_not_missed_and_excuse_what_lies_on_them():
    crowd = [0.0, 0.0, 100.0, 100.0]
    gt = [(crowd, 0), (FAR, 1)]
    inside, straddling = [20.0, 20.0, 30.0, 30.0], [95.0, 0.0, 105.0, 10.0]  # half of the second is outside
    outside = [96.0, 0.0, 106.0, 10.0]  # 40 % inside
    preds = [(inside, 2, 0.9), (straddling, 0, 0.8), (outside, 0, 0.7), (FAR, 1, 0.6)]
    np.testing.assert_array_equal(_matrix(gt, preds, gt_crowd=[True, False]), _counts(r1c1=1, r3c0=1))
    # the crowd box does not match even a box equal to it
    np.testing.assert_array_equal(_matrix([(crowd, 0)], [(crowd, 0, 0.9)], gt_crowd=[True]), _counts())


def test_xywh_boxes_and_bad_inputs():
    xywh = [[0.0, 0.0, 10.0, 10.0]]
    assert confusion_per_image(xywh, [0], [[0.0, 0.0, 10.0, 20.0]], [0], [0.9], 1, box_format="xywh")[0, 0] == 1
    with pytest.raises(ValueError, match=r"pred_classes holds 3, outside the 3 classes \[0, 3\)"):
        _matrix([(BOX, 0)], [(BOX, 3, 0.9)])
    with pytest.raises(ValueError, match="gt_classes has 2 entries for 1 gt boxes"):
        confusion_per_image([BOX], [0, 1], [], [], [], 3)
    with pytest.raises(ValueError, match="gt_crowd has 2 entries for 1 gt boxes"):
        confusion_per_image([BOX], [0], [], [], [], 3, gt_crowd=[False, True])


def test_coco_records_sum_over_images_in_the_categories_order():
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 4, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 4, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [0, 0, 90, 90], "area": 8100, "iscrowd": 1},
        ],
        "categories": [{"id": c, "name": str(c)} for c in (4, 7, 9)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    per_image = {
        1: [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "score": 0.9},  # right
            {"image_id": 1, "category_id": 7, "bbox": [50, 50, 10, 10], "score": 0.8}],  # 4 seen as 7
        2: [{"image_id": 2, "category_id": 4, "bbox": [0, 0, 10, 10], "score": 0.3},  # below the threshold
            {"image_id": 2, "category_id": 7, "bbox": [20, 20, 10, 10], "score": 0.9}],  # on the crowd: not counted
        3: [{"image_id": 3, "category_id": 4, "bbox": [0, 0, 10, 10], "score": 0.9}],  # nothing there
    }
    expected = np.array([[0, 1, 0, 1],   # 4: one seen as 7, one missed (its detection scored 0.3)
                         [0, 1, 0, 0],   # 7
                         [0, 0, 0, 0],   # 9: crowd only
                         [1, 0, 0, 0]])  # background: the detection of 4 on the empty image 3
    np.testing.assert_array_equal(coco_confusion(coco, per_image, [4, 7, 9]), expected)
    assert coco_confusion(coco, per_image, [4, 7, 9], score_threshold=0.2)[0].tolist() == [1, 1, 0, 0]
