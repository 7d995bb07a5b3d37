"""The detector learns: a small from-scratch model overfits a few synthetic images to AP50 = 1.0 on CPU."""
import contextlib
import io

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fpn import FasterRCNNConfig, FasterRCNNFPN


def _scene(rng: np.random.Generator, height: int, width: int, objects):
    """A noisy background with filled shapes: class 1 = ellipse, class 2 = rectangle (colour is random)."""
    base = rng.integers(40, 200, size=3)
    pixels = np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for label, (x1, y1, x2, y2) in objects:
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if label == 1 else draw.rectangle)([x1, y1, x2 - 1, y2 - 1], fill=colour)
        boxes.append([x1, y1, x2, y2])
        labels.append(label)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    return tensor, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def _ap50(detections, targets) -> float:
    """COCO AP at IoU 0.5 of `detections` against `targets` (pycocotools, all areas, 100 detections)."""
    images, annotations, results = [], [], []
    for image_id, (det, tgt) in enumerate(zip(detections, targets), start=1):
        images.append({"id": image_id, "width": 1000, "height": 1000})
        for box, label in zip(tgt["boxes"].tolist(), tgt["labels"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist()):
            results.append({"image_id": image_id, "category_id": label, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return 0.0
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[1])


def test_small_model_overfits_synthetic_images_to_ap50_of_one():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [
        _scene(rng, 150, 160, [(1, (12, 18, 70, 76)), (2, (94, 25, 144, 125))]),
        _scene(rng, 160, 125, [(2, (18, 12, 56, 38)), (1, (38, 75, 112, 150))]),
        _scene(rng, 140, 160, [(1, (112, 12, 136, 36)), (2, (12, 62, 88, 125)), (1, (94, 75, 150, 132))]),
    ]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    cfg = FasterRCNNConfig()
    cfg.backbone.depth, cfg.backbone.width = 18, 16
    cfg.backbone.norm, cfg.backbone.gn_groups, cfg.backbone.trainable_stages = "gn", 8, 5
    cfg.fpn.out_channels = 32
    cfg.anchors.sizes = (16, 32, 64, 128, 256)  # objects of 24..112 px
    cfg.roi_heads.representation_size = 128
    cfg.roi_heads.batch_size_per_image = 64
    cfg.rpn.batch_size_per_image = 128
    cfg.rpn.pre_nms_top_n_train, cfg.rpn.post_nms_top_n_train = 500, 200
    cfg.rpn.pre_nms_top_n_test, cfg.rpn.post_nms_top_n_test = 300, 100
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = 160, 192, (160,)
    model = FasterRCNNFPN(num_classes=3, config=cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    warmup = 20
    ap50 = 0.0
    for step in range(1, 301):
        for group in optimizer.param_groups:
            group["lr"] = 0.02 * min(1.0, step / warmup)
        model.train()
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step >= 40 and step % 10 == 0:
            model.eval()
            with torch.no_grad():
                ap50 = _ap50(model(images), targets)
            if ap50 == 1.0:
                break
    assert ap50 == 1.0, f"AP50 {ap50:.3f} after {step} steps; last losses { {k: round(v.item(), 3) for k, v in losses.items()} }"
