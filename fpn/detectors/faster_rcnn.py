"""Faster R-CNN with a Feature Pyramid Network (Lin et al., CVPR 2017), assembled from fpn's own modules.

The forward pass reads like the paper's figure:
    normalise/resize/pad -> ResNet (C2..C5) -> FPN (P2..P6) -> RPN (proposals) -> RoI heads -> boxes in input pixels
The paper's ablation models (Tables 1-3) are the same builder with `config.variant` (see fpn/detectors/variants.py), and
`config.rpn_only` drops the RoI heads (the RPN experiments of Table 1).
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from fpn.backbones import build_backbone
from fpn.config import FasterRCNNConfig, RPNConfig
from fpn.heads.box_head import TwoMLPHead
from fpn.heads.res5_head import Res5Head
from fpn.heads.roi_heads import RoIHeads
from fpn.heads.rpn import RegionProposalNetwork
from fpn.necks import FPN
from fpn.transform import postprocess, preprocess
from fpn.validation import check_images, check_targets, check_value_range
from fpn.detectors.variants import variant_layout

# The extra level made by subsampling P5 feeds the RPN only; RoIs are pooled from P2..P5 (paper, Sec. 4.1-4.2).
RPN_ONLY_LEVELS = ("p6",)


class FasterRCNNFPN(nn.Module):
    """Faster R-CNN + FPN with torchvision's detection I/O contract.

    Args:
        num_classes: number of classes INCLUDING the background (label 0); 91 for torchvision's COCO models.
        config: a `FasterRCNNConfig`; the default is torchvision's `fasterrcnn_resnet50_fpn` (v1). It is not
            modified: the model keeps `config.resolved()` as `model.config` (what checkpoints store).

    Backbone without weights: as in torchvision, `config.backbone.norm` and `trainable_stages` left at None follow
    `config.backbone.weights`. With ImageNet weights the backbone gets frozen BatchNorm and a frozen stem and C2
    (norm "frozen_bn", trainable_stages 3), the fine-tuning set-up; without them, trainable BatchNorm in all five
    stages ("bn", 5), since frozen BN is then the identity and a frozen stem stays random. Explicit values are
    kept; a model that trains frozen parts without any loaded weights warns once, at its first training step.
    `from_torchvision` and checkpoints rebuild the layout their weights were trained in.

    Training (`model.train()`): `model(images, targets)` with `images` a list of float (3, H, W) tensors in
    [0, 1] RGB of any sizes and `targets` a list of dicts with `boxes` (N, 4) float xyxy absolute pixels and
    `labels` (N,) int64 in 1..num_classes-1 returns a dict of four scalar losses: `loss_objectness`,
    `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg` (the first two alone with `config.rpn_only`). An image
    with no boxes is legal.

    Image range: an image with values above 1.5 (e.g. 0..255 given as floats) gets a warning naming it, in
    training and inference. CPU images are checked at every call; images on an accelerator at the model's first
    call only, since reading a value there makes the host wait for the device.

    Inference (`model.eval()`): `model(images)` returns one dict per image with `boxes` (D, 4) xyxy in that
    image's own pixels, `scores` (D,) and `labels` (D,) int64, sorted by decreasing score. With
    `config.rpn_only` these are the RPN's proposals: D <= config.rpn.post_nms_top_n_test, `scores` the objectness
    probability in [0, 1], `labels` all 1.

    Variants (`config.variant`, paper Tables 1-3 rows (a)-(f)): "fpn" (the default) is the model above; "c4" and
    "c5" are the single-scale baselines on C4 (conv5 as box head) and C5, "no_top_down", "no_lateral" and
    "p2_only" the pyramid ablations. fpn/detectors/variants.py lists what each builds.

    Example:
        >>> import torch
        >>> from fpn import FasterRCNNFPN
        >>> model = FasterRCNNFPN(num_classes=3).eval()
        >>> detections = model([torch.rand(3, 300, 400)])
        >>> sorted(detections[0])
        ['boxes', 'labels', 'scores']
    """

    def __init__(self, num_classes: int = 91, config: Optional[FasterRCNNConfig] = None):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}")
        self.config = (config if config is not None else FasterRCNNConfig()).resolved()
        self.num_classes = num_classes
        self._accelerator_values_checked = False  # images on a GPU: one read of their range, on the first call
        self._backbone_checked_for_training = False
        cfg = self.config
        layout = variant_layout(cfg.variant)  # which of the paper's ablation models (Tables 1-3)
        self.backbone = build_backbone(cfg.backbone)
        res5_channels = self.backbone.out_specs["c5"].channels
        res5 = self.backbone.split_off_last_stage() if layout.trunk_to_c4 else None
        self.neck = (
            FPN(self.backbone.out_specs, cfg.fpn.out_channels, top_down=layout.top_down, laterals=layout.laterals,
                finest_only=layout.finest_only)
            if layout.neck else nn.Identity()  # single-scale baselines: the heads read C4 or C5 itself
        )
        specs = self.neck.out_specs if layout.neck else self.backbone.out_specs
        self.rpn_maps = list(layout.rpn_maps or specs)
        self.rpn = RegionProposalNetwork(
            specs[self.rpn_maps[0]].channels, _rpn_config(cfg, self.rpn_maps), cfg.anchors,
            sizes_per_level=_anchor_sizes(cfg, self.rpn_maps),
        )
        self.pooled_levels = list(layout.pooled_maps or [name for name in specs if name not in RPN_ONLY_LEVELS])
        self.roi_heads = None  # the RPN alone (config.rpn_only, paper Table 1)
        if not cfg.rpn_only:
            box_head, box_features, resolution = _box_head(cfg, specs[self.pooled_levels[0]].channels, res5,
                                                           res5_channels)
            self.roi_heads = RoIHeads(
                cfg.roi_heads,
                featmap_names=self.pooled_levels,
                strides=[specs[name].stride for name in self.pooled_levels],
                box_head=box_head,
                box_features=box_features,
                num_classes=num_classes,
                pooler_resolution=resolution,
            )
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(
        self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
    ) -> Union[Dict[str, Tensor], List[Dict[str, Tensor]]]:
        check_images(images)
        if check_value_range(images, read_accelerator_images=not self._accelerator_values_checked):
            self._accelerator_values_checked = True
        if self.training:
            check_targets(targets, len(images), self.num_classes)
            self._warn_if_backbone_cannot_train()
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = preprocess(images, targets if self.training else None, self.config.input, self.training)
        x = batch.tensor  # (N, 3, Hp, Wp)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.neck(self.backbone(x))  # {"p2": (N, 256, Hp/4, Wp/4), ..., "p6"}; c4, c5: C2..C4 / C2..C5
        rpn_features = {name: features[name] for name in self.rpn_maps}
        if self.roi_heads is None:  # the RPN alone (paper Table 1): its proposals are the detections
            proposals, rpn_losses = self.rpn(batch, rpn_features, targets, with_scores=True)
            if self.training:
                return rpn_losses
            return postprocess(_as_detections(proposals), batch.image_sizes, original_sizes)
        proposals, rpn_losses = self.rpn(batch, rpn_features, targets)  # per image (Pi, 4) xyxy, ImageBatch frame
        pooled = {name: features[name] for name in self.pooled_levels}
        detections, roi_losses = self.roi_heads(pooled, proposals, batch.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return postprocess(detections, batch.image_sizes, original_sizes)

    def _warn_if_backbone_cannot_train(self) -> None:
        """Once per model: frozen BN or frozen stages without any loaded weights never become meaningful."""
        if self._backbone_checked_for_training:
            return
        self._backbone_checked_for_training = True
        parts = self.backbone.untrainable_parts()
        if parts:
            warnings.warn(
                "training a backbone with no pretrained weights (config.backbone.weights is None and no state dict "
                f"was loaded): {'; '.join(parts)}. To train from scratch leave config.backbone.norm and "
                "trainable_stages at None (auto: 'bn', 5) or set norm 'bn'/'gn' and trainable_stages 5; to "
                "fine-tune, set config.backbone.weights to an ImageNet checkpoint.",
                stacklevel=2,
            )

    @torch.no_grad()
    def predict(
        self, images: Sequence[Union[Tensor, "PIL.Image.Image"]], score_threshold: Optional[float] = None
    ) -> List[Dict[str, Tensor]]:
        """Detect objects in uint8 (3, H, W) tensors, float (3, H, W) tensors in [0, 1], or PIL images.

        Runs in eval mode (the previous mode is restored) and keeps detections with score >= score_threshold
        (default: the config's score_thresh). Returns the same list of dicts as the eval-mode forward.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        device = next(self.parameters()).device
        tensors = [_to_float_tensor(img, i).to(device) for i, img in enumerate(images)]
        was_training = self.training
        self.eval()
        try:
            detections = self(tensors)
        finally:
            self.train(was_training)
        if score_threshold is not None:
            # detections are sorted by decreasing score: keep a prefix, its length read once for the batch
            counts = torch.stack([(d["scores"] >= score_threshold).sum() for d in detections]).tolist()
            detections = [{k: v[:count] for k, v in d.items()} for d, count in zip(detections, counts)]
        return detections

    def optimize_for_inference(self, dtype: Optional[torch.dtype] = None) -> nn.Module:
        """An inference-only copy with the same detections, faster: norms folded into the convolutions,
        channels-last, optionally bf16/fp16 convolutions and linear layers. This model is not modified.
        See `fpn.inference.optimize_for_inference`."""
        from fpn.inference import optimize_for_inference

        return optimize_for_inference(self, dtype)

    @classmethod
    def from_torchvision(
        cls, path_or_state_dict: Union[str, Dict[str, Tensor]], num_classes: Optional[int] = None
    ) -> "FasterRCNNFPN":
        """Build the model from a torchvision `fasterrcnn_resnet50_fpn` (v1) checkpoint file or state dict.

        With `num_classes` different from the checkpoint's, the class-specific predictor is freshly initialised
        (fine-tuning); everything else is loaded. The file is read with `torch.load(weights_only=True)`. The
        backbone is laid out as torchvision builds this detector with weights: frozen BN, stem and C2 frozen.
        """
        from fpn.convert import load_torchvision_detector

        return load_torchvision_detector(cls, path_or_state_dict, num_classes)


def _rpn_config(cfg: FasterRCNNConfig, rpn_maps: List[str]) -> RPNConfig:
    """The RPN settings for its maps. `pre_nms_top_n_*` counts candidates per level: a single-map RPN (variants
    c4, c5, p2_only) with all anchor sizes on its one map keeps that many times the number of sizes, so it has
    as many candidates before NMS as the FPN's RPN with one size on each level (a fair comparison, Table 1)."""
    if len(rpn_maps) > 1:
        return cfg.rpn
    scale = len(cfg.anchors.sizes)
    return replace(cfg.rpn, pre_nms_top_n_train=cfg.rpn.pre_nms_top_n_train * scale,
                   pre_nms_top_n_test=cfg.rpn.pre_nms_top_n_test * scale)


def _anchor_sizes(cfg: FasterRCNNConfig, rpn_maps: List[str]):
    """One tuple of anchor sizes per RPN map: one size per pyramid level (paper Sec. 4.1), or every size on a
    single map (the single-scale baselines and P2 alone, Sec. 5.1.1)."""
    sizes = tuple(cfg.anchors.sizes)
    if len(rpn_maps) == 1:
        return (sizes,)
    if len(sizes) != len(rpn_maps):
        raise ValueError(
            f"config.anchors.sizes has {len(sizes)} sizes but the pyramid has {len(rpn_maps)} levels {rpn_maps}: "
            f"give one anchor size per level"
        )
    return tuple((size,) for size in sizes)


def _box_head(
    cfg: FasterRCNNConfig, channels: int, res5: Optional[nn.Module], res5_channels: int
) -> Tuple[nn.Module, int, int]:
    """The box head, its output width and the RoIAlign size it takes: the conv5 stage on 2S x 2S RoIs (the C4
    baseline, He et al.; its strided first block halves them to the S x S the 2-fc head sees), or the FPN paper's
    two 1024-d fc layers (Sec. 4.2) on `channels` x S x S RoIs."""
    resolution = cfg.roi_heads.pooler_resolution
    if res5 is not None:
        return Res5Head(res5, res5_channels), res5_channels, 2 * resolution
    size = cfg.roi_heads.representation_size
    return TwoMLPHead(channels * resolution**2, size), size, resolution


def _as_detections(proposals: List[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
    """RPN proposals as detections of one class: label 1 for every box (the RPN-only output contract)."""
    return [
        {"boxes": p["boxes"], "scores": p["scores"],
         "labels": torch.ones(p["scores"].shape, dtype=torch.int64, device=p["scores"].device)}
        for p in proposals
    ]


def _to_float_tensor(image, index: int) -> Tensor:
    """uint8 tensor / float tensor / PIL image -> float (3, H, W) in [0, 1]."""
    if isinstance(image, Tensor):
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        if image.is_floating_point():
            return image
        raise ValueError(f"images[{index}] has dtype {image.dtype}; expected uint8 or float")
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
    raise ValueError(f"images[{index}] must be a tensor or a PIL image, got {type(image).__name__}")
