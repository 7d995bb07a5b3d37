"""--mask-memory: Mask R-CNN's training memory at COCO scale, ours next to torchvision's (issue: 50 instances at
800x1333 must not need 50 full-resolution float masks per image per step).

torchvision's GeneralizedRCNNTransform resizes every instance mask of an image to the model's input size through
float32 (`F.interpolate(masks[:, None].float(), ...)[:, 0].byte()`), and its `project_masks_on_boxes` converts those
to float32 again to RoIAlign the positives' 28x28 targets: per image of 50 instances at 800x1066, 170 MB of float
masks, twice. Ours (`fpn.ops.masks.mask_targets`) reads the uint8 masks at their original size, a window around
each positive RoI, a bounded chunk of windows at a time.

For each original size (default 480x640, resized to 800x1066, and 800x1333, kept), on `batch` images of `instances`
instances each (masks: fpn's blobs, benchmarks.models.instance_masks), same weights (frozen BN as with COCO weights),
ours and torchvision's alternating:
  * one training step (forward, backward, SGD step): the time and the peak resident-set growth (as the main table:
    benchmarks/measure.py), then once each the peak of tensor memory (the profiler's allocation events);
  * the mask-target step alone on `positives` proposals per image (the box sampler's 512 x 0.25) around the
    instances: ours mask_targets; torchvision the transform's mask resize of every image, then
    project_masks_on_boxes: time and peak tensor memory, and how far apart the two targets are.
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F

from benchmarks.measure import measure_pair, peak_mib, timed_pair
from benchmarks.models import build_pair, instance_masks, memory_formats
from benchmarks.side_by_side import result_row, train_step_fn
from fpn.ops.masks import mask_targets


@dataclass
class MaskMemorySettings:
    originals: Tuple[Tuple[int, int], ...] = ((480, 640), (800, 1333))  # (H0, W0) of the images as loaded
    min_size: int = 800  # both models resize to this shorter side ...
    max_size: int = 1333  # ... the longer at most this (torchvision's defaults)
    batch: int = 2
    instances: int = 50  # per image; COCO images hold up to ~50 after crowd filtering
    positives: int = 128  # positive RoIs per image in the mask-target step: the sampler's 512 x 0.25
    warmup: int = 1
    repeats: int = 3
    seed: int = 0


QUICK_MASK_MEMORY = MaskMemorySettings(originals=((96, 128),), min_size=160, max_size=266, instances=10, positives=32,
                                       warmup=0, repeats=1)


def coco_like_batch(settings: MaskMemorySettings, size: Tuple[int, int], offset: int = 0):
    """`batch` seeded images (3, H0, W0) in [0, 1] and targets of `instances` boxes each, sides log-uniform from 3%
    to 50% of the image's (COCO's spread of small to large objects), each with a blob mask, uint8 at (H0, W0)."""
    g = torch.Generator().manual_seed(settings.seed + 2000 + offset)
    height, width = size
    scale = torch.tensor([width, height], dtype=torch.float32)
    images, targets = [], []
    for _ in range(settings.batch):
        images.append(torch.rand(3, height, width, generator=g))
        wh = torch.exp(math.log(0.03) + math.log(0.5 / 0.03) * torch.rand(settings.instances, 2, generator=g)) * scale
        xy = torch.rand(settings.instances, 2, generator=g) * (scale - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)  # (G, 4) xyxy original-image pixels, inside the image
        labels = torch.randint(1, 91, (settings.instances,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": instance_masks(boxes, height, width, g)})
    return images, targets


def positive_rois(settings: MaskMemorySettings, targets, resized: Tuple[int, int], original: Tuple[int, int]):
    """Per image, `positives` proposals (P, 4) xyxy in resized-image pixels, each its instance's box scaled to the
    resized image and moved by up to 10% of its size (IoU > 0.5, as the sampler's positives), and (P,) int64 the
    instance each matched."""
    g = torch.Generator().manual_seed(settings.seed + 3000)
    ratio = torch.tensor([resized[1] / original[1], resized[0] / original[0]] * 2)
    rois = []
    for target in targets:
        matched = torch.arange(settings.positives) % len(target["boxes"])
        boxes = target["boxes"][matched] * ratio  # (P, 4) resized-image pixels
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + 0.1 * (2 * torch.rand(boxes.shape, generator=g) - 1) * wh
        limit = torch.tensor([resized[1], resized[0]] * 2, dtype=torch.float32)
        rois.append((torch.minimum(boxes.clamp(min=0), limit), matched))
    return rois


def target_step_fns(targets, rois, resized: Tuple[int, int], device: torch.device):
    """(ours, torchvision's) mask-target step of the whole batch: each returns the (sum P, 28, 28) targets."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    def ours():
        return torch.cat([mask_targets(t["masks"], resized, boxes, matched, 28)
                          for t, (boxes, matched) in zip(targets, rois)])

    def torchvision():
        # transform.py, _resize_image_and_masks: every image's masks are resized before the model runs (its
        # scale_factor with recompute_scale_factor=True gives this size), and held until the RoI heads
        resized_masks = [F.interpolate(t["masks"][:, None].float(), size=resized)[:, 0].byte() for t in targets]
        return torch.cat([project_masks_on_boxes(masks, boxes, matched, 28)
                          for masks, (boxes, matched) in zip(resized_masks, rois)])

    return ours, torchvision


def measure_mask_memory(settings: MaskMemorySettings, device: torch.device):
    """(rows, checks): for every original size, the rows of the training step (ms, resident-set MiB, tensor MiB)
    and of the mask-target step (ms, tensor MiB); a check per size: how far apart the two models' targets are."""
    ours, tv = build_pair("mask_rcnn", settings.min_size, settings.max_size, settings.seed)
    snapshots = [{k: v.clone() for k, v in m.state_dict().items()} for m in (ours, tv)]
    rows, checks = [], []
    for index, original in enumerate(settings.originals):
        for model, snapshot, layout in zip((ours, tv), snapshots, memory_formats(ours, device, "fp32")):
            model.load_state_dict(snapshot)  # every size starts from the same weights
            model.to(device=device, memory_format=layout)
        images, targets = coco_like_batch(settings, original, offset=index)
        resized = tuple(tv.transform.resize(images[0], None)[0].shape[-2:])  # torchvision's size, ours the same
        rois = positive_rois(settings, targets, resized, original)
        label = f"{original[0]}x{original[1]} -> {resized[0]}x{resized[1]}, {settings.instances} instances"
        print(f"measuring {device.type} {label} ...", file=sys.stderr, flush=True)
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        rois = [(boxes.to(device), matched.to(device)) for boxes, matched in rois]
        size_rows, difference = _measure_size(ours, tv, images, targets, rois, resized, settings, device)
        rows += [{**row, "images": label} for row in size_rows]
        checks.append({"device": device.type, "images": label, "positives": sum(len(m) for _, m in rois),
                       "target_max_abs_difference": difference})
    for model, snapshot in zip((ours, tv), snapshots):
        model.load_state_dict(snapshot)
        model.zero_grad(set_to_none=True)
        model.eval()
    return rows, checks


def _measure_size(ours, tv, images, targets, rois, resized, settings: MaskMemorySettings, device: torch.device):
    """The five rows of one batch (ours, torchvision's alternating) and the largest target difference."""
    w, r, n = settings.warmup, settings.repeats, settings.batch
    for model in (ours, tv):
        model.train()
    steps = [train_step_fn(m, images, targets, contextlib.nullcontext) for m in (ours, tv)]
    step_time, step_rss = measure_pair(steps[0], steps[1], device, w, r)
    step_tensors = [peak_mib(step, device) for step in steps]  # once each: memory does not vary between runs
    fns = target_step_fns(targets, rois, resized, device)
    target_ms = timed_pair(fns[0], fns[1], device, w, r)
    target_tensors = [peak_mib(fn, device) for fn in fns]
    difference = (fns[0]() - fns[1]()).abs().max().item()
    metrics = [
        (f"training step, batch {n}", "ms", "lower", [t * 1000 for t in step_time]),
        (f"peak memory, training step batch {n}", "MiB", "lower", step_rss),
        (f"peak tensor memory, training step batch {n}", "MiB", "lower", step_tensors),
        (f"mask targets, batch {n}", "ms", "lower", list(target_ms)),
        (f"peak tensor memory, mask targets batch {n}", "MiB", "lower", target_tensors),
    ]
    return [result_row(device, "fp32", *metric) for metric in metrics], difference
