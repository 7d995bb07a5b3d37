"""A labelled set as the model about to train on it sees it: images, instances per class, box sizes and objects
per image at the model's input scale, the pyramid level each box maps to and the best IoU any RPN anchor reaches.

Everything is measured at the test input size (`config.input.min_size` / `max_size`), as the model's transform
resizes (fpn/detectors/transform.py: scale = min(min_size / short side, max_size / long side), size floored, boxes
times float32 size ratios); training draws the shorter side from `train_min_sizes` instead. fpn.data may not build
the model, so the pyramid is read from the config as the detectors wire it (tests/test_data_statistics.py checks
the two against each other):

    model                    boxes map to (level)                          RPN anchors on (stride: sizes)
    Faster / Mask R-CNN fpn  P2..P5 by Eq. (1) (assign_fpn_levels)         P2..P6 (4..64): one size each
    variants c4, c5, p2_only the one map (C4, C5, P2)                      that map: every size
    MobileNetV3 trunk        P4 (its first stride-32 map)                  P4, P5 (32), P6 (64): every size
    FCOS                     P3..P7 by the size of interest, max(w, h) / 2 no anchors

Best anchor IoU: the anchors of one shape (level, ratio, size) sit on a grid; the overlap of an anchor with a box is
(overlap in x) * (overlap in y), each the overlap of two intervals, which is largest when their centres align and
shrinks as they move apart. So the best anchor of a shape is the grid point nearest the box's centre in each axis:
two candidate columns times two rows per shape, exact, with no anchor set built (5 x 3 shapes: 60 IoUs per box).
Shape shorthand: K boxes, n images, S anchor shapes of a level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from fpn.config import EVERY_SIZE_ON_EVERY_LEVEL, FasterRCNNConfig, FCOSConfig, InputConfig
from fpn.errors import InputError
from fpn.data.statistics_text import report_lines
from fpn.ops import AnchorGenerator, assign_fpn_levels, box_iou

FCOS_STRIDES = (8, 16, 32, 64, 128)  # FCOS's P3..P7 (fpn/detectors/fcos.py: C3..C5 and two stride-2 convs)
WORST_KEPT = 1000  # poorly covered boxes kept in the JSON (the worst; the counts cover them all)


@dataclass(frozen=True)
class Pyramid:
    """What of the model's pyramid the statistics need."""

    level_names: Tuple[str, ...]  # the maps boxes are assigned to, finest first ("p2".."p5", "c4", ...)
    first_level: int  # with several maps: Eq. (1)'s min_level (P2: 2; FCOS: 3); the maps are consecutive levels
    anchor_strides: Tuple[int, ...] = ()  # stride of each RPN map; () for FCOS
    anchor_sizes: Tuple[Tuple[float, ...], ...] = ()  # anchor sizes on each RPN map
    aspect_ratios: Tuple[float, ...] = ()


def model_pyramid(config) -> Pyramid:
    """The pyramid of the detector `config` builds (FasterRCNNConfig, MaskRCNNConfig or FCOSConfig)."""
    if isinstance(config, FCOSConfig):
        return Pyramid(tuple(f"p{int(math.log2(s))}" for s in FCOS_STRIDES), 3)
    sizes, variant = tuple(config.anchors.sizes), config.variant
    if variant in ("c4", "c5", "p2_only"):  # one map carries every anchor size and every RoI
        name, stride = {"c4": ("c4", 16), "c5": ("c5", 32), "p2_only": ("p2", 4)}[variant]
        return Pyramid((name,), int(name[1]), (stride,), (sizes,), tuple(config.anchors.aspect_ratios))
    every = config.anchors.every_size_on_every_level
    if config.backbone.name in EVERY_SIZE_ON_EVERY_LEVEL:  # C4 and C5 both at stride 32, then P6
        strides, pooled, every = (32, 32, 64), ("p4",), True if every is None else every
    else:
        strides, pooled = (4, 8, 16, 32, 64), ("p2", "p3", "p4", "p5")
    if every:
        per_map = (sizes,) * len(strides)
    elif len(sizes) == len(strides):
        per_map = tuple((s,) for s in sizes)
    else:
        raise InputError(f"config.anchors.sizes {sizes} must give one size per RPN level ({len(strides)})")
    return Pyramid(pooled, int(pooled[0][1]), strides, per_map, tuple(config.anchors.aspect_ratios))


def resized_sizes(heights: np.ndarray, widths: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """(n, 2) int64 (h, w) after the model's resize of images (n,) heights x (n,) widths: floor(side * scale) with
    scale = min(min_size / short side, max_size / long side), in float64 as resize_image computes it."""
    h, w = heights.astype(np.float64), widths.astype(np.float64)
    scale = np.minimum(min_size / np.minimum(h, w), max_size / np.maximum(h, w))
    return np.stack([np.floor(h * scale), np.floor(w * scale)], axis=1).astype(np.int64)


def scale_to_input(boxes: np.ndarray, original_hw: np.ndarray, resized_hw: np.ndarray) -> np.ndarray:
    """(K, 4) float32 xyxy boxes of images (K, 2) `original_hw` -> the resized frame, per axis times the float32
    ratio new / old (the transform's scale_boxes)."""
    ratio = resized_hw.astype(np.float32) / original_hw.astype(np.float32)  # (K, 2) (h, w)
    return boxes * np.stack([ratio[:, 1], ratio[:, 0], ratio[:, 1], ratio[:, 0]], axis=1)


def box_levels(boxes: torch.Tensor, pyramid: Pyramid, config) -> torch.Tensor:
    """(K,) int64 index into pyramid.level_names of each (K, 4) input-scale box: Eq. (1) for the RoI heads
    (assign_fpn_levels), FCOS's size of interest for FCOS (a location's longest distance to the box sides; the
    box's centre location has max(w, h) / 2), on the lower level where it equals a bound."""
    if isinstance(config, FCOSConfig):
        half = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2  # (K,)
        upper = torch.tensor([8.0 * s for s in FCOS_STRIDES[:-1]], dtype=half.dtype)  # (0, 64), (64, 128), ...
        return torch.bucketize(half, upper)
    if len(pyramid.level_names) == 1:
        return torch.zeros(len(boxes), dtype=torch.int64)
    last = pyramid.first_level + len(pyramid.level_names) - 1
    levels = assign_fpn_levels(boxes, pyramid.first_level, last, config.roi_heads.canonical_scale,
                               config.roi_heads.canonical_level)
    return levels - pyramid.first_level


def best_anchor_iou(boxes: torch.Tensor, padded_hw: torch.Tensor, pyramid: Pyramid) -> torch.Tensor:
    """The highest IoU each box reaches with any RPN anchor of its image (max over AnchorGenerator's anchors).

    Args:
        boxes: (K, 4) float32 xyxy at input scale.
        padded_hw: (K, 2) int64 padded size (Hp, Wp) of each box's image (a batch of that image alone).
        pyramid: the anchors (strides, sizes per map, ratios).
    Returns:
        (K,) float32.
    """
    generator = AnchorGenerator(pyramid.anchor_sizes, (pyramid.aspect_ratios,) * len(pyramid.anchor_sizes))
    best = torch.zeros(len(boxes), dtype=torch.float32)
    for stride, cell in zip(pyramid.anchor_strides, generator.cell_anchors):  # cell (S, 4) centred on (0, 0)
        grid = -(-padded_hw // stride)  # (K, 2) map size: stride-2 layers round up; (Hl, Wl)
        step = padded_hw // grid  # (K, 2) AnchorGenerator's stride: padded size // map size
        corners = []
        for axis in (0, 1):  # x, then y
            cell_center = (cell[:, axis] + cell[:, axis + 2]) / 2  # (S,)
            center = (boxes[:, axis] + boxes[:, axis + 2]) / 2  # (K,)
            along = step[:, 1 - axis, None]  # (K, 1) stride along this axis
            first = torch.floor((center[:, None] - cell_center[None, :]) / along).to(torch.int64)  # (K, S)
            index = torch.stack([first, first + 1], dim=2).clamp(min=0)  # (K, S, 2)
            index = torch.minimum(index, grid[:, 1 - axis, None, None] - 1)
            shift = (index * along[:, :, None]).to(torch.float32)  # (K, S, 2) grid positions in pixels
            corners.append((shift + cell[None, :, axis, None], shift + cell[None, :, axis + 2, None]))
        (x1, x2), (y1, y2) = corners  # each (K, S, 2)
        anchors = torch.stack(torch.broadcast_tensors(x1[..., :, None], y1[..., None, :], x2[..., :, None],
                                                      y2[..., None, :]), dim=-1)  # (K, S, 2, 2, 4)
        iou = box_iou(boxes[:, None, :], anchors.reshape(len(boxes), -1, 4))  # (K, 1, S*4)
        best = torch.maximum(best, iou.amax(dim=(1, 2)))
    return best


@dataclass
class DatasetReport:
    """The numbers of `describe_dataset`; arrays are per kept object (K boxes) or per image (n)."""

    arch: str  # faster_rcnn, mask_rcnn or fcos
    input: InputConfig  # the sizes the numbers are at: min_size / max_size (test), train_min_sizes noted
    num_images: int
    num_crowd: int  # iscrowd annotations, left out (never matched, as in training)
    num_dropped: int  # boxes empty after clipping to their image, left out as the training set does
    class_names: List[str]  # by category id
    instances_per_class: List[int]
    objects_per_image: np.ndarray  # (n,) int64
    box_labels: np.ndarray  # (K,) int64 index into class_names
    box_sizes: np.ndarray  # (K,) float32 sqrt(w * h) at input scale, px
    level_names: List[str]  # the maps boxes are assigned to ("p2".."p5"; FCOS "p3".."p7")
    levels: np.ndarray  # (K,) int64 index into level_names
    anchor_sizes: Tuple[float, ...]  # every RPN anchor size; () for FCOS
    fg_iou_thresh: Optional[float]  # the RPN's positive / negative thresholds; None for FCOS
    bg_iou_thresh: Optional[float]
    best_iou: Optional[np.ndarray]  # (K,) float32 best anchor IoU of each box; None for FCOS
    poorly_covered: List[dict] = field(default_factory=list)  # best IoU < fg_iou_thresh, worst first

    @property
    def level_counts(self) -> np.ndarray:
        """(classes, levels) int64: how many boxes of each class map to each level."""
        counts = np.zeros((len(self.class_names), len(self.level_names)), dtype=np.int64)
        np.add.at(counts, (self.box_labels, self.levels), 1)
        return counts

    def count_below(self, threshold: float) -> int:
        return 0 if self.best_iou is None else int((self.best_iou < threshold).sum())

    def text(self) -> str:
        """A compact table for the log (about 25 lines however many classes)."""
        return "\n".join(report_lines(self))

    def to_json(self) -> dict:
        """Plain numbers: counts, histograms, per-class level counts, the WORST_KEPT worst-covered boxes."""
        sizes = self.box_sizes.astype(np.float64)
        size_edges = [0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, math.inf]
        out = {
            "arch": self.arch, "input": {"min_size": self.input.min_size, "max_size": self.input.max_size,
                                         "train_min_sizes": list(self.input.train_min_sizes)},
            "num_images": self.num_images, "num_objects": int(len(self.box_sizes)), "num_crowd": self.num_crowd,
            "num_dropped": self.num_dropped,
            "instances_per_class": dict(zip(self.class_names, self.instances_per_class)),
            "objects_per_image": {str(k): int(v) for k, v in enumerate(np.bincount(self.objects_per_image))},
            "box_size_histogram": {"edges_px": [str(e) for e in size_edges],
                                   "counts": np.histogram(sizes, size_edges)[0].tolist()},
            "levels": self.level_names,
            "level_counts": {name: row.tolist() for name, row in zip(self.class_names, self.level_counts)},
        }
        if self.best_iou is not None:
            out.update({"anchor_sizes": list(self.anchor_sizes), "fg_iou_thresh": self.fg_iou_thresh,
                        "bg_iou_thresh": self.bg_iou_thresh,
                        "best_iou_histogram": np.histogram(self.best_iou, 20, (0.0, 1.0))[0].tolist(),
                        "below_fg_iou_thresh": self.count_below(self.fg_iou_thresh),
                        "below_bg_iou_thresh": self.count_below(self.bg_iou_thresh),
                        "poorly_covered": self.poorly_covered[:WORST_KEPT]})
        return out


def describe_dataset(coco: dict, config, *, max_images: Optional[int] = None) -> DatasetReport:
    """Describe a labelled set for the model `config` builds, at its test input size.

    Args:
        coco: a COCO instances dict (images with width and height, annotations, categories).
        config: a FasterRCNNConfig, MaskRCNNConfig or FCOSConfig.
        max_images: describe only the first this many images (None: all).
    Returns:
        the DatasetReport.
    Raises:
        InputError: an image without a positive width / height or resized to nothing, a category without an id,
            an annotation with an unknown image or category or a malformed bbox (each named by its id).
    """
    if not isinstance(config, (FasterRCNNConfig, FCOSConfig)):
        raise InputError(f"config must be a FasterRCNNConfig, MaskRCNNConfig or FCOSConfig, got "
                         f"{type(config).__name__}")
    threads = torch.get_num_threads()
    # one thread: these element-wise ops are too small to share; on 2 busy cores two threads took 0.8-5 s for the
    # anchor IoUs of 40k boxes, one 0.14 s
    torch.set_num_threads(1)
    try:
        return _describe(_read_coco(coco, max_images), config)
    finally:
        torch.set_num_threads(threads)


def _describe(table: Dict[str, object], config) -> DatasetReport:
    pyramid = model_pyramid(config)
    hw = table["image_hw"]
    rows = table["rows"]
    resized = resized_sizes(hw[:, 0], hw[:, 1], config.input.min_size, config.input.max_size)  # (n, 2)
    if len(hw) and resized.min() < 1:
        i = int(np.flatnonzero(resized.min(axis=1) < 1)[0])
        raise InputError(f"image {table['file_names'][i]} of height, width {tuple(hw[i].astype(int).tolist())} "
                         f"resizes to {tuple(resized[i].tolist())} at min_size {config.input.min_size}, max_size "
                         f"{config.input.max_size}: no pixel left for the model")
    boxes = torch.from_numpy(scale_to_input(table["boxes"], hw[rows], resized[rows]))  # (K, 4) input scale
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    levels = box_levels(boxes, pyramid, config)
    best = None
    if pyramid.anchor_strides:
        divisible = config.input.size_divisible
        padded = torch.from_numpy(-(-resized // divisible) * divisible)  # (n, 2)
        best = torch.cat([best_anchor_iou(boxes[i:i + CHUNK], padded[rows[i:i + CHUNK]], pyramid)
                          for i in range(0, len(boxes), CHUNK)]) if len(boxes) else torch.zeros(0)
    labels = table["labels"]
    report = DatasetReport(
        arch=_arch(config), input=config.input, num_images=len(hw), num_crowd=table["num_crowd"],
        num_dropped=table["num_dropped"], class_names=table["class_names"],
        instances_per_class=np.bincount(labels, minlength=len(table["class_names"])).tolist(),
        objects_per_image=np.bincount(rows, minlength=len(hw)), box_labels=labels,
        box_sizes=torch.sqrt(widths * heights).numpy(), level_names=[n.upper() for n in pyramid.level_names],
        levels=levels.numpy(), anchor_sizes=tuple(sorted({s for level in pyramid.anchor_sizes for s in level})),
        fg_iou_thresh=None if best is None else config.rpn.fg_iou_thresh,
        bg_iou_thresh=None if best is None else config.rpn.bg_iou_thresh,
        best_iou=None if best is None else best.numpy(),
    )
    if best is not None:
        poor = np.flatnonzero(report.best_iou < report.fg_iou_thresh)
        poor = poor[np.argsort(report.best_iou[poor], kind="stable")]
        input_boxes = boxes[poor].double().numpy().round(2).tolist()  # float64: rounded values print as such
        ious = report.best_iou[poor].astype(np.float64).round(4).tolist()
        files, names = table["file_names"], table["class_names"]
        report.poorly_covered = [
            {"file_name": files[row], "annotation_id": table["ann_ids"][k], "category": names[label],
             "bbox": table["bbox"][k], "input_box": box, "best_iou": iou}
            for k, row, label, box, iou in zip(poor.tolist(), rows[poor].tolist(), labels[poor].tolist(),
                                               input_boxes, ious)]
    return report


CHUNK = 65536  # boxes per best_anchor_iou call: (CHUNK, S*4, 4) candidate anchors, ~12 MB a level


def _arch(config) -> str:
    if isinstance(config, FCOSConfig):
        return "fcos"
    return "mask_rcnn" if hasattr(config, "mask") else "faster_rcnn"


def _read_coco(coco: dict, max_images: Optional[int]) -> Dict[str, object]:
    """The kept objects of `coco` as arrays, checked; annotations of images past `max_images` are skipped."""
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise InputError("the COCO dict has no 'images' list")
    all_ids = {image.get("id") for image in coco["images"] if isinstance(image, dict)}
    images = coco["images"] if max_images is None else coco["images"][:max_images]
    row_of, hw, file_names = {}, [], []
    for image in images:
        size = (image.get("height"), image.get("width"))
        if not all(isinstance(v, (int, float)) and v > 0 for v in size):
            raise InputError(f"image id {image.get('id')} ({image.get('file_name')}) has height, width {size}: "
                             "expected positive numbers")
        row_of[image.get("id")] = len(hw)
        hw.append(size)
        file_names.append(image.get("file_name"))
    unnamed = [c for c in coco.get("categories") or [] if not isinstance(c, dict) or "id" not in c]
    if unnamed:
        raise InputError(f"category {unnamed[0]!r} has no id")
    categories = sorted(coco.get("categories") or [], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    rows, labels, ann_ids, bboxes = [], [], [], []
    num_crowd = 0
    for ann in coco.get("annotations") or []:
        ann_id, image_id = ann.get("id"), ann.get("image_id")
        if image_id not in row_of:
            if image_id in all_ids:
                continue  # an image past max_images
            raise InputError(f"annotation id {ann_id} has unknown image_id {image_id}")
        if ann.get("category_id") not in label_of:
            raise InputError(f"annotation id {ann_id} has category_id {ann.get('category_id')}, not among the "
                             f"categories {sorted(label_of)}")
        if ann.get("iscrowd", 0):
            num_crowd += 1
            continue
        rows.append(row_of[image_id])
        labels.append(label_of[ann["category_id"]])
        ann_ids.append(ann_id)
        bboxes.append(ann.get("bbox"))
    xywh = _checked_boxes(bboxes, ann_ids)  # (M, 4) float64
    size_hw = np.asarray(hw, dtype=np.float64).reshape(-1, 2)
    limit = size_hw[np.asarray(rows, dtype=np.int64)][:, [1, 0, 1, 0]]  # (M, 4) width, height, width, height
    # xyxy clipped to the image, as CocoDetection keeps it; boxes empty after that are dropped, as it drops them
    boxes = np.clip(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), 0.0, limit)
    kept = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    return {"image_hw": size_hw, "file_names": file_names, "rows": np.asarray(rows, dtype=np.int64)[kept],
            "labels": np.asarray(labels, dtype=np.int64)[kept], "boxes": boxes[kept].astype(np.float32),
            "ann_ids": [ann_ids[i] for i in kept], "bbox": [list(bboxes[i]) for i in kept],
            "class_names": [str(c.get("name", c["id"])) for c in categories], "num_crowd": num_crowd,
            "num_dropped": len(bboxes) - len(kept)}


def _checked_boxes(bboxes: List[object], ann_ids: List[object]) -> np.ndarray:
    """(M, 4) float64 [x, y, w, h] of every annotation's bbox; an InputError names the first malformed one."""
    try:
        xywh = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
        if len(xywh) != len(bboxes) or any(isinstance(b, (str, dict)) for b in bboxes):
            raise ValueError
        bad = np.flatnonzero(~np.isfinite(xywh).all(axis=1))
        if not len(bad):
            return xywh
    except (TypeError, ValueError):  # ragged, or not numbers: find the first
        bad = [i for i, b in enumerate(bboxes) if not isinstance(b, (list, tuple)) or len(b) != 4 or
               not all(isinstance(v, (int, float)) and math.isfinite(v) for v in b)]
    if len(bad):
        raise InputError(f"annotation id {ann_ids[bad[0]]} has bbox {bboxes[bad[0]]!r}, expected [x, y, width, height]")
    return np.array([[float(v) for v in b] for b in bboxes], dtype=np.float64).reshape(-1, 4)
