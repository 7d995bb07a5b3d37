"""pr_curves.png, confusion.png and confusion.json: what is drawn (classes, legend, cell numbers), the many-class
cut, the files written by evaluate_coco(curves=True), and the install hint without matplotlib."""
import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from pycocotools.coco import COCO
from torch import nn

from fpn.data.coco import CocoDetection
from fpn.data.synthetic import generate_synthetic_coco
from fpn.engine.eval_plots import (
    MOST_CLASSES, draw_confusion, draw_pr_curves, shown_classes, write_evaluation_plots,
)
from fpn.engine.evaluation import coco_evaluation, evaluate_coco
from fpn.engine.per_class import PrecisionTable, average_precision


def _coco():
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 100, 50, 50], "area": 2500, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


RESULTS = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.9},  # right
           {"image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50], "score": 0.8}]  # the dog seen as a cat


def test_write_evaluation_plots_writes_the_matrix_and_both_pictures(tmp_path, capsys):
    coco = _coco()
    _, table = coco_evaluation(coco, RESULTS)
    written = write_evaluation_plots(tmp_path / "out", coco, {1: RESULTS}, table, {1: "cat", 2: "dog", 3: "bird"})
    out = tmp_path / "out"
    assert written == [out / "confusion.json", out / "pr_curves.png", out / "confusion.png"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in written[1:])
    assert json.loads(written[0].read_text()) == {
        "iou_threshold": 0.5, "score_threshold": 0.5, "rows": "ground truth", "columns": "prediction",
        "classes": ["cat", "dog", "bird", "background"],
        "matrix": [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]}
    assert capsys.readouterr().out == "evaluation plots: " + ", ".join(str(p) for p in written) + "\n"


def test_the_pr_curves_draw_each_class_with_ground_truth_and_the_mean():
    _, table = coco_evaluation(_coco(), RESULTS)
    figure = draw_pr_curves(Figure(), table, ["cat", "dog", "bird"])
    left, right = figure.axes
    # cat: a hit then a false positive at IoU 0.5, AP50 1; dog: no detection, 0; bird: no ground truth, not drawn
    assert [line.get_label() for line in left.lines] == ["cat AP50 1.000", "dog AP50 0.000", "mean AP50 0.500"]
    assert [line.get_label() for line in right.lines] == ["cat AP 1.000", "dog AP 0.000", "mean AP 0.500"]
    np.testing.assert_array_equal(left.lines[0].get_xdata(), np.linspace(0, 1, 101))
    assert left.get_title() == "Precision-recall, IoU 0.5" and right.get_title() == "Precision-recall, IoU 0.50:0.95"


def test_many_classes_show_the_most_frequent_and_the_mean():
    k = MOST_CLASSES + 3
    instances = tuple([5] * 4 + [0] + [1] * (k - 5))  # class 4 has no ground truth
    precision = np.where(np.array(instances) > 0, np.linspace(0.1, 0.9, k), -1.0)  # (K,)
    table = PrecisionTable(precision=np.broadcast_to(precision, (10, 101, k)).copy(),
                           iou_thresholds=np.linspace(0.5, 0.95, 10), recall_points=np.linspace(0, 1, 101),
                           category_ids=tuple(range(1, k + 1)), instances=instances)
    shown = shown_classes(table)
    assert shown == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]  # the 4 frequent ones, then the first singles; class 4 never
    figure = draw_pr_curves(Figure(), table, [f"c{i}" for i in range(k)])
    left = figure.axes[0]
    assert len(left.lines) == MOST_CLASSES + 1 and left.lines[-1].get_label().startswith("mean AP50 ")
    present = [i for i in range(k) if instances[i]]
    assert float(left.lines[-1].get_label().split()[-1]) == pytest.approx(precision[present].mean(), abs=5e-4)
    assert left.get_title() == f"Precision-recall, IoU 0.5 ({MOST_CLASSES} most frequent of {k - 1} classes)"
    assert average_precision(np.array([-1.0, -1.0])) is None


def test_the_confusion_picture_colours_row_fractions_and_writes_counts():
    matrix = np.array([[3, 1, 0], [0, 0, 2], [4, 0, 0]])
    figure = draw_confusion(Figure(), matrix, ["cat", "dog"], 0.5)
    axes = figure.axes[0]
    np.testing.assert_allclose(axes.images[0].get_array(), [[0.75, 0.25, 0], [0, 0, 1], [1, 0, 0]])
    assert sorted(text.get_text() for text in axes.texts) == ["1", "2", "3", "4"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["cat", "dog", "background\n(false positive)"]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["cat", "dog", "background\n(missed)"]
    big = draw_confusion(Figure(), np.ones((41, 41), np.int64), [f"c{i}" for i in range(40)], 0.5)
    assert not big.axes[0].texts  # 40 classes: colours only


def test_without_matplotlib_the_json_is_written_and_one_line_says_how_to_install(tmp_path, monkeypatch, capsys):
    coco = _coco()
    _, table = coco_evaluation(coco, RESULTS)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    written = write_evaluation_plots(tmp_path, coco, {1: RESULTS}, table, {1: "cat", 2: "dog", 3: "bird"})
    assert written == [tmp_path / "confusion.json"] and not (tmp_path / "pr_curves.png").exists()
    assert capsys.readouterr().out == ('pr_curves.png and confusion.png skipped: matplotlib is not installed; '
                                       f'pip install -e ".[viz]" (confusion matrix: {tmp_path / "confusion.json"})\n')


class _Oracle(nn.Module):
    """The ground truth of the image it is given, with score 1."""

    def __init__(self, dataset):
        super().__init__()
        self.samples = [dataset[i] for i in range(len(dataset))]

    def forward(self, images):
        targets = [next(t for img, t in self.samples if img.shape == image.shape and torch.equal(img, image))
                   for image in images]
        return [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]}
                for t in targets]


def test_evaluate_coco_writes_the_curves_only_when_asked(tmp_path):
    paths = generate_synthetic_coco(tmp_path / "syn", 2, num_val=3, seed=3, min_size=64, max_size=96, progress=False)
    val_set = CocoDetection(paths["val_images"], paths["val_annotations"], train=False)
    evaluate_coco(_Oracle(val_set), val_set, device=torch.device("cpu"), output_dir=tmp_path / "plain")
    assert not (tmp_path / "plain" / "confusion.json").exists()
    metrics = evaluate_coco(_Oracle(val_set), val_set, device=torch.device("cpu"), output_dir=tmp_path / "curves",
                            curves=True)
    confusion = json.loads((tmp_path / "curves" / "confusion.json").read_text())
    matrix = np.array(confusion["matrix"])
    counts = [metrics["per_class"][name]["instances"] for name in confusion["classes"][:-1]]
    np.testing.assert_array_equal(matrix, np.diag(counts + [0]))  # every object found, nothing else
    assert (tmp_path / "curves" / "pr_curves.png").is_file() and (tmp_path / "curves" / "confusion.png").is_file()
