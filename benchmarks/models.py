"""The two detectors the benchmark compares - ours and torchvision's, with the same weights - and their inputs.

The torchvision model is seeded random and built as `fasterrcnn_resnet50_fpn(weights="COCO_V1")` builds it
(FrozenBatchNorm2d, stem and layer1 frozen) - which is what `FasterRCNNFPN.from_torchvision` builds; with weights=None
torchvision would switch to trainable BatchNorm2d in every layer instead. Ours is
`FasterRCNNFPN.from_torchvision(tv_model.state_dict())`. Ten classifier biases are raised so that each RoI scores
~0.07 for those classes: detections pass the 0.05 threshold and NMS works on ~10 boxes per RoI, as with a trained
model on a busy image (both models return 100 detections per image; the report shows it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fpn import FasterRCNNFPN


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


def build_models(settings: Settings):
    """(ours, torchvision's) in eval mode on the CPU, with identical seeded random weights."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(settings.seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    size = {"min_size": min(settings.height, settings.width), "max_size": max(settings.height, settings.width)}
    tv = FasterRCNN(backbone, num_classes=91, **size)
    with torch.no_grad():  # ten classes at +3: softmax ~ e^3 / (10 e^3 + 81) ~ 0.07 each, above 0.05
        tv.roi_heads.box_predictor.cls_score.bias[1:11] = 3.0
    ours = FasterRCNNFPN.from_torchvision(tv.state_dict())
    ours.config.input.min_size = size["min_size"]  # inputs are used at their own size by both models
    ours.config.input.max_size = size["max_size"]
    ours.config.input.train_min_sizes = (size["min_size"],)
    return ours.eval(), tv.eval()


def make_batch(settings: Settings, n: int, device: torch.device, offset: int = 0):
    """n seeded random images (3, H, W) in [0, 1] and targets with `boxes_per_image` boxes each."""
    g = torch.Generator().manual_seed(settings.seed + 1000 + offset)
    h, w, k = settings.height, settings.width, settings.boxes_per_image
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.1 + 0.2 * torch.rand(k, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], dim=1)  # (k, 4) xyxy absolute pixels, inside the image
        labels = torch.randint(1, 91, (k,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def memory_formats(ours, device: torch.device, precision: str):
    """(ours, torchvision's) weight memory formats, always the same for both (like for like): channels-last on the
    CPU (oneDNN's fast layout, in fp32 as in bf16) and where our config asks for it, NCHW otherwise."""
    nhwc = device.type == "cpu" or ours.config.channels_last
    layout = torch.channels_last if nhwc else torch.contiguous_format
    return layout, layout
