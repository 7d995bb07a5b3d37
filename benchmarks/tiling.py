"""--tiling: recall of small objects in a large image, whole-image inference against tiled (`model.predict(...,
tile=SIZE, overlap=F)`, fpn/detectors/tiling.py), and the time per image (issue "Your own data": small objects in
large images).

    python scripts/benchmark.py --tiling --json runs/tiling.json   # 7-10 min on 2 CPU cores
    python scripts/benchmark.py --tiling --quick                   # 1 min smoke test: 60 steps find nothing yet

The detector is trained here, seeded, on what tiling is for: cpu-demo's model (narrow ResNet-18 + GroupNorm +
FPN, inputs resized to 256 px) on 256x256 images of small synthetic shapes (12-32 px, fpn/data/synthetic.py's
`shape_mask`), a few hundred SGD steps. It is then run on large scenes of the same shapes (e.g. 1536x1536, ~150
objects): whole (downscaled 6x to 256 px, objects of 2-5 px) and tiled at 256 px (the training scale) and 512 px
(0.5x) with two overlaps, cut objects dropped or kept (the choice of `tile_drop_edge`'s default), and once without
the whole-image pass. Recall: the
share of objects matched by a detection of their class with IoU >= 0.5 (each detection matches one object, best
score first); precision at the same score threshold; both over all classes. The trained model's own quality
(recall on 256 px test images) is printed first, so a weak model is seen as such.

Measured on the 2-core "Intel(R) Xeon(R) Processor", 1 torch thread, shared with other jobs (times are rough):
at 256 px the model finds 120/120 objects (precision 0.945); on the 1536 px scenes the whole image finds 0/300
(0.11 s), 256 px tiles at overlap 0.25 find 299/300 (precision 0.815, 5.5 s: 64 tiles), 512 px tiles 147/300
(objects at half the training scale, 1.5 s). Keeping cut objects: recall 1.000, precision 0.701.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmarks.report import machine_info
from fpn.data.synthetic import SHAPE_NAMES, shape_mask
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.engine.presets import cpu_demo
from fpn.ops.boxes import box_iou

NUM_CLASSES = 3  # circle, square, triangle (+ background)


@dataclass
class TilingSettings:
    train_iters: int = 400  # SGD steps of the detector trained here
    train_batch: int = 4  # 256x256 images per step
    scene_size: int = 1536  # side of the large test scenes, px
    scenes: int = 2  # test scenes
    objects_per_scene: int = 150  # shapes drawn per scene (fewer when they do not fit)
    object_sizes: Tuple[int, int] = (12, 32)  # longer side of a shape, px
    tiles: Tuple[Tuple[int, float], ...] = ((256, 0.25), (256, 0.125), (512, 0.25))  # (tile, overlap) runs
    score_threshold: float = 0.5  # detections counted in recall and precision
    seed: int = 0


QUICK_TILING = TilingSettings(train_iters=60, scene_size=640, scenes=1, objects_per_scene=30,
                              tiles=((256, 0.25),))


def draw_scene(rng: np.random.Generator, size: int, count: int, sizes: Tuple[int, int]) -> Tuple[torch.Tensor,
                                                                                                  torch.Tensor,
                                                                                                  torch.Tensor]:
    """A size x size image of `count` shapes (fewer if they do not fit) that do not touch, on a noisy gradient.

    Returns:
        image float (3, size, size) in [0, 1], boxes (M, 4) float xyxy pixels (tight), labels (M,) int64 in 1..3.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    tilt = rng.uniform(-40, 40, size=(2, 3)).astype(np.float32)
    canvas = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]  # (H, W, 3)
    taken = np.zeros((size, size), dtype=bool)
    boxes, labels = [], []
    for _ in range(count * 5):
        if len(boxes) == count:
            break
        label = int(rng.integers(1, NUM_CLASSES + 1))
        w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if taken[max(0, y0 - 3):y0 + h + 3, max(0, x0 - 3):x0 + w + 3].any():
            continue
        mask = shape_mask(SHAPE_NAMES[label - 1], w, h, rng)  # (h, w) bool, touching its box's four sides
        region = canvas[y0:y0 + h, x0:x0 + w]
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(70, 110, size=3)
        region[mask] = np.clip(region[mask].mean(axis=0) + shift, 0, 255)
        taken[y0:y0 + h, x0:x0 + w] = True
        boxes.append([x0, y0, x0 + w, y0 + h])
        labels.append(label)
    canvas += rng.normal(0.0, 5.0, size=canvas.shape).astype(np.float32)
    image = torch.from_numpy(np.clip(canvas, 0, 255) / 255.0).permute(2, 0, 1).float().contiguous()
    return image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64)


def train_detector(settings: TilingSettings) -> FasterRCNNFPN:
    """cpu-demo's Faster R-CNN trained (seeded) on 256x256 images of small shapes; returned in eval mode, with
    room for every object of a large scene (detections_per_img, RPN proposals)."""
    preset = cpu_demo()
    config = preset.model
    torch.manual_seed(settings.seed)
    model = FasterRCNNFPN(num_classes=NUM_CLASSES + 1, config=config).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=preset.lr, momentum=preset.momentum, weight_decay=preset.weight_decay)
    warmup = max(1, settings.train_iters // 8)
    rng = np.random.default_rng(settings.seed)
    for step in range(settings.train_iters):
        factor = min(1.0, 0.01 + step / warmup) * (0.1 if step >= 0.8 * settings.train_iters else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = preset.lr * factor
        scenes = [draw_scene(rng, 256, int(rng.integers(2, 9)), settings.object_sizes)
                  for _ in range(settings.train_batch)]
        losses = model([image for image, _, _ in scenes],
                       [{"boxes": boxes, "labels": labels} for _, boxes, labels in scenes])
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(params, preset.clip_grad_norm)
        optimizer.step()
    resolved = model.config  # the model's own copy of the config
    resolved.roi_heads.detections_per_img = 1000  # a scene holds ~150 objects: the default 100 would cap recall
    resolved.rpn.pre_nms_top_n_test = resolved.rpn.post_nms_top_n_test = 1000
    return model.eval()


def match_counts(detection: Dict[str, torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor,
                 score_threshold: float) -> Tuple[int, int, int]:
    """(objects matched, detections kept, objects): greedy by score, IoU >= 0.5 with an unmatched object of
    the detection's class."""
    keep = detection["scores"] >= score_threshold
    pred_boxes, pred_labels = detection["boxes"][keep], detection["labels"][keep]
    iou = box_iou(pred_boxes, boxes)  # (D, M)
    iou[pred_labels[:, None] != labels[None, :]] = 0.0
    matched = torch.zeros(len(boxes), dtype=torch.bool)
    for row in iou:  # the detections are sorted by decreasing score
        row = row.masked_fill(matched, 0.0)
        best = int(row.argmax()) if len(row) else 0
        if len(row) and row[best] >= 0.5:
            matched[best] = True
    return int(matched.sum()), int(keep.sum()), len(boxes)


def evaluate(model: FasterRCNNFPN, scenes: Sequence, settings: TilingSettings, **tiling) -> dict:
    """Recall, precision and seconds per image of `model.predict(image, **tiling)` over the scenes."""
    matched = kept = total = 0
    seconds = []
    for image, boxes, labels in scenes:
        start = time.perf_counter()
        detection = model.predict(image, **tiling)[0]
        seconds.append(time.perf_counter() - start)
        m, k, t = match_counts(detection, boxes, labels, settings.score_threshold)
        matched, kept, total = matched + m, kept + k, total + t
    return {"recall": matched / max(total, 1), "precision": matched / max(kept, 1), "objects": total,
            "detections": kept, "seconds_per_image": float(np.median(seconds))}


def measure_tiling(settings: TilingSettings) -> dict:
    """Train, then every row: the model's own recall at 256 px, whole-image and each tiled configuration."""
    start = time.perf_counter()
    model = train_detector(settings)
    train_seconds = time.perf_counter() - start
    rng = np.random.default_rng(settings.seed + 1)
    small = [draw_scene(rng, 256, 6, settings.object_sizes) for _ in range(20)]
    scenes = [draw_scene(rng, settings.scene_size, settings.objects_per_scene, settings.object_sizes)
              for _ in range(settings.scenes)]
    rows: List[dict] = [{"run": "256 px test images (training scale)", **evaluate(model, small, settings)},
                        {"run": "whole image", **evaluate(model, scenes, settings)}]
    for size, overlap in settings.tiles:
        for drop_edge in (True, False):
            name = f"tile {size}, overlap {overlap}, cut objects {'dropped' if drop_edge else 'kept'}"
            rows.append({"run": name, "tile": size, "overlap": overlap, "drop_edge": drop_edge,
                         **evaluate(model, scenes, settings, tile=size, overlap=overlap, tile_drop_edge=drop_edge)})
    size, overlap = settings.tiles[0]  # what the whole-image pass adds: the same tiles without it
    rows.append({"run": f"tile {size}, overlap {overlap}, cut objects dropped, no whole image", "tile": size,
                 "overlap": overlap, "drop_edge": True, "whole": False,
                 **evaluate(model, scenes, settings, tile=size, overlap=overlap, tile_whole=False)})
    return {"machine": machine_info(), "settings": asdict(settings), "train_seconds": train_seconds, "rows": rows}


def tiling_markdown(report: dict) -> str:
    """The rows as a Markdown table."""
    settings = report["settings"]
    lines = [f"Tiled inference, {report['machine']['cpu']} ({report['machine']['torch_threads']} torch threads); "
             f"detector trained {settings['train_iters']} steps ({report['train_seconds']:.0f} s); "
             f"{settings['scenes']} scene(s) {settings['scene_size']}x{settings['scene_size']}, objects "
             f"{settings['object_sizes'][0]}-{settings['object_sizes'][1]} px, score >= {settings['score_threshold']}.",
             "", "| run | recall | precision | objects | detections | s / image |", "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['run']} | {row['recall']:.3f} | {row['precision']:.3f} | {row['objects']} | "
                     f"{row['detections']} | {row['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def run_tiling(settings: TilingSettings, json_path: Optional[str]) -> int:
    """--tiling: measure, print the table and the JSON, write the JSON to json_path when given."""
    report = measure_tiling(settings)
    print(tiling_markdown(report))
    text = json.dumps(report, indent=2)
    print(text)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0
