"""Proposal recall, COCO-style: the average recall (AR) of the RPN's proposals (Lin et al. 2017, Table 1).

AR is COCOeval's recall averaged over the IoU thresholds 0.50:0.05:0.95, class-agnostic (`useCats = 0`: every
ground-truth box counts, whatever its category), with at most 100 or 1000 proposals per image (the
highest-scoring ones), over all boxes or over small (area < 32^2), medium and large (area > 96^2) ones. Crowd
boxes are handled as pycocotools does: they are not counted, and a proposal on one is neither a hit nor a miss.

The model is an RPN-only detector (`config.rpn_only`); in eval mode it returns per image `boxes` (P, 4) xyxy in
that image's pixels, `scores` (P,) objectness and `labels` (P,) all ones, sorted by score. `run_inference`
(sharded over ranks, gathered on rank 0) turns them into COCO results in the original image's pixels.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import Dataset

from fpn.engine import distributed
from fpn.engine.evaluation import flatten_results, format_table, run_inference, warn_unevaluated, write_json_files
from fpn.detectors.build import convert_config
from fpn.detectors.faster_rcnn import FasterRCNNFPN

# name: (COCOeval area range label, proposals per image); Table 1's AR^100, AR^1k, AR_s^1k, AR_m^1k, AR_l^1k
RECALL_METRICS = {
    "AR100": ("all", 100),
    "AR1k": ("all", 1000),
    "AR_s": ("small", 1000),
    "AR_m": ("medium", 1000),
    "AR_l": ("large", 1000),
}
RECALL_NAMES = tuple(RECALL_METRICS)
MAX_PROPOSALS = (100, 1000)  # COCOeval's params.maxDets


def proposal_recall(
    coco_gt: COCO, results: List[dict], image_ids: Optional[Sequence[int]] = None
) -> Dict[str, float]:
    """Class-agnostic COCO average recall of proposals given as COCO results.

    Args:
        coco_gt: the ground-truth COCO object.
        results: COCO result dicts {image_id, category_id, bbox [x, y, w, h], score}; their category ids must
            be categories of `coco_gt` (any one: under useCats = 0 the category is not compared). May be empty.
        image_ids: the images evaluated (default: every image of `coco_gt`).
    Returns:
        {AR100, AR1k, AR_s, AR_m, AR_l}: floats in [0, 1]; -1.0 where the images have no (non-crowd) ground
        truth in that area range, as COCOeval's summary reports it.
    """
    image_ids = sorted(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds()))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.params.useCats = 0
        evaluator.params.maxDets = list(MAX_PROPOSALS)
        evaluator.evaluate()
        evaluator.accumulate()
    # COCOeval.summarize() assumes three maxDets values; read the recall array as its _summarize does
    recall = evaluator.eval["recall"]  # (T IoU thresholds, K = 1 class-agnostic, A area ranges, M maxDets)
    labels, max_dets = evaluator.params.areaRngLbl, evaluator.params.maxDets
    metrics = {}
    for name, (area, max_proposals) in RECALL_METRICS.items():
        values = recall[:, :, labels.index(area), max_dets.index(max_proposals)]  # (T, 1)
        values = values[values > -1]  # -1: no ground truth in this area range
        metrics[name] = float(np.mean(values)) if values.size else -1.0
    return metrics


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object with no detections (COCO.loadRes cannot load an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset.get("images", [])), "annotations": [],
                       "categories": list(coco_gt.dataset.get("categories", []))}
    coco_dt.createIndex()
    return coco_dt


def format_recall(metrics: Mapping[str, float]) -> str:
    """A Markdown table of the five proposal recalls (fractions, 3 decimals; '-' where undefined)."""
    return format_table(metrics, RECALL_NAMES)


def evaluate_proposals(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    output_dir: Optional[Union[str, Path]] = None,
    prefix: str = "proposals",
    batch_size: int = 1,
    num_workers: int = 0,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, float]:
    """Run the RPN-only `model` over `dataset` (`run_inference`) and score its proposals with `proposal_recall`.

    Args:
        model: an RPN-only detector (not DDP-wrapped; see the module docstring for its outputs). A full
            detector is refused: its outputs are detections, not proposals (see `rpn_only_model`).
        dataset: a `fpn.data.coco.CocoDetection` (uses its `coco` and `image_ids`).
        device: where the model runs.
        output_dir: where `{prefix}_metrics.json` goes; None: nowhere. The proposals themselves are not written
            (1000 per image).
        prefix: file name prefix.
        batch_size, num_workers, autocast, progress: as in `run_inference`.
    Returns:
        the metrics dict of `proposal_recall` on every rank (rank 0 computes it and broadcasts it).
    Raises:
        ValueError: a model whose config says it is not RPN-only, or ground truth without any category.
    """
    if getattr(getattr(model, "config", None), "rpn_only", True) is False:
        raise ValueError("evaluate_proposals needs an RPN-only model (config.rpn_only = True), got a full detector; "
                         "rpn_only_model(model) gives its RPN's proposals")
    categories = sorted(dataset.coco.getCatIds())
    if not categories:
        raise ValueError(f"{getattr(dataset, 'annotations_file', 'the ground truth')} has no categories: "
                         "COCOeval counts no box of it")
    # Any category of the ground truth will do: with useCats = 0 COCOeval pools every category's boxes.
    per_image = run_inference(model, dataset, {1: categories[0]}, device=device, batch_size=batch_size,
                              num_workers=num_workers, autocast=autocast, progress=progress)
    metrics = None
    if distributed.is_main_process():
        warn_unevaluated(dataset, per_image)
        metrics = proposal_recall(dataset.coco, flatten_results(per_image), sorted(per_image))
        write_json_files(output_dir, {f"{prefix}_metrics.json": metrics})
    return distributed.broadcast_object(metrics)


def rpn_only_model(model: FasterRCNNFPN) -> FasterRCNNFPN:
    """The RPN-only detector of a full one: the same config with `rpn_only = True` and the same backbone, FPN
    and RPN weights (copied; the RoI heads, and a Mask R-CNN's mask branch, are left out). An RPN-only model is
    returned as it is.

    Args:
        model: a `FasterRCNNFPN`, e.g. from `fpn.engine.checkpoint.load_detector`.
    Returns:
        the RPN-only model on `model`'s device, in `model`'s train/eval mode.
    Raises:
        ValueError: the config has no `rpn_only` field, or the RPN-only model has tensors `model` lacks.
    """
    if getattr(model.config, "rpn_only", False):
        return model
    try:
        config = replace(convert_config(model.config, "faster_rcnn"), rpn_only=True)  # Mask R-CNN: its box part
    except TypeError as error:
        raise ValueError("this FasterRCNNConfig has no rpn_only field: cannot build the RPN-only model") from error
    config.backbone = replace(config.backbone, weights=None)  # the weights come from `model`, not ImageNet
    proposer = FasterRCNNFPN(num_classes=model.num_classes, config=config)
    source, own = model.state_dict(), proposer.state_dict()
    missing = sorted(set(own) - set(source))
    if missing:
        raise ValueError(f"the RPN-only model has {len(missing)} tensors the detector lacks, e.g. {missing[:3]}")
    proposer.load_state_dict({name: source[name] for name in own})
    device = next(model.parameters()).device
    return proposer.to(device).train(model.training)
