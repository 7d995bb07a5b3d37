"""fpn.data.statistics: levels, best anchor IoU, counts and the input scale on hand-built COCO dicts, and the
pyramid read from a config against the models that config builds."""
import json

import numpy as np
import pytest
import torch

from fpn.config import FasterRCNNConfig, FCOSConfig, InputConfig, MaskRCNNConfig
from fpn.data.statistics import (
    FCOS_STRIDES, best_anchor_iou, describe_dataset, model_pyramid, resized_sizes, scale_to_input,
)
from fpn.detectors.transform import preprocess
from fpn.errors import InputError
from fpn.ops import AnchorGenerator, box_iou


def coco_dict(images, boxes, categories=("cat", "dog")):
    """images: [(width, height)]; boxes: [(image index, category index, [x, y, w, h], iscrowd)]."""
    return {
        "images": [{"id": i + 1, "file_name": f"im{i}.jpg", "width": w, "height": h}
                   for i, (w, h) in enumerate(images)],
        "annotations": [{"id": 100 + j, "image_id": i + 1, "category_id": c + 1, "bbox": list(b), "iscrowd": crowd}
                        for j, (i, c, b, crowd) in enumerate(boxes)],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(categories)],
    }


def test_levels_by_eq1_with_clamping_at_both_ends():
    # an 800 x 800 image stays 800 x 800 at the default input size: boxes are their own size
    sides = [10, 56, 111, 112, 224, 447, 448, 790]
    report = describe_dataset(coco_dict([(800, 800)], [(0, 0, [0, 0, s, s], 0) for s in sides]), FasterRCNNConfig())
    assert report.level_names == ["P2", "P3", "P4", "P5"]
    assert [report.level_names[k] for k in report.levels] == ["P2", "P2", "P2", "P3", "P4", "P4", "P5", "P5"]
    np.testing.assert_array_equal(report.box_sizes, np.array(sides, np.float32))
    assert report.level_counts.tolist() == [[3, 1, 2, 2], [0, 0, 0, 0]]


def test_a_box_equal_to_an_anchor_has_iou_one_and_a_tiny_box_is_named():
    # P2: stride 4, size 32; the square anchor at column 10, row 12 is [24, 32, 56, 64] (cell [-16, -16, 16, 16])
    boxes = [(0, 0, [24, 32, 32, 32], 0), (0, 1, [301, 207, 4, 4], 0), (0, 0, [100, 100, 200, 100], 0)]
    report = describe_dataset(coco_dict([(800, 800)], boxes), FasterRCNNConfig())
    assert report.best_iou[0] == 1.0
    # inside the 46 x 22 anchor (size 32, ratio 0.5, rounded corners) the 4 x 4 box reaches 16 / 1012
    assert report.best_iou[1] == pytest.approx(16 / 1012, rel=1e-6)
    worst = report.poorly_covered[0]
    assert (worst["annotation_id"], worst["file_name"], worst["category"]) == (101, "im0.jpg", "dog")
    assert worst["bbox"] == [301, 207, 4, 4] and worst["best_iou"] == round(16 / 1012, 4)
    assert report.best_iou[2] > 0.8  # 200 x 100 against the 182 x 90 anchor (size 128, ratio 0.5)
    assert [box["annotation_id"] for box in report.poorly_covered] == [101] and report.count_below(0.3) == 1
    assert "im0.jpg annotation 101 dog" in report.text()


def test_objects_per_image_crowd_and_empty_boxes():
    boxes = [(0, 0, [10, 10, 50, 50], 0), (0, 1, [5, 5, 30, 30], 0), (2, 1, [0, 0, 20, 20], 0),
             (2, 0, [0, 0, 100, 100], 1),  # crowd: counted apart
             (1, 0, [400, 10, 10, 10], 0)]  # outside the 300-wide image: empty after clipping
    report = describe_dataset(coco_dict([(400, 300), (300, 300), (200, 100)], boxes), FasterRCNNConfig())
    assert report.objects_per_image.tolist() == [2, 0, 1]
    assert (report.num_crowd, report.num_dropped, report.instances_per_class) == (1, 1, [1, 2])
    assert report.text().splitlines()[0].startswith("3 images (1 without objects), 3 objects in 2 classes")
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["objects_per_image"] == {"0": 1, "1": 1, "2": 1} and data["num_crowd"] == 1


def test_an_empty_set():
    report = describe_dataset({"images": [], "annotations": [], "categories": []}, FasterRCNNConfig())
    assert report.num_images == 0 and report.best_iou.shape == (0,) and report.poorly_covered == []
    assert report.text().startswith("0 images (0 without objects), 0 objects in 0 classes")
    assert report.to_json()["objects_per_image"] == {}


def test_max_images_skips_the_rest():
    boxes = [(0, 0, [10, 10, 50, 50], 0), (1, 1, [5, 5, 30, 30], 0)]
    report = describe_dataset(coco_dict([(400, 300), (300, 300)], boxes), FasterRCNNConfig(), max_images=1)
    assert report.num_images == 1 and report.instances_per_class == [1, 0]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(category_id=7), "annotation id 100 has category_id 7"),
    (lambda d: d["annotations"][0].update(image_id=9), "annotation id 100 has unknown image_id 9"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation id 100 has bbox [1, 2, 3]"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3, None]), "annotation id 101 has bbox [1, 2, 3, None]"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, float("nan"), 4]), "annotation id 101 has bbox [1, 2, nan, 4]"),
    (lambda d: d["images"][0].pop("width"), "image id 1 (im0.jpg) has height, width (300, None)"),
    (lambda d: d["categories"].append({"name": "bird"}), "category {'name': 'bird'} has no id"),
])
def test_errors_name_the_annotation_or_image(change, message):
    data = coco_dict([(400, 300)], [(0, 0, [10, 10, 50, 50], 0), (0, 1, [5, 5, 9, 9], 0)])
    change(data)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        describe_dataset(data, FasterRCNNConfig())
    with pytest.raises(InputError, match="config must be a FasterRCNNConfig, MaskRCNNConfig or FCOSConfig, got dict"):
        describe_dataset(coco_dict([(400, 300)], []), {})


def test_resize_and_box_scaling_equal_the_transform():
    cfg = InputConfig(min_size=64, max_size=100)
    sizes = [(37, 91), (100, 30), (64, 64), (333, 500), (7, 300)]
    boxes = torch.tensor([[1.5, 2.25, 20.0, 6.0]])
    for h, w in sizes:
        batch, targets = preprocess([torch.zeros(3, h, w)], [{"boxes": boxes}], cfg, training=False)
        ours = resized_sizes(np.array([h]), np.array([w]), cfg.min_size, cfg.max_size)
        assert tuple(ours[0]) == batch.image_sizes[0]
        scaled = scale_to_input(boxes.numpy(), np.array([[h, w]]), ours)
        assert torch.equal(torch.from_numpy(scaled), targets[0]["boxes"])


def test_an_image_resized_to_nothing_is_named():
    config = FasterRCNNConfig()
    config.input = InputConfig(min_size=64, max_size=100)
    with pytest.raises(InputError, match=r"image im1.jpg of height, width \(7, 1000\) resizes to \(0, 100\)"):
        describe_dataset(coco_dict([(50, 50), (1000, 7)], []), config)


def tiny_model(arch_config):
    from fpn.detectors.build import build_detector

    config = arch_config
    config.backbone.depth, config.backbone.width, config.backbone.norm, config.backbone.gn_groups = 18, 8, "gn", 4
    config.fpn.out_channels = 16
    if isinstance(config, FCOSConfig):
        config.head.gn_groups = 4
    return build_detector(3, config).eval()


@pytest.mark.parametrize("variant, size_divisible, trunk", [
    ("fpn", 32, "resnet"), ("fpn", 1, "resnet"), ("c4", 32, "resnet"), ("p2_only", 32, "resnet"),
    ("fpn", 32, "mobilenet_v3_large"), ("fpn", 32, "regnet_x_400mf"),
])
def test_best_iou_equals_every_anchor_of_the_model(variant, size_divisible, trunk):
    config = FasterRCNNConfig(variant=variant)
    config.backbone.name = trunk
    config.input = InputConfig(min_size=160, max_size=250, size_divisible=size_divisible)
    model = tiny_model(config)
    pyramid = model_pyramid(model.config)
    assert [name for name in pyramid.level_names] == model.pooled_levels
    assert pyramid.anchor_sizes == model.rpn.anchor_generator.sizes
    assert list(pyramid.anchor_strides) == [model.neck.out_specs[name].stride for name in model.rpn_maps]
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=generator) * torch.tensor([300.0, 200.0])
    wh = torch.rand(40, 2, generator=generator) ** 2 * 250 + 1
    boxes = [(0, 0, [float(x), float(y), float(w), float(h)], 0) for (x, y), (w, h) in zip(xy, wh)]
    report = describe_dataset(coco_dict([(333, 211)], boxes), model.config)
    batch, targets = preprocess([torch.zeros(3, 211, 333)], [{"boxes": _clipped(boxes, 333, 211)}], config.input,
                                False)
    with torch.no_grad():
        features = model.features(batch)
    anchors = model.rpn.anchor_generator.anchors_for(
        tuple(batch.tensor.shape[-2:]), [tuple(features[n].shape[-2:]) for n in model.rpn_maps], torch.device("cpu"))
    expected = box_iou(targets[0]["boxes"], anchors).amax(dim=1)
    assert torch.equal(torch.from_numpy(report.best_iou), expected)


def _clipped(boxes, width, height):
    xyxy = torch.tensor([[x, y, x + w, y + h] for _, _, (x, y, w, h), _ in boxes])
    return torch.stack([xyxy[:, 0].clamp(0, width), xyxy[:, 1].clamp(0, height), xyxy[:, 2].clamp(0, width),
                        xyxy[:, 3].clamp(0, height)], dim=1)


def test_best_iou_clamps_to_the_grid():
    # centres beyond the last anchor column (P2: x 796, P6: x 732) take the last one
    pyramid = model_pyramid(FasterRCNNConfig())
    boxes = torch.tensor([[798.0, 0.0, 800.0, 4.0], [700.0, 300.0, 800.0, 800.0]])
    best = best_anchor_iou(boxes, torch.tensor([[800, 800], [800, 800]]), pyramid)
    anchors = AnchorGenerator(pyramid.anchor_sizes, (pyramid.aspect_ratios,) * 5).anchors_for(
        (800, 800), [(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)], torch.device("cpu"))
    assert torch.equal(best, box_iou(boxes, anchors).amax(dim=1))


def test_mobilenet_and_single_map_pyramids():
    config = FasterRCNNConfig()
    config.backbone.name = "mobilenet_v3_large"  # unresolved (every_size_on_every_level None) as the model's
    pyramid = model_pyramid(config)
    assert pyramid.level_names == ("p4",) and pyramid.anchor_strides == (32, 32, 64)
    assert pyramid.anchor_sizes == ((32, 64, 128, 256, 512),) * 3
    c5 = model_pyramid(FasterRCNNConfig(variant="c5"))
    assert (c5.level_names, c5.anchor_strides, c5.anchor_sizes) == (("c5",), (32,), ((32, 64, 128, 256, 512),))
    report = describe_dataset(coco_dict([(800, 800)], [(0, 0, [0, 0, 10, 10], 0)]), FasterRCNNConfig(variant="c5"))
    assert report.level_names == ["C5"] and report.levels.tolist() == [0]


def test_fcos_levels_by_size_of_interest_and_no_anchors():
    sides = [(100, 40), (128, 128), (130, 20), (300, 300), (600, 100), (1200, 700)]
    config = FCOSConfig()
    config.input = InputConfig(min_size=800, max_size=2000)
    report = describe_dataset(coco_dict([(1300, 800)], [(0, 0, [0, 0, w, h], 0) for w, h in sides]), config)
    # max(w, h) / 2: 50 -> P3 (< 64), 64 -> P3 (the bound goes to the lower level), 65 -> P4, 150 -> P5, 300 -> P6
    assert [report.level_names[k] for k in report.levels] == ["P3", "P3", "P4", "P5", "P6", "P7"]
    assert report.best_iou is None and report.poorly_covered == [] and report.anchor_sizes == ()
    assert "anchor-free" in report.text() and "best_iou_histogram" not in report.to_json()
    model = tiny_model(FCOSConfig())
    assert model.head.anchor_generator.sizes == tuple((s,) for s in FCOS_STRIDES)
    assert tuple(model.neck.out_specs) == model_pyramid(config).level_names


def test_mask_rcnn_names_both_heads():
    report = describe_dataset(coco_dict([(800, 800)], [(0, 0, [0, 0, 224, 224], 0)]), MaskRCNNConfig())
    assert report.arch == "mask_rcnn" and report.level_names[report.levels[0]] == "P4"
    assert "RoI level (box and mask heads)" in report.text()


def test_text_stays_short_for_eighty_classes():
    rng = np.random.default_rng(0)
    images = [(640, 480)] * 50
    boxes = [(int(rng.integers(50)), int(rng.integers(80)), [float(v) for v in rng.uniform(1, 200, 4)], 0)
             for _ in range(600)]
    report = describe_dataset(coco_dict(images, boxes, [f"class{k}" for k in range(80)]), FasterRCNNConfig())
    lines = report.text().splitlines()
    assert len(lines) <= 25 and max(len(line) for line in lines) <= 120
    assert lines[4].startswith("instances per class: class") and lines[4].endswith("more")
    assert lines[5].startswith("  fewest: class") and len(report.poorly_covered) == report.count_below(0.7)
