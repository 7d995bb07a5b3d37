"""COCO evaluation: result conversion, COCOeval metrics on exact cases, empty detections, the inference loop."""
import contextlib
import io
import json
import warnings
from collections import Counter

import pytest
import torch
from pycocotools.coco import COCO
from torch import nn

from fpn.data.coco import CocoDetection
from fpn.data.synthetic import generate_synthetic_coco
from fpn.errors import InputError
from fpn.engine.evaluation import (
    METRIC_NAMES, check_categories, coco_evaluate, coco_scale, detections_to_coco, evaluate_coco, flatten_results,
    format_metrics, run_inference,
)


def _coco(images, annotations, categories=(1, 2)):
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.png"} for i, (w, h) in images.items()],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, (i, c, b) in enumerate(annotations)
        ],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


GT = [(1, 1, [10, 10, 100, 100]), (1, 2, [150, 20, 40, 60]), (2, 1, [0, 0, 100, 100])]  # 3 medium/large boxes


def test_detections_to_coco_converts_boxes_labels_and_scale():
    detections = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),  # xyxy
        "scores": torch.tensor([0.9, 0.25]),
        "labels": torch.tensor([2, 1]),
    }
    records = detections_to_coco(detections, 7, {1: 11, 2: 42}, scale_xy=(2.0, 0.5))
    assert records == [
        {"image_id": 7, "category_id": 42, "bbox": [20.0, 10.0, 40.0, 20.0], "score": 0.9},
        {"image_id": 7, "category_id": 11, "bbox": [0.0, 0.0, 10.0, 2.5], "score": 0.25},
    ]


def test_detections_to_coco_empty_and_unknown_label():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert detections_to_coco(empty, 1, {1: 1}) == []
    mixed = {"boxes": torch.ones(4, 4), "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
             "labels": torch.tensor([5, 2, 0, 5])}
    dropped = Counter()
    records = detections_to_coco(mixed, 1, {1: 1, 2: 2}, dropped=dropped)
    assert [(r["category_id"], r["score"]) for r in records] == [(2, 0.8)]  # the known label kept
    assert dropped == {5: 2, 0: 1}
    with pytest.warns(UserWarning) as caught:  # no counter: one warning for the image
        assert len(detections_to_coco(mixed, 1, {1: 1, 2: 2})) == 1
    assert [str(w.message) for w in caught] == ["left out 3 detections whose label has no COCO category "
                                                "(label 0: 1, label 5: 2; known labels: [1, 2])"]


class _Background(nn.Module):
    """Per image: one detection of each of labels 0 (the background), 1 and 9: two labels without a category."""

    def forward(self, images):
        box = torch.tensor([[1.0, 1.0, 20.0, 20.0]])
        return [{"boxes": box.repeat(3, 1), "scores": torch.tensor([0.9, 0.8, 0.7]),
                 "labels": torch.tensor([0, 1, 9])} for _ in images]


def test_detections_without_a_category_are_left_out_with_one_warning(val_set, tmp_path):
    """An evaluation is not lost to a label without a COCO category (a barely trained FCOS returned label 0 and
    stopped its training run): its detections are left out, one warning names the labels and counts them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = evaluate_coco(_Background(), val_set, device=torch.device("cpu"), output_dir=tmp_path,
                                batch_size=2)
    messages = [str(w.message) for w in caught if "COCO category" in str(w.message)]
    n = len(val_set)
    assert messages == [f"left out {2 * n} detections whose label has no COCO category (label 0: {n}, label 9: {n}; "
                        f"known labels: {sorted(val_set.label_to_category)})"]
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert len(results) == n and {r["category_id"] for r in results} == {val_set.label_to_category[1]}
    assert list(metrics) == [*METRIC_NAMES, "per_class"]


def test_coco_scale_maps_model_pixels_to_original_pixels():
    image = torch.zeros(3, 50, 80)
    assert coco_scale(image, {"orig_size": (100, 40)}) == (0.5, 2.0)
    assert coco_scale(image, {}) == (1.0, 1.0)


def test_perfect_detections_score_one():
    coco = _coco({1: (200, 200), 2: (120, 120)}, GT)
    results = [{"image_id": i, "category_id": c, "bbox": b, "score": 1.0} for i, c, b in GT]
    metrics = coco_evaluate(coco, results)
    assert set(metrics) == set(METRIC_NAMES)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)
    assert metrics["APs"] == -1.0  # no small ground truth: COCOeval's "undefined"


def test_iou_0625_counts_at_050_but_not_075():
    coco = _coco({1: (300, 300)}, [(1, 1, [0, 0, 100, 100])])
    # [0, 0, 100, 160] against [0, 0, 100, 100]: IoU = 10000 / 16000 = 0.625
    metrics = coco_evaluate(coco, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 160], "score": 0.8}])
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    # thresholds 0.50, 0.55, 0.60 match: AP = 3/10
    assert metrics["AP"] == pytest.approx(0.3)


def test_wrong_class_and_missed_boxes_lower_ap():
    coco = _coco({1: (200, 200), 2: (120, 120)}, GT)
    results = [{"image_id": 1, "category_id": 2, "bbox": GT[0][2], "score": 0.9}]  # right box, wrong class
    metrics = coco_evaluate(coco, results)
    assert metrics["AP50"] == pytest.approx(0.0)


def test_empty_results_do_not_crash_and_score_zero():
    coco = _coco({1: (200, 200)}, GT[:1])
    assert coco_evaluate(coco, []) == {name: 0.0 for name in METRIC_NAMES}


def test_format_metrics_table():
    table = format_metrics({"AP": 0.5, "AP50": 0.75, "AP75": 0.125, "APs": -1.0, "APm": 0.0, "APl": 1.0})
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "AP"
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["0.500", "0.750", "0.125", "-", "0.000", "1.000"]


class _Oracle(nn.Module):
    """Returns the ground truth of whichever dataset image it is given (score 1), or nothing when `blind`."""

    def __init__(self, dataset, blind=False):
        super().__init__()
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.blind = blind
        self.modes = []

    def forward(self, images):
        self.modes.append(self.training)
        outputs = []
        for image in images:
            target = next(t for img, t in self.samples if img.shape == image.shape and torch.equal(img, image))
            n = 0 if self.blind else len(target["labels"])
            outputs.append({"boxes": target["boxes"][:n], "scores": torch.ones(n), "labels": target["labels"][:n]})
        return outputs


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    paths = generate_synthetic_coco(root, 2, num_val=5, seed=3, min_size=64, max_size=96, progress=False)
    return CocoDetection(paths["val_images"], paths["val_annotations"], train=False)


def test_evaluate_coco_with_oracle_model_scores_one_and_writes_files(val_set, tmp_path):
    model = _Oracle(val_set).train()
    metrics = evaluate_coco(model, val_set, device=torch.device("cpu"), output_dir=tmp_path, prefix="eval_x",
                            batch_size=2)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert model.modes and not any(model.modes)  # ran in eval mode ...
    assert model.training  # ... and was put back in training mode
    results = json.loads((tmp_path / "eval_x_results.json").read_text())
    assert len(results) == sum(len(val_set[i][1]["labels"]) for i in range(len(val_set)))
    assert {r["image_id"] for r in results} == set(val_set.image_ids)
    assert json.loads((tmp_path / "eval_x_metrics.json").read_text()) == metrics


def test_evaluate_coco_with_no_detections(val_set):
    metrics = evaluate_coco(_Oracle(val_set, blind=True), val_set, device=torch.device("cpu"))
    per_class = metrics.pop("per_class")
    assert metrics == {name: 0.0 for name in METRIC_NAMES}
    instances = Counter(val_set.class_names[int(label)] for i in range(len(val_set))
                        for label in val_set[i][1]["labels"])
    assert per_class == {name: {"AP": 0.0 if instances[name] else None, "AP50": 0.0 if instances[name] else None,
                                "AP75": 0.0 if instances[name] else None, "instances": instances[name]}
                         for name in (val_set.class_names[k] for k in sorted(val_set.label_to_category))}


def test_run_inference_reports_progress(val_set):
    seen = []
    per_image = run_inference(_Oracle(val_set), val_set, val_set.label_to_category, device=torch.device("cpu"),
                              batch_size=2, progress=seen.append)
    assert seen == [2, 2, 1]
    assert sorted(per_image) == val_set.image_ids
    records = flatten_results(per_image)
    assert [r["image_id"] for r in records] == sorted(r["image_id"] for r in records)
    assert all(r["category_id"] in val_set.label_to_category.values() for r in records)


def test_unreadable_image_is_left_out_of_the_evaluation(tmp_path):
    paths = generate_synthetic_coco(tmp_path, 1, num_val=4, seed=5, min_size=64, max_size=80, progress=False)
    (paths["val_images"] / "000000000002.png").write_bytes(b"broken")
    dataset = CocoDetection(paths["val_images"], paths["val_annotations"], train=False, skip_bad_images=True)
    # image 2 is replaced by image 3: image 3 must be scored once, image 2 not at all
    with pytest.warns(UserWarning, match="1 of 4 images were not evaluated"):
        metrics = evaluate_coco(_Oracle(_Readable(dataset)), dataset, device=torch.device("cpu"), output_dir=tmp_path)
    assert metrics["AP"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert sorted({r["image_id"] for r in results}) == [1, 3, 4]
    assert len(results) == sum(len(dataset.coco.getAnnIds(imgIds=[i])) for i in (1, 3, 4))


class _Readable:
    """The readable samples of a dataset that skips bad files (the oracle's lookup table)."""

    def __init__(self, dataset):
        self.samples = []
        for index in range(len(dataset)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.samples.append(dataset[index])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def test_check_categories_names_counts_and_the_categories_lacking():
    data = {1: "cat", 2: "dog", 3: "bird"}
    assert check_categories(data, data, model_name="m.pt", data_name="d.json") is None
    with pytest.raises(InputError) as missing:
        check_categories({1: "cat"}, data, model_name="m.pt", data_name="d.json")
    assert str(missing.value) == ("m.pt predicts 1 categories, d.json has 3: the model has no output for 2 of the "
                                  "data's categories, ids 2 (dog), 3 (bird); their AP would be 0 "
                                  "(--allow-missing-categories evaluates anyway)")
    warning = check_categories({1: "cat"}, data, model_name="m.pt", data_name="d.json", allow_missing=True)
    assert warning.endswith("ids 2 (dog), 3 (bird); they are scored as AP 0")
    many = {i: f"c{i}" for i in range(1, 15)}
    for allow_missing in (False, True):  # a model of another label set is an error either way
        with pytest.raises(InputError, match=r"m.pt predicts 14 categories, d.json has 3: the data lacks 11 of the "
                                             r"model's categories, ids 4 \(c4\), .*, 13 \(c13\) and 1 more \(a model"):
            check_categories(many, data, model_name="m.pt", data_name="d.json", allow_missing=allow_missing)
