"""The validation loss: the detector's training loss terms on the validation set, with no gradients.

Shape shorthand: N images of one batch. At each evaluation the trainer logs `val_<term>` for every loss term and
`val_loss` (their sum) beside the AP, so that a curve that keeps falling on the training set while it rises here
shows over-fitting. The terms are the training ones (Faster R-CNN's four, Mask R-CNN's five, FCOS's three, an
RPN's two); where this pass differs from a training step:

* no flip, and the image at the TEST size (`config.input.min_size`), not a random training size: the number
  describes the images as they are scored, and it does not move with the size draw;
* every norm layer in eval mode (BatchNorm normalises with its running statistics and does not update them;
  FrozenBN and GroupNorm are the same either way) and no dropout, as at inference; everything else in training
  mode, so the RPN keeps its training number of proposals and the losses are computed;
* the RPN's anchor and the RoI head's proposal sampling are random: the draws come from `seed` in a forked RNG,
  so the same weights give the same value at every evaluation, and the training's random streams are left as
  they were (a resumed run stays exact);
* averaged over images: each batch's loss (a mean over that batch) weighted by its number of images, over every
  rank's shard (the set is sharded as `evaluate_coco` shards it).

A Mask R-CNN's mask loss needs each validation target's mask: the caller passes a data set that returns `masks`
(`CocoDetection(masks=True)`); without them the pass leaves `loss_mask` out and `val_loss` is the box terms' sum.

In training, the validation loss rides on the evaluation's own forward passes: `evaluate_coco(..., val_loss=True)`
runs the backbone and FPN once per batch (eval mode, test size: exactly what both need) and the heads twice on that
pyramid, once for the detections and once, in `loss_mode`, for the losses (`detections_and_losses`); the losses cost
the heads alone, not a second pass over the set. `validation_losses` is the same numbers as a pass of its own (an
RPN alone, scored by `evaluate_proposals`, uses it).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fpn.backbones.norm import FrozenBatchNorm2d
from fpn.data.coco import collate
from fpn.data.samplers import InferenceSampler
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.detectors.mask_rcnn import MaskRCNNFPN
from fpn.detectors.transform import postprocess, preprocess
from fpn.engine import distributed
from fpn.engine.loop import move_to_device

# Layers whose training mode differs from inference (batch statistics, dropped units); the rest train as usual.
INFERENCE_MODE_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.modules.dropout._DropoutNd,
                         FrozenBatchNorm2d)


@contextlib.contextmanager
def loss_mode(model: nn.Module) -> Iterator[None]:
    """Training mode for `model`, its norm and dropout layers in eval mode; every module's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.train()
    for module in model.modules():
        if isinstance(module, INFERENCE_MODE_LAYERS):
            module.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def batch_losses(model: nn.Module, images: List[Tensor], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
    """The loss dict of one batch at the test size (`model` in `loss_mode`); a Mask R-CNN's targets without
    `masks` give its box terms only."""
    batch, targets = preprocess(images, targets, model.config.input, training=False)  # test size, boxes scaled
    return _heads_losses(model, batch, model.features(batch), targets)


def detections_and_losses(model: nn.Module, images: List[Tensor], targets: List[Dict[str, Tensor]]
                          ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
    """One batch's detections and loss terms from one pyramid. `model` in eval mode.

    The backbone and FPN run once, in eval mode at the test size, which is what both need; then the heads run in
    eval mode (the detections, exactly `model(images)`'s) and again in `loss_mode` on the same features (the loss
    dict, exactly `batch_losses`'s for the same random draws).
    Returns:
        (per-image detections in each image's own pixels, {term: () tensor}).
    """
    original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    batch, scaled = preprocess(images, targets, model.config.input, training=False)  # test size, boxes scaled
    features = model.features(batch)
    detections = postprocess(model.forward_heads(batch, features), batch.image_sizes, original_sizes)
    with loss_mode(model):
        losses = _heads_losses(model, batch, features, scaled)
    return detections, losses


def _heads_losses(model: nn.Module, batch, features: Dict[str, Tensor],
                  targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
    if isinstance(model, MaskRCNNFPN) and not all("masks" in target for target in targets):
        return FasterRCNNFPN.forward_heads(model, batch, features, targets)  # the same RPN and box head, no masks
    return model.forward_heads(batch, features, targets)


@contextlib.contextmanager
def seeded_draws(device: torch.device, seed: int) -> Iterator[None]:
    """The anchor and RoI sampling draws of a validation loss from `seed` (+ rank: every rank its own), in a forked
    RNG: the same at every evaluation, and the training's random streams untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + distributed.get_rank())
        yield


class LossMeter:
    """Sums a validation pass's loss terms on this rank (batch mean x batch size); `mean()` averages them over every
    image of every rank."""

    def __init__(self):
        self.sums: Dict[str, Tensor] = {}  # term -> () float32 on the model's device
        self.images = 0

    def add(self, losses: Dict[str, Tensor], count: int) -> None:
        """Adds one batch's loss dict (means over its `count` images); no host read."""
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float() * count
        self.images += count

    def mean(self, device: torch.device) -> Dict[str, float]:
        """{"val_<term>": sum over ranks / images over ranks, "val_loss": their sum}, the same on every rank (a
        collective: every rank calls it); {} when no rank saw an image. One host read."""
        names = sorted(self.sums)
        if distributed.is_distributed():  # a rank with an empty shard has no names: take every rank's
            names = sorted({name for shard in distributed.all_gather_objects(names) for name in shard})
        totals = torch.stack([torch.as_tensor(self.sums.get(name, 0.0), dtype=torch.float32, device=device)
                              for name in names] + [torch.tensor(float(self.images), device=device)])  # (T + 1,)
        read = distributed.all_reduce_mean(totals).tolist()  # means of sums: the ratio is the mean over all images
        if not names or read[-1] == 0:
            return {}
        means = {f"val_{name}": value / read[-1] for name, value in zip(names, read[:-1])}
        return {**means, "val_loss": float(sum(means.values()))}


@torch.no_grad()
def validation_losses(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    seed: int = 0,
) -> Dict[str, float]:
    """The mean training loss terms of `model` over `dataset`, as a pass of its own (see the module docstring).

    Args:
        model: the detector (not DDP-wrapped), on `device`; its modes are restored after.
        dataset: yields (image float (3, H, W) in [0, 1], target with `boxes` (M, 4) xyxy abs px, `labels` (M,),
            and for a Mask R-CNN's mask loss `masks` (M, H, W)); unflipped (a validation set).
        device: where the model runs.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes.
        autocast: a factory of the autocast context (mixed precision) or nullcontext.
        seed: seed of the anchor and RoI sampling draws (a forked RNG: the global streams are untouched).
    Returns:
        {"val_<term>": mean over the images of every rank, ..., "val_loss": their sum}, Python floats, the
        same on every rank; {} when the data set is empty.
    """
    sampler = InferenceSampler(len(dataset), rank=distributed.get_rank(), world_size=distributed.get_world_size())
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(seed))  # no global draw
    meter = LossMeter()
    with seeded_draws(device, seed), loss_mode(model):
        for images, targets in loader:
            images, targets = move_to_device(images, targets, device)
            with autocast():
                meter.add(batch_losses(model, images, targets), len(images))
    return meter.mean(device)
