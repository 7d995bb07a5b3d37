"""The two detectors the benchmark compares - ours and torchvision's, with the same weights - and their inputs.

`--arch faster_rcnn` (the default): torchvision's `fasterrcnn_resnet50_fpn` and our FasterRCNNFPN; `--arch mask_rcnn`:
its `maskrcnn_resnet50_fpn` (v1) and our MaskRCNNFPN. The torchvision model is seeded random and built as the builder
builds it with weights="COCO_V1" (FrozenBatchNorm2d, stem and layer1 frozen) - which is what `from_torchvision`
builds; with weights=None torchvision would switch to trainable BatchNorm2d in every layer instead. Ours is
`<Ours>.from_torchvision(tv_model.state_dict())`. Ten classifier biases are raised so that each RoI scores
~0.07 for those classes: detections pass the 0.05 threshold and NMS works on ~10 boxes per RoI, as with a trained
model on a busy image (both models return 100 detections per image; the report shows it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fpn import FasterRCNNFPN, MaskRCNNFPN

ARCHS = ("faster_rcnn", "mask_rcnn")


@dataclass
class Settings:
    height: int = 800
    width: int = 1333
    throughput_batch: int = 8
    train_batch: int = 2
    boxes_per_image: int = 4
    warmup: int = 1
    repeats: int = 3
    seed: int = 0


QUICK = Settings(height=256, width=320, throughput_batch=2, train_batch=2, boxes_per_image=3, warmup=0, repeats=1)


def build_models(settings: Settings, arch: str = "faster_rcnn"):
    """(ours, torchvision's) of `arch` in eval mode on the CPU, identical seeded random weights, both using the
    inputs at their own size."""
    return build_pair(arch, min(settings.height, settings.width), max(settings.height, settings.width), settings.seed)


def build_pair(arch: str, min_size: int, max_size: int, seed: int = 0):
    """(ours, torchvision's) of `arch` in eval mode on the CPU with identical seeded random weights, both resizing
    images to a shorter side of min_size (the longer side at most max_size), in training too."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    mask = arch == "mask_rcnn"
    tv = (MaskRCNN if mask else FasterRCNN)(backbone, num_classes=91, min_size=min_size, max_size=max_size)
    with torch.no_grad():  # ten classes at +3: softmax ~ e^3 / (10 e^3 + 81) ~ 0.07 each, above 0.05
        tv.roi_heads.box_predictor.cls_score.bias[1:11] = 3.0
        if mask:  # mask logits of std ~3, a trained model's spread; kaiming's give ~80, whose saturated sigmoids
            # have denormal gradients (10x slower on the CPU)
            g = torch.Generator().manual_seed(seed + 1)
            tv.roi_heads.mask_predictor.mask_fcn_logits.weight.normal_(0, 0.0025, generator=g)
    ours = (MaskRCNNFPN if mask else FasterRCNNFPN).from_torchvision(tv.state_dict())
    ours.config.input.min_size = min_size
    ours.config.input.max_size = max_size
    ours.config.input.train_min_sizes = (min_size,)
    return ours.eval(), tv.eval()


def make_batch(settings: Settings, n: int, device: torch.device, offset: int = 0, masks: bool = False):
    """n seeded random images (3, H, W) in [0, 1] and targets with `boxes_per_image` boxes each (and with masks:
    a uint8 (k, H, W) `masks`, one blob inside each box)."""
    g = torch.Generator().manual_seed(settings.seed + 1000 + offset)
    h, w, k = settings.height, settings.width, settings.boxes_per_image
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.1 + 0.2 * torch.rand(k, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], dim=1)  # (k, 4) xyxy absolute pixels, inside the image
        labels = torch.randint(1, 91, (k,), generator=g)
        target = {"boxes": boxes.to(device), "labels": labels.to(device)}
        if masks:
            target["masks"] = instance_masks(boxes, h, w, g).to(device)
        targets.append(target)
    return images, targets


def instance_masks(boxes: torch.Tensor, height: int, width: int, g: torch.Generator, corners: int = 12):
    """uint8 (k, height, width): for each (x1, y1, x2, y2) box, a random star-shaped polygon inscribed in it (its
    `corners` vertices at seeded angles and 0.5-1 of the box's half-size from its centre), like an object's outline.

    A pixel centre is inside when its distance from the centre, in half-box units, is at most the outline's radius
    at its angle (linear between the two vertices around it). Only each box's pixels are computed.
    """
    out = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    step = 2 * math.pi / corners
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        radii = 0.5 + 0.5 * torch.rand(corners, generator=g)  # (C,) the vertices' radii
        left, top = max(int(x1), 0), max(int(y1), 0)
        right, bottom = min(math.ceil(x2), width), min(math.ceil(y2), height)
        yy, xx = torch.meshgrid(torch.arange(top, bottom) + 0.5, torch.arange(left, right) + 0.5, indexing="ij")
        dx, dy = (xx - (x1 + x2) / 2) / ((x2 - x1) / 2), (yy - (y1 + y2) / 2) / ((y2 - y1) / 2)
        angle = torch.atan2(dy, dx).remainder(2 * math.pi) / step  # (h, w) in [0, C), vertex units
        low = angle.floor().long().clamp(max=corners - 1)
        frac = angle - low
        outline = radii[low] * (1 - frac) + radii[(low + 1) % corners] * frac
        out[i, top:bottom, left:right] = (dx.hypot(dy) <= outline).to(torch.uint8)
    return out


def memory_formats(ours, device: torch.device, precision: str):
    """(ours, torchvision's) weight memory formats, always the same for both (like for like): channels-last on the
    CPU (oneDNN's fast layout, in fp32 as in bf16) and where our config asks for it, NCHW otherwise."""
    nhwc = device.type == "cpu" or ours.config.channels_last
    layout = torch.channels_last if nhwc else torch.contiguous_format
    return layout, layout
