"""One evaluation of a training run (periodic or final): AP or proposal recall, the validation loss, best.pt,
and the TensorBoard picture.

`RunEvaluation(...)(iteration, prefix)` scores the live model on the validation set (`evaluate_coco`, or
`evaluate_proposals` for an RPN alone), adds the validation loss terms (`validation_losses`), writes the line to
metrics.jsonl (and so to TensorBoard), prints the table, counts the evaluation in the run's `BestMetric` and,
when it improved, writes best.pt from the live model. Every rank calls it (the evaluations are collectives).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Optional, Sequence

import torch
from torch import nn

from fpn.config import MaskRCNNConfig
from fpn.data.coco import CocoDetection
from fpn.deploy.visualize import save_detection_picture
from fpn.detectors.build import is_rpn_only
from fpn.engine import distributed
from fpn.engine.best import BEST_NAME, BestMetric
from fpn.engine.checkpoint import save_checkpoint
from fpn.engine.evaluation import MASK_METRIC_NAMES, METRIC_NAMES, evaluate_coco, format_metrics
from fpn.engine.loop import MetricsLog
from fpn.engine.proposal_eval import RECALL_NAMES, evaluate_proposals, format_recall
from fpn.engine.tensorboard import TrainingBoard
from fpn.engine.validation_loss import validation_losses
from fpn.errors import InputError


FINAL_PREFIX = "eval_final"  # the file prefix of the evaluation at the last iteration


def evaluation_keys(model_config, rpn_only: bool) -> Sequence[str]:
    """The keys an evaluation of this detector returns that --best-metric may name."""
    if rpn_only:
        names = RECALL_NAMES
    else:
        names = METRIC_NAMES + (MASK_METRIC_NAMES if isinstance(model_config, MaskRCNNConfig) else ())
    return tuple(names) + ("val_loss",)


def loss_dataset(val_set: CocoDetection, masks: bool) -> CocoDetection:
    """The data set of the validation loss: `val_set`, or for a Mask R-CNN (`masks`) the same images with their
    instance masks (the evaluation's set has none). Without usable segmentations: `val_set` and a note (the
    validation loss then has no mask term)."""
    if not masks or val_set.with_masks:
        return val_set
    try:
        masked = CocoDetection(val_set.images_dir, val_set.annotations_file, train=False,
                               skip_bad_images=val_set.skip_bad_images, masks=True)
    except (InputError, ValueError) as error:
        distributed.log(f"validation loss without loss_mask: {error}")
        return val_set
    kept = set(val_set.image_ids)  # the images --skip-bad-images dropped from the evaluation's set
    masked.drop_images([index for index, image_id in enumerate(masked.image_ids) if image_id not in kept])
    return masked


def on_main_or_raise(write: Callable[[], Any], path: Path) -> None:
    """`write()` on rank 0; an OSError it raises is raised on every rank (the broadcast is also the barrier)."""
    failure = None
    if distributed.is_main_process():
        try:
            write()
        except OSError as error:
            failure = (error.errno, error.strerror or str(error), str(error.filename or path))
    failure = distributed.broadcast_object(failure)
    if failure is not None:
        raise OSError(*failure)


@dataclass
class RunEvaluation:
    """What an evaluation of the run needs; call it with (iteration, file prefix)."""
    model: nn.Module  # the detector, not DDP-wrapped
    val_set: CocoDetection  # scored by AP / recall
    loss_set: CocoDetection  # the validation loss's (with masks for a Mask R-CNN)
    train_set: CocoDetection  # its label map and class names go into best.pt
    output_dir: Path
    device: torch.device
    batch_size: int
    workers: int
    autocast: Callable[[], ContextManager]
    metrics: MetricsLog
    best: BestMetric
    args: Dict[str, Any]  # the run's record (TrainingJob.record()), stored in best.pt
    board: Optional[TrainingBoard] = None

    @property
    def best_path(self) -> Path:
        return self.output_dir / BEST_NAME

    def __call__(self, iteration: int, prefix: str) -> Dict[str, Any]:
        """Evaluate at `iteration`; returns the metrics (AP or AR keys, `val_<term>`, `val_loss`) on every rank."""
        model = self.model
        options = dict(device=self.device, batch_size=self.batch_size, num_workers=self.workers,
                       autocast=self.autocast)
        # an RPN alone (paper Table 1) is scored by the recall of its proposals, its validation loss in a pass of
        # its own; a detector by box (and mask) AP, the validation loss from the same forward passes (the loss set:
        # the same images, with masks for a Mask R-CNN's mask term)
        if is_rpn_only(model):
            what, table = "proposal recall", format_recall
            result = dict(evaluate_proposals(model, self.val_set, output_dir=self.output_dir, prefix=prefix,
                                             **options))
            result.update(validation_losses(model, self.loss_set, **options))
        else:
            masks = isinstance(model.config, MaskRCNNConfig)
            what, table = f"COCO box{' and mask' if masks else ''} evaluation", format_metrics
            # pr_curves.png and confusion.png of the run's last evaluation: the final one, or one that may stop it
            curves = prefix == FINAL_PREFIX or self.best.last_chance
            result = dict(evaluate_coco(model, self.loss_set, output_dir=self.output_dir, prefix=prefix,
                                        val_loss=True, curves=curves, **options))
        self.metrics.write({"iter": iteration, **result})
        losses = ", ".join(f"{key} {value:.4f}" for key, value in result.items() if key.startswith("val_"))
        distributed.log(f"\n{what} at iteration {iteration} ({len(self.val_set)} images):\n{table(result)}\n"
                        f"validation loss: {losses or 'none (no validation image)'}")
        if self.best.update(result, iteration):
            on_main_or_raise(lambda: self.save_best(iteration), self.best_path)
        if self.board is not None and not is_rpn_only(model):  # proposals have no classes to draw
            picture = save_detection_picture(model, self.val_set, self.board.log_dir / ".detections.png",
                                             device=self.device)
            self.board.add_picture("detections", picture, iteration)
            picture.unlink()
        return result

    def save_best(self, iteration: int) -> None:
        """best.pt from the live model: a checkpoint's weights, config, label map, class names and run record,
        and `best` {metric, value, iter, path}; no optimiser, scheduler or RNG state to resume from (the
        evaluation may fall between two checkpoints): it is for evaluate.py, predict.py and load_detector."""
        save_checkpoint(self.best_path, model=self.model, optimizer=None, scheduler=None, scaler=None,
                        iteration=iteration, label_to_category=self.train_set.label_to_category,
                        class_names=self.train_set.class_names, args=self.args,
                        best=self.best.record(self.best_path))
