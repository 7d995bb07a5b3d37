"""COCO box evaluation (and mask evaluation of a model returning masks): run the detector over a dataset (sharded
over ranks), convert, and score with COCOeval.

Shape shorthand: D detections of one image. Detections come out of the model as xyxy boxes in the pixels of the
image it was given; COCO results are xywh boxes in the pixels of the original image, with COCO category ids in
place of the model's contiguous labels.

Masks: when the model's detections hold `masks` (Mask R-CNN), each record also holds its `segmentation` (COCO
compressed RLE, encoded per image as the detections arrive) and the metrics add mask AP (COCOeval iouType "segm")
under `MASK_METRIC_NAMES`, beside the box AP's unchanged `METRIC_NAMES`; fpn.engine.mask_eval has the details.
The box AP of such a model is the one its boxes alone would score.

Per class: the metrics' "per_class" entry holds each category's AP, AP50, AP75 and instance count, read from the
same COCOeval run as the summary (`fpn.engine.per_class`); `evaluate_coco(curves=True)` also writes pr_curves.png,
confusion.png and confusion.json (`fpn.engine.eval_plots`, `fpn.engine.confusion`).

Proposal recall (AR100, AR1k, AR_s/m/l of an RPN-only model, the paper's Table 1) is in `fpn.engine.proposal_eval`,
which scores the same inference output with COCOeval class-agnostically.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fpn.engine import distributed
from fpn.engine.mask_eval import detection_rles, segm_ground_truth, segm_results, segmentation_problem_in
from fpn.engine.confusion import SCORE_THRESHOLD
from fpn.engine.eval_plots import write_evaluation_plots
from fpn.engine.loop import move_to_device
from fpn.engine.validation_loss import LossMeter, detections_and_losses, seeded_draws
from fpn.engine.per_class import PrecisionTable, empty_table, format_per_class, per_class_metrics, precision_table
from fpn.errors import InputError
from fpn.data.coco import collate
from fpn.data.samplers import InferenceSampler

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6], in that order
MASK_METRIC_NAMES = tuple(f"mask_{name}" for name in METRIC_NAMES)  # the same of the masks (iouType "segm")


def detections_to_coco(
    detections: Mapping[str, Tensor],
    image_id: int,
    label_to_category: Mapping[int, int],
    scale_xy: Sequence[float] = (1.0, 1.0),
    dropped: Optional[Counter] = None,
) -> List[dict]:
    """COCO result records of one image.

    Args:
        detections: dict with `boxes` (D, 4) float xyxy in the pixels of the image the model saw, `scores` (D,),
            `labels` (D,) int64 contiguous labels; a Mask R-CNN's also `masks` (D, 1, h, w) float probabilities in
            those pixels.
        image_id: the COCO image id.
        label_to_category: {contiguous label: COCO category id}. A detection whose label is missing from it (the
            background 0, or a model of another label set) is left out: COCOeval cannot score it.
        scale_xy: (sx, sy) factors from the model's input pixels to the original image pixels.
        dropped: counts the detections left out, per label (updated in place); None: a warning names them.
    Returns:
        list of dicts {image_id, category_id, bbox [x, y, w, h], score}, one per detection with a known label;
        with masks also `segmentation`, the mask above 0.5 in the original pixels as COCO compressed RLE
        {"size": [H, W], "counts": str}.
    """
    boxes = detections["boxes"].detach().float().cpu()  # (D, 4) xyxy, input pixels
    scale = torch.tensor([scale_xy[0], scale_xy[1], scale_xy[0], scale_xy[1]])
    boxes = boxes * scale  # (D, 4) xyxy, original pixels
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # (D, 4) xywh
    rles = detection_rles(detections["masks"], scale_xy) if "masks" in detections else [None] * len(boxes)
    records, unknown = [], Counter()
    for box, score, label, rle in zip(xywh.tolist(), detections["scores"].tolist(), detections["labels"].tolist(),
                                      rles):
        if int(label) not in label_to_category:
            unknown[int(label)] += 1
            continue
        records.append(
            {
                "image_id": int(image_id),
                "category_id": int(label_to_category[int(label)]),
                "bbox": [round(v, 3) for v in box],
                "score": round(float(score), 5),
            }
        )
        if rle is not None:
            records[-1]["segmentation"] = rle
    if dropped is not None:
        dropped.update(unknown)
    else:
        warn_dropped_labels(unknown, label_to_category)
    return records


def warn_dropped_labels(dropped: Mapping[int, int], label_to_category: Mapping[int, int]) -> None:
    """One warning naming the labels without a COCO category and how many detections of each were left out.

    Args:
        dropped: {label: number of detections left out}; empty: no warning.
        label_to_category: the map those labels are missing from (its labels are listed).
    """
    if not sum(dropped.values()):
        return
    counts = ", ".join(f"label {label}: {count}" for label, count in sorted(dropped.items()))
    warnings.warn(f"left out {sum(dropped.values())} detections whose label has no COCO category ({counts}; "
                  f"known labels: {sorted(label_to_category)})", stacklevel=3)


def coco_scale(image: Tensor, target: Mapping[str, Tensor]) -> tuple:
    """(sx, sy) from the pixels of `image` (3, h, w) to the original size `target['orig_size']` = (H, W)."""
    height, width = image.shape[-2:]
    orig_h, orig_w = (int(v) for v in target.get("orig_size", (height, width)))
    return orig_w / width, orig_h / height


def run_inference(model: nn.Module, dataset: Dataset, label_to_category: Mapping[int, int],
                  **options) -> Optional[Dict[int, List[dict]]]:
    """`inference_records` without its masks flag: on rank 0, {image_id: COCO result dicts} of every image; None
    on the other ranks. `options`: device (required), batch_size, num_workers, autocast, progress."""
    answer = inference_records(model, dataset, label_to_category, **options)
    return None if answer is None else answer[0]


def _detect(model: nn.Module, images: List[Tensor], targets: List[dict], device: torch.device,
            losses: Optional[LossMeter]) -> List[Dict[str, Tensor]]:
    """`model(images)`; with a meter, the detections and loss terms of one pyramid, the losses added to it."""
    if losses is None:
        return model([image.to(device) for image in images])
    outputs, terms = detections_and_losses(model, *move_to_device(images, targets, device))
    losses.add(terms, len(images))
    return outputs


@torch.no_grad()
def inference_records(
    model: nn.Module,
    dataset: Dataset,
    label_to_category: Mapping[int, int],
    *,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    progress: Optional[Callable[[int], None]] = None,
    losses: Optional[LossMeter] = None,
    loss_seed: int = 0,
) -> Optional[Tuple[Dict[int, List[dict]], bool]]:
    """Detect on this rank's shard of `dataset` and gather every rank's COCO records on rank 0.

    Args:
        model: the detector (not DDP-wrapped); put in eval mode here, its train/eval mode restored after.
        dataset: yields (image (3, H, W) float, target with `image_id` and `orig_size`).
        label_to_category: {contiguous label: COCO category id}.
        device: where the model runs.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes.
        autocast: a factory of the autocast context (mixed precision) or nullcontext.
        progress: called with the number of images done after each batch (rank 0 progress bars).
        losses: also the validation loss: each batch's loss terms from the detections' own pyramid
            (`fpn.engine.validation_loss.detections_and_losses`; the targets need `boxes`, `labels` and for a Mask
            R-CNN's mask term `masks`) are added to this meter; its sampling draws come from `loss_seed`.
    Returns:
        on rank 0, ({image_id: COCO result dicts} of every image seen by any rank, whether the model returned
        masks); None on the other ranks. An image without detections has an empty list; an image id met twice, as
        when a dataset skipping bad files returns a substitute, keeps its first records. Detections of a label
        missing from `label_to_category` are left out, with one warning on rank 0 naming the labels and the
        counts. A model's masks are encoded image by image (`detections_to_coco`): the set's full-size masks are
        never held, and whether there were masks is known even where the model detected nothing.
    """
    sampler = InferenceSampler(len(dataset), rank=distributed.get_rank(), world_size=distributed.get_world_size())
    # A private generator: creating the loader must not consume the global RNG, or a periodic evaluation would
    # change the random stream of the training that follows it (and break exact resumption).
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    was_training = model.training
    model.eval()
    per_image: Dict[int, List[dict]] = {}
    dropped: Counter = Counter()  # {label without a COCO category: detections left out}
    with_masks = False
    draws = seeded_draws(device, loss_seed) if losses is not None else contextlib.nullcontext()
    try:
        with draws:
            for images, targets in loader:
                with autocast():
                    outputs = _detect(model, images, targets, device, losses)
                for image, target, output in zip(images, targets, outputs):
                    image_id = int(target["image_id"])
                    scale = coco_scale(image, target)
                    per_image.setdefault(image_id, detections_to_coco(output, image_id, label_to_category, scale,
                                                                      dropped))
                    with_masks = with_masks or "masks" in output
                del outputs, output  # a Mask R-CNN's full-size masks: not held through the next batch's forward
                if progress is not None:
                    progress(len(images))
    finally:
        model.train(was_training)
    gathered = distributed.all_gather_objects((per_image, dropped, with_masks))
    if not distributed.is_main_process():
        return None
    merged: Dict[int, List[dict]] = {}
    for shard, _, _ in gathered:
        for image_id, records in shard.items():
            merged.setdefault(image_id, records)
    warn_dropped_labels(sum((counts for _, counts, _ in gathered), Counter()), label_to_category)
    return merged, any(masks for _, _, masks in gathered)


def flatten_results(per_image: Mapping[int, List[dict]]) -> List[dict]:
    """The COCO result dicts of every image, ordered by image id."""
    return [record for image_id in sorted(per_image) for record in per_image[image_id]]


def coco_evaluate(coco_gt: COCO, results: List[dict], image_ids: Optional[Sequence[int]] = None,
                  iou_type: str = "bbox") -> Dict[str, float]:
    """COCO box AP (or mask AP) of `results` against `coco_gt`: `coco_evaluation`'s summary alone."""
    return coco_evaluation(coco_gt, results, image_ids, iou_type)[0]


def coco_evaluation(coco_gt: COCO, results: List[dict], image_ids: Optional[Sequence[int]] = None,
                    iou_type: str = "bbox") -> Tuple[Dict[str, float], PrecisionTable]:
    """COCO box AP (or mask AP) of `results` against `coco_gt`, and the per-class curves of the same COCOeval run.

    Args:
        coco_gt: the ground-truth COCO object.
        results: COCO result dicts (may be empty: every AP is then 0).
        image_ids: the images evaluated (default: every image of `coco_gt`).
        iou_type: "bbox" scores the records' `bbox`; "segm" their `segmentation`, against the ground truth's (every
            annotation of those images needs one: `fpn.engine.mask_eval.segmentation_problem_in` says which lack).
    Returns:
        ({AP, AP50, AP75, APs, APm, APl} (`METRIC_NAMES`; "segm": `MASK_METRIC_NAMES`, mask_AP, ...): floats in
        [0, 1], -1.0 where COCOeval has no ground truth (e.g. no small objects in the set); the precision-recall
        curves of every category (`fpn.engine.per_class.PrecisionTable`)).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    names = METRIC_NAMES if iou_type == "bbox" else MASK_METRIC_NAMES
    image_ids = sorted(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds()))
    if not results:
        # COCO.loadRes cannot load an empty list; nothing detected scores 0 wherever there is ground truth.
        return {name: 0.0 for name in names}, empty_table(coco_gt, image_ids)
    if iou_type == "segm":
        coco_gt, results = segm_ground_truth(coco_gt, image_ids), segm_results(results)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = {name: float(value) for name, value in zip(names, np.asarray(evaluator.stats[:6]))}
    return summary, precision_table(evaluator)


def format_metrics(metrics: Mapping[str, object]) -> str:
    """A Markdown table of the six COCO box metrics (fractions, 3 decimals; '-' where undefined); with mask
    metrics (`MASK_METRIC_NAMES`), two rows: box and mask. With a `per_class` entry, its table follows, after a
    blank line (`fpn.engine.per_class.format_per_class`)."""
    if not any(name in metrics for name in MASK_METRIC_NAMES):
        table = format_table(metrics, METRIC_NAMES)
    else:
        table = format_table(metrics, METRIC_NAMES, rows={"box": "", "mask": "mask_"})
    if metrics.get("per_class"):
        table += "\n\nper class:\n" + format_per_class(metrics["per_class"])
    return table


def format_table(metrics: Mapping[str, float], names: Sequence[str],
                 rows: Optional[Mapping[str, str]] = None) -> str:
    """A Markdown table of the metrics `names` (3 decimals; '-' for a negative value, COCOeval's "undefined"): one
    row of `metrics[name]`, or with `rows` {row title: key prefix} one titled row of `metrics[prefix + name]` each."""
    rows = rows or {"": ""}  # one row, without a title column
    width = max(len(title) for title in rows)

    def line(title: str, cells: List[str]) -> str:
        return "| " + " | ".join(([f"{title:<{width}}"] if width else []) + cells) + " |"

    lines = [line("", [f"{name:>5}" for name in names]),
             "|" + "|".join(["-" * (width + 2)] * bool(width) + ["-" * 7] * len(names)) + "|"]
    for title, prefix in rows.items():
        values = [metrics[prefix + name] for name in names]
        lines.append(line(title, [f"{value:5.3f}" if value >= 0 else f"{'-':>5}" for value in values]))
    return "\n".join(lines)


def warn_unevaluated(dataset: Dataset, per_image: Mapping[int, List[dict]]) -> None:
    """Warn when images of `dataset` (its `image_ids`) are missing from the inference results: unreadable files
    skipped by the dataset. The scores are computed on the images that were seen."""
    missing = len(set(dataset.image_ids) - set(per_image))
    if missing:
        warnings.warn(f"{missing} of {len(dataset.image_ids)} images were not evaluated (unreadable)", stacklevel=3)


def write_json_files(output_dir: Optional[Union[str, Path]], files: Mapping[str, object]) -> None:
    """Write each {file name: object} as JSON into `output_dir` (created if needed); None: write nothing."""
    if output_dir is None:
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        (output_dir / name).write_text(json.dumps(obj, indent=2 if isinstance(obj, dict) else None))


def evaluate_coco(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    output_dir: Optional[Union[str, Path]] = None,
    prefix: str = "eval",
    label_to_category: Optional[Mapping[int, int]] = None,
    mask_ap: bool = True,
    curves: bool = False,
    confusion_threshold: float = SCORE_THRESHOLD,
    val_loss: bool = False,
    **inference_kwargs,
) -> Optional[Dict[str, object]]:
    """Run `inference_records` then `coco_evaluate` (box AP; mask AP too when the model returns masks); on rank 0 also
    write the results and metrics JSON files.

    Args:
        model: the detector (not DDP-wrapped).
        dataset: a `fpn.data.coco.CocoDetection` (uses its `coco`, `image_ids` and `label_to_category`).
        device: where the model runs.
        output_dir: where `{prefix}_results.json` (COCO results) and `{prefix}_metrics.json` go; None: nowhere.
        prefix: file name prefix, e.g. "eval_0005000".
        label_to_category: the model's {label: COCO category id}; default the dataset's (a model trained on it).
        mask_ap: score a model's masks when it returns some (False: box AP only; the results keep their
            `segmentation`). An annotation file whose segmentations cannot be scored gets box AP only, with one
            warning naming the first annotation lacking one.
        curves: with `output_dir`, also write pr_curves.png, confusion.png and confusion.json there
            (`fpn.engine.eval_plots`; without matplotlib confusion.json alone, after one line saying so).
        confusion_threshold: the score a detection needs to enter the confusion matrix (`fpn.engine.confusion`).
        val_loss: also the validation loss terms `val_<term>` and `val_loss`, from the same forward passes
            (`inference_records(losses=...)`; the dataset's targets need what the loss needs).
        **inference_kwargs: batch_size, num_workers, autocast, progress, loss_seed of `inference_records`.
    Returns:
        the metrics dict on every rank (rank 0 computes it and broadcasts it): the floats `METRIC_NAMES`, with mask
        AP `MASK_METRIC_NAMES`, then "per_class": {class name: {"AP", "AP50", "AP75", "instances"}, with mask AP also
        "mask_AP", "mask_AP50"} in the category order, from the same COCOeval runs (`fpn.engine.per_class`); a
        class without ground truth in the images evaluated has None (JSON null) for its APs. A reader wanting
        numbers only skips the values that are not.
    """
    mapping = dataset.label_to_category if label_to_category is None else label_to_category
    meter = LossMeter() if val_loss else None
    answer = inference_records(model, dataset, mapping, device=device, losses=meter, **inference_kwargs)
    losses = meter.mean(device) if meter is not None else {}  # a collective: every rank
    metrics = None
    if distributed.is_main_process():
        per_image, with_masks = answer
        warn_unevaluated(dataset, per_image)
        results, image_ids = flatten_results(per_image), sorted(per_image)
        metrics, table = coco_evaluation(dataset.coco, results, image_ids)
        mask_table = None
        if with_masks and mask_ap:
            mask_summary, mask_table = mask_metrics(dataset, results, image_ids)
            metrics.update(mask_summary)
        metrics.update(losses)
        names = {int(c): category["name"] for c, category in dataset.coco.cats.items()}
        metrics["per_class"] = per_class_metrics(table, names, mask_table)
        if curves and output_dir is not None:
            write_evaluation_plots(output_dir, dataset.coco, per_image, table, names,
                                   score_threshold=confusion_threshold)
        write_json_files(output_dir, {f"{prefix}_results.json": results, f"{prefix}_metrics.json": metrics})
    return distributed.broadcast_object(metrics)


def mask_metrics(dataset: Dataset, results: List[dict],
                 image_ids: Sequence[int]) -> Tuple[Dict[str, float], Optional[PrecisionTable]]:
    """The mask AP (`MASK_METRIC_NAMES`) of the records' `segmentation`s against the annotation file's, and its
    per-class curves; ({}, None) with one warning when the file's segmentations cannot be scored (box AP only,
    rather than a pycocotools traceback)."""
    problem = segmentation_problem_in(dataset.coco, image_ids)
    if problem:
        warnings.warn(f"no mask AP: {getattr(dataset, 'annotations_file', 'the annotation file')}: {problem}",
                      stacklevel=3)
        return {}, None
    return coco_evaluation(dataset.coco, results, image_ids, iou_type="segm")


def check_categories(
    model_categories: Mapping[int, str],
    data_categories: Mapping[int, str],
    *,
    model_name: str,
    data_name: str,
    allow_missing: bool = False,
) -> Optional[str]:
    """Compare the categories a model can predict with those of an annotation file, before any inference.

    COCOeval scores every category of the annotation file: one the model has no output for scores AP 0 and
    lowers the mean without a word; detections of a category the file lacks are ignored, and a model predicting
    them was trained on another label set. Both are errors, the first one unless `allow_missing`.

    Args:
        model_categories: {category id: name} the model has an output for (background and unused ids left out).
        data_categories: {category id: name} of the annotation file.
        model_name, data_name: how the messages name the two (their file paths).
        allow_missing: accept data categories the model cannot predict (scored as AP 0).
    Returns:
        None when the categories match; with `allow_missing`, a warning line naming those the model lacks.
    Raises:
        InputError: naming both counts and the categories of the one that the other lacks.
    """
    counts = f"{model_name} predicts {len(model_categories)} categories, {data_name} has {len(data_categories)}"
    extra = sorted(set(model_categories) - set(data_categories))
    if extra:
        raise InputError(f"{counts}: the data lacks {len(extra)} of the model's categories, "
                         f"{_category_list(extra, model_categories)} (a model of another label set, or a subset "
                         "file whose 'categories' list leaves some out?)")
    missing = sorted(set(data_categories) - set(model_categories))
    if not missing:
        return None
    lacking = (f"{counts}: the model has no output for {len(missing)} of the data's categories, "
               f"{_category_list(missing, data_categories)}")
    if not allow_missing:
        raise InputError(f"{lacking}; their AP would be 0 (--allow-missing-categories evaluates anyway)")
    return f"{lacking}; they are scored as AP 0"


def _category_list(ids: Sequence[int], names: Mapping[int, str], shown: int = 10) -> str:
    """The ids with their names, as "ids 4 (star), 5 (hexagon)", at most `shown` of them."""
    text = ", ".join(f"{i} ({names[i]})" for i in ids[:shown])
    return f"ids {text}" + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
