"""The detectors built on the feature pyramid: each a backbone (fpn/backbones), a neck (fpn/necks) and heads
(fpn/heads) over the ops of fpn/ops, with torchvision's detection contract (list of images in, losses in
training, per-image boxes / scores / labels in eval).

- base.py: what both share (input checks, resizing and padding, predict, optimize_for_inference).
- faster_rcnn.py: Faster R-CNN with FPN (two-stage: RPN proposals, RoIAlign, box head), and the paper's ablation
  variants (variants.py).
- fcos.py: FCOS (one-stage, anchor-free) on P3..P7.
- build.py: the architectures by name ("faster_rcnn", "fcos"), as checkpoints and `--arch` name them.

No registry picks a part by name: a backbone, neck or head you wrote is handed to the detector by keyword
(`FasterRCNNFPN(..., backbone=..., neck=..., rpn_head=..., box_head=...)`, `FCOSFPN(..., backbone=..., neck=...,
head=...)`) and checked against the contract it declares (base.py: `check_backbone`, `check_neck`).
"""
