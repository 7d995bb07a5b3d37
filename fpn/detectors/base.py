"""What every detector of the package shares: torchvision's detection I/O contract around a detector-specific
`forward_batch`.

    forward(images, targets)  checks the inputs, resizes / normalises / pads them into an ImageBatch
                              (fpn/detectors/transform.py), runs `forward_batch` on it, and maps eval detections back to
                              each input image's pixels
    forward_batch(batch, targets)  the detector itself: training losses, or per-image detections in the
                              ImageBatch frame (what `fpn.export` traces)
    predict(images)           uint8 / float tensors or PIL images, eval mode, optional score threshold; `tile=`
                              cuts large images into overlapping tiles (fpn/detectors/tiling.py)
    optimize_for_inference()  the faster inference copy (fpn/deploy/inference.py)

Modules handed to a detector in place of the configured ones (`FasterRCNNFPN(..., backbone=MyTrunk())`) are
checked here against the contract they declare (`check_backbone`, `check_neck`): a backbone or neck says what
each output map is with `out_specs` ({name: FeatureSpec(channels, stride)}), as ResNet and the FPN do.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from fpn.spec import FeatureSpec
from fpn.detectors.tiling import Tiling, detection_limits, predict_tiled
from fpn.detectors.transform import ImageBatch, postprocess, preprocess
from fpn.detectors.validation import check_images, check_targets, check_value_range

if TYPE_CHECKING:
    from PIL import Image


class Detector(nn.Module):
    """Base of FasterRCNNFPN and FCOSFPN: keeps `config` (resolved) and `num_classes` (background included)."""

    def __init__(self, num_classes: int, config):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}")
        self.config = config.resolved()
        self.num_classes = num_classes
        self._accelerator_values_checked = False  # images on a GPU: one read of their range, on the first call
        self._backbone_checked_for_training = False

    def forward(
        self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
    ) -> Union[Dict[str, Tensor], List[Dict[str, Tensor]]]:
        check_images(images)
        if check_value_range(images, read_accelerator_images=not self._accelerator_values_checked):
            self._accelerator_values_checked = True
        if self.training:
            self.check_targets(images, targets)
            self._warn_if_backbone_cannot_train()
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = preprocess(images, targets if self.training else None, self.config.input, self.training)
        output = self.forward_batch(batch, targets)
        if self.training:
            return output
        return postprocess(output, batch.image_sizes, original_sizes)

    def check_targets(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]]) -> None:
        """Training targets: `boxes` and `labels` per image (`fpn.detectors.validation.check_targets`); a detector
        that needs more (Mask R-CNN's masks) checks it too."""
        check_targets(targets, len(images), self.num_classes)

    def forward_batch(self, batch: ImageBatch, targets: Optional[List[Dict[str, Tensor]]] = None):
        """Training: the loss dict. Eval: per image `boxes` (D, 4) xyxy in the ImageBatch frame, `scores`,
        `labels`. Written by each detector."""
        raise NotImplementedError

    def features(self, batch: ImageBatch) -> Dict[str, Tensor]:
        """The pyramid of a padded batch (channels-last when the config says so)."""
        x = batch.tensor  # (N, 3, Hp, Wp)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(x))

    def _warn_if_backbone_cannot_train(self) -> None:
        """Once per model: frozen BN or frozen stages without any loaded weights never become meaningful."""
        if self._backbone_checked_for_training:
            return
        self._backbone_checked_for_training = True
        # a backbone handed to the detector need not say (its weights are its author's to load)
        untrainable_parts = getattr(self.backbone, "untrainable_parts", None)
        parts = untrainable_parts() if callable(untrainable_parts) else []
        if parts:
            warnings.warn(
                "training a backbone with no pretrained weights (config.backbone.weights is None and no state dict "
                f"was loaded): {'; '.join(parts)}. To train from scratch leave config.backbone.norm and "
                "trainable_stages at None (auto: 'bn', every stage) or set norm 'bn'/'gn' and trainable_stages to "
                "the trunk's stage count (5 for ResNet and RegNetX, 6 for MobileNetV3); to "
                "fine-tune, set config.backbone.weights to an ImageNet checkpoint.",
                stacklevel=2,
            )

    @torch.no_grad()
    def predict(
        self, images: Sequence[Union[Tensor, "Image.Image"]], score_threshold: Optional[float] = None, *,
        tile: Optional[int] = None, overlap: float = 0.25, tile_whole: bool = True, tile_batch: int = 4,
        tile_drop_edge: bool = True,
    ) -> List[Dict[str, Tensor]]:
        """Detect objects in uint8 (3, H, W) tensors, float (3, H, W) tensors in [0, 1], or PIL images.

        Runs in eval mode (the previous mode is restored) and keeps detections with score >= score_threshold
        (default: the config's threshold). Returns the same list of dicts as the eval-mode forward.

        With `tile`, small objects in large images (fpn/detectors/tiling.py): each image is cut into tile x tile
        windows overlapping by `overlap`, each window is run as an image of its own, so it is resized to the
        model's `input.min_size` like any input: a 512 px tile on an 800 px model is upsampled 1.56x, which is
        where small objects gain. The detections are shifted back to image pixels and merged with the whole
        image's (`tile_whole`) by per-class NMS at the model's threshold, keeping `detections_per_img`. A tile
        detection touching a tile side inside the image is an object the tile cuts and is dropped
        (`tile_drop_edge`): the overlap must exceed the largest object wanted whole from the tiles. An image no
        larger than one tile is run whole. A Mask R-CNN's masks come back at the image's size (every tile's
        masks are held until the merge: about detections x tile^2 floats per tile).

        Args:
            images: one image or a list of them.
            score_threshold: minimum score kept (None: the model's own threshold).
            tile: tile side in pixels (>= 32); None: no tiling.
            overlap: fraction of a tile shared with its neighbour, in [0, 1); stride = floor(tile * (1 - overlap)).
            tile_whole: also run the whole image (large objects).
            tile_batch: tiles per forward pass.
            tile_drop_edge: drop tile detections cut by an inner tile side (False: keep them for the NMS).
        Returns:
            Per image `boxes` (D, 4) float xyxy in its pixels, `scores` (D,), `labels` (D,) int64 (and a Mask
            R-CNN's `masks` (D, 1, H, W)).
        Raises:
            InputError: a bad tile, overlap or tile_batch (the message names the value).
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        tiling = None if tile is None else Tiling(tile, overlap, tile_whole, tile_batch, tile_drop_edge)
        device = next(self.parameters()).device
        tensors = [_to_float_tensor(img, i).to(device) for i, img in enumerate(images)]
        was_training = self.training
        self.eval()
        try:
            if tiling is not None:
                nms_thresh, detections_per_img = detection_limits(self.config)
                return predict_tiled(self, tensors, tiling, nms_thresh=nms_thresh,
                                     detections_per_img=detections_per_img, score_threshold=score_threshold)
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
        See `fpn.deploy.inference.optimize_for_inference`."""
        from fpn.deploy.inference import optimize_for_inference

        return optimize_for_inference(self, dtype)


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


def check_out_specs(module: nn.Module, role: str) -> Dict[str, FeatureSpec]:
    """The `out_specs` a backbone or neck declares: a non-empty {name: FeatureSpec(channels, stride)}; a
    ValueError naming `role` and what is wrong otherwise."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"{role} must be an nn.Module, got {type(module).__name__}")
    specs = getattr(module, "out_specs", None)
    name = type(module).__name__
    if not isinstance(specs, Mapping) or not specs:
        raise ValueError(
            f"{role} {name} must declare `out_specs`, a non-empty dict {{map name: FeatureSpec(channels, stride)}} "
            f"describing its output maps (e.g. {{'c2': FeatureSpec(256, 4), ..., 'c5': FeatureSpec(2048, 32)}}); "
            f"got {specs!r}"
        )
    bad = {key: spec for key, spec in specs.items() if not (isinstance(key, str) and isinstance(spec, FeatureSpec))}
    if bad:
        raise ValueError(f"{role} {name}.out_specs must map str names to fpn.spec.FeatureSpec, got {bad!r}")
    return dict(specs)


def check_backbone(backbone: nn.Module, config) -> Dict[str, FeatureSpec]:
    """A backbone handed to a detector: an nn.Module (N, 3, H, W) -> {name: map} declaring `out_specs`. Its
    weights are the caller's to load, so `config.backbone.weights` must not be set too."""
    specs = check_out_specs(backbone, "backbone")
    if config.backbone.weights:
        raise ValueError(
            f"config.backbone.weights is {config.backbone.weights!r} but a backbone module was given: load its "
            "weights into the module before handing it over, and leave config.backbone.weights at None"
        )
    return specs


def check_neck(neck: nn.Module, backbone_specs: Mapping[str, FeatureSpec]) -> Dict[str, FeatureSpec]:
    """A neck handed to a detector: an nn.Module {name: map} -> {name: map} declaring `out_specs`. One that
    also declares `in_specs` (as the FPN does) must read maps the backbone has, with their channels."""
    specs = check_out_specs(neck, "neck")
    in_specs = getattr(neck, "in_specs", None)
    if isinstance(in_specs, Mapping):
        wrong = [
            f"{key} ({spec.channels} channels, stride {spec.stride}): the backbone's is "
            + (f"{backbone_specs[key].channels} channels, stride {backbone_specs[key].stride}"
               if key in backbone_specs else "absent")
            for key, spec in in_specs.items() if backbone_specs.get(key) != spec
        ]
        if wrong:
            raise ValueError(
                f"neck {type(neck).__name__} cannot read the backbone's maps {dict(backbone_specs)}: it expects "
                + "; ".join(wrong)
            )
    return specs


def common_channels(specs: Mapping[str, FeatureSpec], names: Sequence[str], reader: str) -> int:
    """The channel count shared by the maps `names` (a head shared over levels needs one); ValueError naming
    them otherwise, or naming those the neck does not declare."""
    missing = [name for name in names if name not in specs]
    if not names or missing:
        raise ValueError(f"{reader} reads the maps {list(names)}, but the neck declares only {list(specs)}: "
                         f"missing {missing}")
    channels = {specs[name].channels for name in names}
    if len(channels) != 1:
        shown = {name: specs[name].channels for name in names}
        raise ValueError(f"{reader} is shared by the maps {list(names)} and needs one channel count; the neck "
                         f"declares {shown}")
    return channels.pop()
