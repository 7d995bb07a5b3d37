"""fpn.data.synthetic: deterministic files, valid COCO (pycocotools + COCOeval), tight boxes inside the images,
small and large objects, the command line."""
import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fpn.data.coco import CocoDetection
from fpn.data.synthetic import SHAPE_NAMES, generate_synthetic_coco, main, render_image, shape_mask

SMALL = dict(num_images=6, num_val=2, min_size=64, max_size=90, progress=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate_synthetic_coco(tmp_path_factory.mktemp("shapes"), seed=3, **SMALL)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_returned_paths(generated):
    root = generated["root"]
    assert generated["train_images"] == root / "train2017" and generated["val_images"] == root / "val2017"
    assert generated["train_annotations"] == root / "annotations" / "instances_train2017.json"
    assert generated["val_annotations"] == root / "annotations" / "instances_val2017.json"
    names = set(_files(root))
    assert {f"train2017/{i:012d}.png" for i in range(1, 7)} | {f"val2017/{i:012d}.png" for i in (1, 2)} <= names


def test_same_seed_gives_identical_bytes_and_other_seed_differs(generated, tmp_path):
    again = generate_synthetic_coco(tmp_path / "again", seed=3, **SMALL)
    assert _files(again["root"]) == _files(generated["root"])
    other = generate_synthetic_coco(tmp_path / "other", seed=4, **SMALL)
    other_files = _files(other["root"])
    assert other_files["train2017/000000000001.png"] != _files(generated["root"])["train2017/000000000001.png"]


def test_valid_coco_that_cocoeval_scores_perfectly(generated):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(generated["val_annotations"]))
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                   for a in coco.dataset["annotations"]]
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0) and evaluator.stats[1] == pytest.approx(1.0)  # AP, AP50
    document = json.loads(generated["train_annotations"].read_text())
    assert set(document) == {"info", "licenses", "images", "annotations", "categories"}
    assert document["categories"] == [{"id": k, "name": name, "supercategory": "shape"}
                                      for k, name in enumerate(SHAPE_NAMES[:6], start=1)]
    for ann in document["annotations"]:
        assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
        assert ann["iscrowd"] == 0
    assert [a["id"] for a in document["annotations"]] == list(range(1, len(document["annotations"]) + 1))


def test_images_and_boxes_are_consistent(generated):
    for split in ("train", "val"):
        dataset = CocoDetection(generated[f"{split}_images"], generated[f"{split}_annotations"], train=False)
        document = json.loads(generated[f"{split}_annotations"].read_text())
        sizes = {img["id"]: (img["height"], img["width"]) for img in document["images"]}
        for height, width in sizes.values():
            assert 64 <= height <= 90 and 64 <= width <= 90 and height % 32 and width % 32
        for ann in document["annotations"]:
            x, y, w, h = ann["bbox"]
            height, width = sizes[ann["image_id"]]
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w >= 1 and h >= 1
            assert 0.75 * 0.5 * w * h <= ann["area"] <= w * h  # visible pixels fill a good part of the box
        assert dataset.num_dropped_boxes == 0
        image, target = dataset[0]
        assert tuple(image.shape[1:]) == sizes[dataset.image_ids[0]]
        first = [a for a in document["annotations"] if a["image_id"] == dataset.image_ids[0]]
        expected = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                  a["bbox"][1] + a["bbox"][3]] for a in first], dtype=torch.float32)
        assert torch.equal(target["boxes"], expected)


def test_object_sizes_span_small_to_large_and_both_orientations(tmp_path):
    paths = generate_synthetic_coco(tmp_path, num_images=16, num_val=1, seed=0, min_size=120, max_size=150,
                                    progress=False)
    document = json.loads(paths["train_annotations"].read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in document["images"]}
    longest = np.array([max(a["bbox"][2:]) for a in document["annotations"]])
    relative = np.array([max(a["bbox"][2:]) / min(sizes[a["image_id"]]) for a in document["annotations"]])
    assert longest.min() <= 16  # small objects (a few pixels on P2, none on P5)
    assert relative.max() >= 0.45  # large objects, near the 60 % limit
    assert longest.min() >= 9
    assert {w >= h for w, h in sizes.values()} == {True, False}  # landscape and portrait images
    assert {a["category_id"] for a in document["annotations"]} == set(range(1, 7))


def test_object_size_range_is_a_parameter(tmp_path):
    paths = generate_synthetic_coco(tmp_path, num_images=16, num_val=1, seed=0, min_size=120, max_size=150,
                                    min_object_size=4, max_object_fraction=0.95, progress=False)
    document = json.loads(paths["train_annotations"].read_text())
    shorter = {img["id"]: min(img["width"], img["height"]) for img in document["images"]}
    longest = np.array([max(a["bbox"][2:]) for a in document["annotations"]])
    relative = np.array([max(a["bbox"][2:]) / shorter[a["image_id"]] for a in document["annotations"]])
    assert longest.min() <= 8 and relative.max() >= 0.7  # a few pixels to most of the image
    assert all(max(a["bbox"][2:]) <= 0.95 * shorter[a["image_id"]] + 0.5 for a in document["annotations"])  # rounding
    rng = np.random.default_rng(1)
    _, objects = render_image(rng, 100, 100, num_classes=6, max_objects=1, min_object_size=30,
                              max_object_fraction=0.3)
    assert [max(bbox[2:]) for _, bbox, _, _ in objects] == [30]  # the range collapsed to one size


def test_box_is_the_tight_bound_of_the_shape():
    rng = np.random.default_rng(5)
    pixels, objects = render_image(rng, 70, 60, num_classes=6, max_objects=1)
    assert pixels.shape == (60, 70, 3) and pixels.dtype == np.uint8 and len(objects) == 1
    for shape in SHAPE_NAMES:
        for w, h in [(3, 3), (9, 12), (13, 10), (40, 31)]:
            mask = shape_mask(shape, w, h, np.random.default_rng(0))
            assert mask.shape == (h, w)
            assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
    ring = shape_mask("ring", 20, 20)
    assert not ring[10, 10] and ring[10, 0]  # a ring has a hole, a circle does not
    assert shape_mask("circle", 20, 20)[10, 10]


@pytest.mark.parametrize("kwargs, message", [({"num_images": 0}, "num_images"), ({"num_classes": 9}, "num_classes"),
                                             ({"min_size": 100, "max_size": 90}, "min_size"),
                                             ({"num_val": 0}, "num_val"),
                                             ({"min_object_size": 2}, "min_object_size must be >= 3"),
                                             ({"max_object_fraction": 1.5}, "max_object_fraction"),
                                             ({"min_size": 40, "min_object_size": 30}, "exceeds the largest")])
def test_bad_arguments(tmp_path, kwargs, message):
    arguments = {**dict(num_images=1, num_val=1, progress=False), **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_synthetic_coco(tmp_path, **arguments)


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "fpn.data.synthetic", str(out), "--num-images", "2", "--num-val", "1",
               "--min-size", "40", "--max-size", "48", "--num-classes", "3", "--seed", "7", "--min-object-size", "5",
               "--max-object-fraction", "0.8"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "train_annotations" in finished.stdout and "Warning" not in finished.stderr
    document = json.loads((out / "annotations" / "instances_train2017.json").read_text())
    assert len(document["images"]) == 2 and [c["name"] for c in document["categories"]] == list(SHAPE_NAMES[:3])
    assert (out / "val2017" / "000000000001.png").is_file()
    api = generate_synthetic_coco(tmp_path / "api", 2, num_val=1, seed=7, min_size=40, max_size=48, num_classes=3,
                                  min_object_size=5, max_object_fraction=0.8, progress=False)
    assert _files(api["root"]) == _files(out)


def test_command_line_rejects_bad_values(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--num-images", "0"])
    assert exit_info.value.code == 2 and "num_images must be >= 1" in capsys.readouterr().err
