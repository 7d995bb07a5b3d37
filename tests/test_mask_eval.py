"""Mask AP beside box AP (fpn.engine.mask_eval, fpn.engine.evaluation): a model returning the ground truth's masks
scores 1, degraded masks score lower with the same box AP, a Mask R-CNN's boxes score as they would alone; the RLE
round trip; the two-row table; an annotation file without segmentations gets box AP and one warning."""
import json
import warnings

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn

from fpn import MaskRCNNFPN
from fpn.data.coco import CocoDetection
from fpn.data.synthetic import generate_synthetic_coco
from fpn.deploy.mask_rle import binary_masks, mask_rles
from fpn.engine.evaluation import MASK_METRIC_NAMES, METRIC_NAMES, evaluate_coco, format_metrics
from fpn.engine.mask_eval import detection_rles, segmentation_problem_in
from test_mask_rcnn import tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """(the validation set as evaluation reads it, masks=False; the same with the ground-truth masks)."""
    paths = generate_synthetic_coco(tmp_path_factory.mktemp("syn"), 2, num_val=4, seed=3, min_size=64, max_size=96,
                                    progress=False)
    return (CocoDetection(paths["val_images"], paths["val_annotations"], train=False),
            CocoDetection(paths["val_images"], paths["val_annotations"], train=False, masks=True))


class _Oracle(nn.Module):
    """Returns the ground truth of whichever image it is given: boxes, labels, score 1 and, unless `masks` is
    None, its masks (D, 1, H, W) as probabilities changed by `masks` (a function of the (D, 1, H, W) 0/1 floats)."""

    def __init__(self, dataset, masks=lambda m: m, count=None):
        super().__init__()
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.masks, self.count = masks, count

    def forward(self, images):
        outputs = []
        for image in images:
            target = next(t for img, t in self.samples if img.shape == image.shape and torch.equal(img, image))
            n = len(target["labels"]) if self.count is None else self.count
            output = {"boxes": target["boxes"][:n], "scores": torch.ones(n), "labels": target["labels"][:n]}
            if self.masks is not None:
                output["masks"] = self.masks(target["masks"][:n, None].float())
            outputs.append(output)
        return outputs


def test_ground_truth_masks_score_one_and_the_results_hold_them(sets, tmp_path):
    val, with_masks = sets
    metrics = evaluate_coco(_Oracle(with_masks, lambda m: m * 0.9), val, device=CPU, output_dir=tmp_path,
                            batch_size=3)
    assert list(metrics) == [*METRIC_NAMES, *MASK_METRIC_NAMES, "per_class"]
    assert all(entry["mask_AP"] == entry["AP"] == pytest.approx(1.0) for entry in metrics["per_class"].values())
    assert metrics["AP"] == metrics["mask_AP"] == pytest.approx(1.0)
    assert metrics["AP75"] == metrics["mask_AP75"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "eval_results.json").read_text())
    gt = {image_id: with_masks[i][1]["masks"] for i, image_id in enumerate(with_masks.image_ids)}
    seen = {}
    for record in results:
        decoded = mask_utils.decode(record["segmentation"])  # (H, W) uint8
        index = seen.setdefault(record["image_id"], 0)
        seen[record["image_id"]] += 1
        np.testing.assert_array_equal(decoded, gt[record["image_id"]][index].numpy())
    assert json.loads((tmp_path / "eval_metrics.json").read_text()) == metrics


def test_degraded_masks_lower_the_mask_ap_and_leave_the_box_ap(sets):
    val, with_masks = sets
    boxes_only = evaluate_coco(_Oracle(with_masks, masks=None), val, device=CPU, batch_size=2)
    assert list(boxes_only.pop("per_class")) == [val.class_names[k] for k in sorted(val.label_to_category)]
    assert list(boxes_only) == list(METRIC_NAMES)

    def every_other_column(m):
        m = m.clone()
        m[..., ::2] = 0  # about half of each mask: IoU ~0.5 with its ground truth
        return m

    degraded = evaluate_coco(_Oracle(with_masks, every_other_column), val, device=CPU, batch_size=2)
    assert {name: degraded[name] for name in METRIC_NAMES} == boxes_only
    assert all(entry["mask_AP"] < 0.2 for entry in degraded["per_class"].values() if entry["instances"])
    assert degraded["mask_AP"] < 0.2 and degraded["mask_AP75"] == 0.0
    below = evaluate_coco(_Oracle(with_masks, lambda m: m * 0.5), val, device=CPU)  # 0.5 is not above 0.5
    assert below["mask_AP"] == 0.0 and below["AP"] == pytest.approx(1.0)


def test_a_mask_model_detecting_nothing_has_mask_keys(sets):
    val, with_masks = sets
    metrics = evaluate_coco(_Oracle(with_masks, count=0), val, device=CPU)
    assert all(entry["mask_AP"] in (0.0, None) for entry in metrics.pop("per_class").values())
    assert metrics == {name: 0.0 for name in (*METRIC_NAMES, *MASK_METRIC_NAMES)}


def test_mask_rcnn_boxes_score_as_they_would_alone(sets, tmp_path):
    val, _ = sets
    torch.manual_seed(0)
    model = MaskRCNNFPN(val.num_classes, tiny_config())

    class BoxesOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            return [{k: v for k, v in d.items() if k != "masks"} for d in self.model(images)]

    with_masks = evaluate_coco(model, val, device=CPU, batch_size=2, output_dir=tmp_path, prefix="masks")
    alone = evaluate_coco(BoxesOnly(), val, device=CPU, batch_size=2, output_dir=tmp_path, prefix="alone")
    assert {name: with_masks[name] for name in METRIC_NAMES} == {name: alone[name] for name in METRIC_NAMES}
    assert set(MASK_METRIC_NAMES) <= set(with_masks)
    assert {name: {k: entry[k] for k in ("AP", "AP50", "AP75", "instances")}
            for name, entry in with_masks["per_class"].items()} == alone["per_class"]
    records = [json.loads((tmp_path / f"{prefix}_results.json").read_text()) for prefix in ("masks", "alone")]
    assert len(records[0]) > 0 and all("counts" in r["segmentation"] for r in records[0])
    assert [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in records[0]] == \
        [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in records[1]]


def test_rle_round_trip_is_the_thresholded_mask():
    g = torch.Generator().manual_seed(0)
    probabilities = torch.rand(3, 1, 7, 11, generator=g)
    probabilities[0, 0, 2, 3] = 0.5  # exactly 0.5 is background
    rles = mask_rles(binary_masks(probabilities))
    assert [rle["size"] for rle in rles] == [[7, 11]] * 3 and all(isinstance(rle["counts"], str) for rle in rles)
    decoded = mask_utils.decode(rles)  # (H, W, D)
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), (probabilities[:, 0] > 0.5).numpy())
    assert json.loads(json.dumps(rles)) == rles
    assert mask_rles(torch.zeros(0, 7, 11, dtype=torch.bool)) == []
    # masks in the pixels of a half-size copy of the image come back at the original size
    big = detection_rles(torch.ones(2, 1, 5, 8), scale_xy=(2.0, 2.0))
    assert [rle["size"] for rle in big] == [[10, 16]] * 2 and mask_utils.area(big).tolist() == [160, 160]
    assert detection_rles(torch.zeros(0, 1, 5, 8), scale_xy=(2.0, 2.0)) == []


def test_format_metrics_two_rows_with_masks_one_row_without():
    box = {"AP": 0.5, "AP50": 0.75, "AP75": 0.125, "APs": -1.0, "APm": 0.0, "APl": 1.0}
    mask = {"mask_AP": 0.25, "mask_AP50": 0.5, "mask_AP75": 0.0625, "mask_APs": -1.0, "mask_APm": 0.0,
            "mask_APl": 0.875}
    assert format_metrics(box) == ("|    AP |  AP50 |  AP75 |   APs |   APm |   APl |\n"
                                   "|-------|-------|-------|-------|-------|-------|\n"
                                   "| 0.500 | 0.750 | 0.125 |     - | 0.000 | 1.000 |")
    assert format_metrics({**box, **mask}) == ("|      |    AP |  AP50 |  AP75 |   APs |   APm |   APl |\n"
                                               "|------|-------|-------|-------|-------|-------|-------|\n"
                                               "| box  | 0.500 | 0.750 | 0.125 |     - | 0.000 | 1.000 |\n"
                                               "| mask | 0.250 | 0.500 | 0.062 |     - | 0.000 | 0.875 |")


def test_a_file_without_segmentations_gives_box_ap_and_one_warning(sets, tmp_path):
    val, with_masks = sets
    data = json.loads(val.annotations_file.read_text())
    for annotation in data["annotations"]:
        del annotation["segmentation"]
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(data))
    boxes = CocoDetection(val.images_dir, boxes_file, train=False)
    first = min(a["id"] for a in data["annotations"])
    reason = (f"annotation id {first} has no segmentation ({len(data['annotations'])} of the "
              f"{len(data['annotations'])} annotations of the 4 images evaluated lack a usable one)")
    assert segmentation_problem_in(boxes.coco, boxes.image_ids) == reason
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = evaluate_coco(_Oracle(with_masks), boxes, device=CPU, output_dir=tmp_path)
    assert [str(w.message) for w in caught] == [f"no mask AP: {boxes_file}: {reason}"]
    assert list(metrics) == [*METRIC_NAMES, "per_class"] and metrics["AP"] == pytest.approx(1.0)
    assert all("segmentation" in r for r in json.loads((tmp_path / "eval_results.json").read_text()))
    assert segmentation_problem_in(val.coco, val.image_ids) is None


def test_scoring_masks_leaves_the_data_set_as_read(sets):
    """COCOeval's segm scoring overwrites the ground truth's segmentations in place: it works on a copy."""
    val, with_masks = sets
    before = json.dumps(val.coco.dataset["annotations"])
    first = evaluate_coco(_Oracle(with_masks, lambda m: m * 0.9), val, device=CPU)
    assert json.dumps(val.coco.dataset["annotations"]) == before
    assert evaluate_coco(_Oracle(with_masks, lambda m: m * 0.9), val, device=CPU) == first
