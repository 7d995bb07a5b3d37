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
        _scene(rng, 240, 256, [(1, (20, 30, 110, 120)), (2, (150, 40, 230, 200))]),
        _scene(rng, 256, 200, [(2, (30, 20, 90, 60)), (1, (60, 120, 180, 240))]),
        _scene(rng, 224, 256, [(1, (180, 20, 216, 56)), (2, (20, 100, 140, 200)), (1, (150, 120, 240, 210))]),
    ]
    images, targets = [d[0] for d in data], [d[1] for d in data]
    cfg = FasterRCNNConfig()
    cfg.backbone.depth, cfg.backbone.width = 18, 32
    cfg.backbone.norm, cfg.backbone.gn_groups, cfg.backbone.trainable_stages = "gn", 16, 5
    cfg.fpn.out_channels = 64
    cfg.roi_heads.representation_size = 256
    cfg.roi_heads.batch_size_per_image = 128
    cfg.rpn.post_nms_top_n_train = 500
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = 224, 320, (224,)
    model = FasterRCNNFPN(num_classes=3, config=cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    warmup = 50
    ap50 = 0.0
    for step in range(1, 401):
        for group in optimizer.param_groups:
            group["lr"] = 0.02 * min(1.0, step / warmup)
        model.train()
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                ap50 = _ap50(model(images), targets)
            if ap50 == 1.0:
                break
    assert ap50 == 1.0, f"AP50 {ap50:.3f} after {step} steps; last losses { {k: round(v.item(), 3) for k, v in losses.items()} }"
